// Outages: the client throws SessionServiceUnavailableError (never undefined, which would log
// users out) for a dead or frozen Valkey, a stopped server and a server shedding load; it
// retries only the calls that are safe to repeat, and recovers without being recreated.
import assert from "node:assert/strict";
import { test } from "node:test";
import { createSessionClient, SessionServiceUnavailableError } from "../dist/index.js";
import { freePort, metrics, readiness, sample, startServer, startStack, startValkey, uniqueDid } from "./support.js";

function unavailable(code) {
  return (error) => {
    assert.ok(error instanceof SessionServiceUnavailableError, `${error}`);
    assert.equal(error.code, code, `${error}`);
    return true;
  };
}

test("a stopped Valkey makes every call SessionServiceUnavailableError, and a frozen one a deadline", async (t) => {
  const stack = await startStack({ args: ["--metrics-listen", "127.0.0.1:0", "--health-check-interval-ms", "100"] });
  t.after(() => stack.stop());
  // The service's own answers: without the cache, whose stream could still look live for a
  // moment after Valkey died (the cache's outage behaviour is cache.test.js's).
  const client = createSessionClient({ address: stack.server.addr, validationCache: false });
  t.after(() => client.close());
  const created = await client.createSession(uniqueDid(), "alice.test");

  // Frozen: the store does not answer within validate's 200 ms (its own timeout is 500 ms).
  stack.valkey.signal("SIGSTOP");
  await assert.rejects(client.validateAccessToken(created.accessToken), unavailable("deadline_exceeded"));
  stack.valkey.signal("SIGCONT");
  assert.ok(await client.validateAccessToken(created.accessToken), "back once Valkey answers");

  // Dead: the service answers UNAVAILABLE.
  await stack.valkey.kill();
  const calls = {
    validateAccessToken: () => client.validateAccessToken(created.accessToken),
    createSession: () => client.createSession(uniqueDid(), "alice.test"),
    refreshSession: () => client.refreshSession(created.refreshToken),
    deleteSession: () => client.deleteSession(created.refreshToken),
    deleteAllSessionsForDid: () => client.deleteAllSessionsForDid(created.did),
    listSessions: () => client.listSessions(created.did),
    revokeSession: () => client.revokeSession(created.did, created.sessionKey),
    revokeOtherSessions: () => client.revokeOtherSessions(created.refreshToken),
  };
  for (const [name, call] of Object.entries(calls)) {
    await assert.rejects(call(), unavailable("unavailable"), name);
  }

  // A new Valkey on the same port: once the service has reconnected, the same client works
  // again (the sessions died with the old Valkey).
  await readiness(stack.server, false);
  stack.valkey = await startValkey(stack.valkey.port);
  await readiness(stack.server, true);
  const again = await client.createSession(uniqueDid(), "alice.test");
  assert.ok(await client.validateAccessToken(again.accessToken));
});

test("a stopped server is SessionServiceUnavailableError; the same client reconnects when it is back", async (t) => {
  const valkey = await startValkey();
  t.after(() => valkey.kill());
  const listen = `127.0.0.1:${await freePort()}`;
  const args = ["--valkey-url", valkey.url];
  let server = await startServer({ args, listen });
  const client = createSessionClient({ address: listen });
  t.after(() => client.close());
  const created = await client.createSession(uniqueDid(), "alice.test");

  await server.kill();
  await assert.rejects(client.validateAccessToken(created.accessToken), unavailable("unavailable"));
  await assert.rejects(client.createSession(uniqueDid(), "alice.test"), unavailable("unavailable"));

  server = await startServer({ args, listen });
  t.after(() => server.kill());
  assert.equal((await client.validateAccessToken(created.accessToken))?.did, created.did);
});

test("only calls that are safe to repeat are retried, with backoff, inside their deadline", async (t) => {
  // One call at a time, and a Valkey that holds it: every other call is shed at once.
  const stack = await startStack({
    args: ["--metrics-listen", "127.0.0.1:0", "--max-concurrent-requests", "1", "--valkey-command-timeout-ms", "4000"],
  });
  t.after(() => stack.stop());
  // No validation cache: its revocation stream would hold the one request slot.
  const validationCache = false;
  const setup = createSessionClient({ address: stack.server.addr, validationCache });
  const created = await setup.createSession(uniqueDid(), "alice.test");
  setup.close();

  const holder = createSessionClient({ address: stack.server.addr, validationCache, timeoutMs: { validateAccessToken: 10_000 } });
  t.after(() => holder.close());
  stack.valkey.signal("SIGSTOP");
  const held = holder.validateAccessToken(created.accessToken).catch((error) => error);
  // The held call is in flight once the service waits on Valkey for it.
  while (sample(await metrics(stack.server), "barazo_session_valkey_in_flight_commands") < 1) {
    await new Promise((resolve) => setTimeout(resolve, 5));
  }

  const client = createSessionClient({
    address: stack.server.addr,
    validationCache,
    timeoutMs: { validateAccessToken: 2000 },
    retry: { maxAttempts: 4, initialBackoffMs: 2, maxBackoffMs: 10 },
  });
  t.after(() => client.close());
  await assert.rejects(client.validateAccessToken(created.accessToken), unavailable("resource_exhausted"));
  await assert.rejects(client.createSession(uniqueDid(), "alice.test"), unavailable("resource_exhausted"));
  await assert.rejects(client.refreshSession(created.refreshToken), unavailable("resource_exhausted"));
  await assert.rejects(client.deleteSession("0".repeat(64)), unavailable("resource_exhausted"));
  const once = createSessionClient({ address: stack.server.addr, validationCache, retry: false });
  t.after(() => once.close());
  await assert.rejects(once.listSessions(created.did), unavailable("resource_exhausted"));

  const text = await metrics(stack.server);
  stack.valkey.signal("SIGCONT");
  const shed = (method) =>
    sample(text, "rpc_server_call_duration_seconds_count", { rpc_method: method, rpc_grpc_status_code: "8" });
  // A validation goes out batched (ValidateAccessTokens), retried as a unary one would be.
  assert.equal(shed("ValidateAccessTokens"), 4, "a read: every attempt");
  assert.equal(shed("DeleteSession"), 4, "an idempotent revocation: every attempt");
  assert.equal(shed("CreateSession"), 1, "never repeated: it mints a session");
  assert.equal(shed("RefreshSession"), 3, "repeated with the same cookie, inside the grace (refreshRetry)");
  assert.equal(shed("ListSessions"), 1, "retry: false");
  assert.ok(await held, "the held call ends once Valkey answers");
});

test("a frozen server (a silent connection) fails calls once a keepalive PING goes unanswered, and never crashes the process", async (t) => {
  const stack = await startStack();
  t.after(() => stack.stop());
  const client = createSessionClient({ address: stack.server.addr, keepalive: { intervalMs: 200, timeoutMs: 200 } });
  t.after(() => client.close());
  const created = await client.createSession(uniqueDid(), "alice.test");
  stack.server.child.kill("SIGSTOP");
  t.after(() => stack.server.child.kill("SIGCONT"));
  // Each is retried on a new connection while the dead one's error is still to be emitted:
  // connect-node's manager has let go of that connection by then (an uncaught exception
  // before the client guarded its sessions).
  for (let i = 0; i < 3; i++) {
    await assert.rejects(
      client.listSessions(created.did),
      (error) => error instanceof SessionServiceUnavailableError,
    );
  }
  stack.server.child.kill("SIGCONT");
  assert.equal((await client.listSessions(created.did)).length, 1, "the same client works again");
});
