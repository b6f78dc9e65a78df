// The validation cache (option validationCache): a cached token costs no network call, and
// the answer goes away as the service's WatchRevocations feed says (revocations made through
// another client, as by another AppView process), on the feed's end, and at the token's
// expiry; a validation in flight when an event arrives does not cache its answer.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { createSessionClient, SessionServiceUnavailableError } from "../dist/index.js";
import { events, freePort, readiness, startServer, startStack, startValkey, uniqueDid } from "./support.js";

const sha256 = (text) => createHash("sha256").update(text).digest("hex");

/**
 * Counts the validations the client asks the service on the wire (one per ValidateAccessToken
 * call, one per token of a ValidateAccessTokens call); `hold`, when set, is awaited with each
 * answer before the client sees it.
 */
function wire() {
  const state = { calls: 0, hold: undefined };
  const interceptor = (next) => async (request) => {
    if (request.method.name === "ValidateAccessToken") state.calls++;
    else if (request.method.name === "ValidateAccessTokens") state.calls += request.message.accessTokens.length;
    else return next(request);
    const response = await next(request);
    if (state.hold !== undefined) await state.hold();
    return response;
  };
  return { state, interceptor };
}

/**
 * Resolves once the feed has passed on the writes of `session`'s creation (its access key
 * and its data): until then they can arrive late and drop an answer cached after them.
 */
async function settled(log, session) {
  const hash = sha256(session.accessToken);
  const wanted = [
    (e) => e.type === "accessTokenHash" && e.hash === hash,
    (e) => e.type === "sessionKey" && e.sessionKey === session.sessionKey,
  ];
  await Promise.all(wanted.map((match) => (log.seen.some(match) ? undefined : log.next(match))));
  return session;
}

/** A caching client of `addr`, its wire counter and events, live (first reset seen). */
async function cachingClient(t, addr, cacheOptions = {}, keepalive = undefined) {
  const counter = wire();
  const log = events();
  const live = log.next((e) => e.type === "reset");
  const client = createSessionClient({
    address: addr,
    ...(keepalive === undefined ? {} : { keepalive }),
    interceptors: [counter.interceptor],
    validationCache: { reconnect: { initialBackoffMs: 20, maxBackoffMs: 200 }, ...cacheOptions, onEvent: log.onEvent },
  });
  t.after(() => client.close());
  await live;
  return { client, calls: () => counter.state.calls, counter: counter.state, log };
}

test("a cached token is answered without a network call; only valid answers are kept, bounded", async (t) => {
  const stack = await startStack();
  t.after(() => stack.stop());
  const { client, calls, log } = await cachingClient(t, stack.server.addr, { maxEntries: 2 });
  assert.deepEqual(client.cacheState(), { state: "live", entries: 0 });

  const created = await settled(log, await client.createSession(uniqueDid(), "alice.test"));
  const first = await client.validateAccessToken(created.accessToken);
  assert.equal(first?.did, created.did);
  assert.equal(calls(), 1);
  for (let i = 0; i < 5; i++) {
    assert.deepEqual(await client.validateAccessToken(created.accessToken), first);
  }
  assert.equal(calls(), 1, "answered from memory");
  // A caller changing its answer does not change the cached one.
  (await client.validateAccessToken(created.accessToken)).did = "did:plc:changed";
  assert.equal((await client.validateAccessToken(created.accessToken))?.did, created.did);

  // Unknown tokens are asked every time and take no entry.
  const unknown = "ab".repeat(32);
  assert.equal(await client.validateAccessToken(unknown), undefined);
  assert.equal(await client.validateAccessToken(unknown), undefined);
  assert.equal(calls(), 3);
  assert.equal(client.cacheState().entries, 1);

  // At most maxEntries: a third token pushes the oldest out.
  const more = [
    await settled(log, await client.createSession(uniqueDid(), "bob.test")),
    await settled(log, await client.createSession(uniqueDid(), "carol.test")),
  ];
  for (const session of more) await client.validateAccessToken(session.accessToken);
  assert.equal(client.cacheState().entries, 2);
  const before = calls();
  assert.ok(await client.validateAccessToken(created.accessToken));
  assert.equal(calls(), before + 1, "the oldest was evicted");

  client.close();
  assert.equal(client.cacheState().state, "closed");
});

test("revocations made elsewhere end the cached answer as soon as the feed names them", async (t) => {
  const stack = await startStack();
  t.after(() => stack.stop());
  const { client, calls, log } = await cachingClient(t, stack.server.addr);
  // Another AppView process: no cache, its writes reach this client only through the feed.
  const other = createSessionClient({ address: stack.server.addr });
  t.after(() => other.close());

  const cases = {
    deleteSession: (s) => other.deleteSession(s.refreshToken),
    revokeSession: (s) => other.revokeSession(s.did, s.sessionKey),
    deleteAllSessionsForDid: (s) => other.deleteAllSessionsForDid(s.did),
    "refreshSession with previousAccessToken": (s) => other.refreshSession(s.refreshToken, { previousAccessToken: s.accessToken }),
  };
  for (const [name, revoke] of Object.entries(cases)) {
    const session = await settled(log, await other.createSession(uniqueDid(), "alice.test"));
    assert.ok(await client.validateAccessToken(session.accessToken), name);
    const asked = calls();
    assert.ok(await client.validateAccessToken(session.accessToken), name);
    assert.equal(calls(), asked, `${name}: cached`);
    const dropped = log.next(
      (e) =>
        (e.type === "sessionKey" && e.sessionKey === session.sessionKey) ||
        (e.type === "accessTokenHash" && e.hash === sha256(session.accessToken)),
    );
    await revoke(session);
    await dropped;
    assert.equal(await client.validateAccessToken(session.accessToken), undefined, name);
    assert.equal(calls(), asked + 1, `${name}: asked the service again`);
  }

  // A handle change (another process's updateHandle) ends the cached answer: the next
  // validation asks again and answers with the new handle, this client's own at once.
  const renamed = await settled(log, await other.createSession(uniqueDid(), "alice.test"));
  assert.equal((await client.validateAccessToken(renamed.accessToken)).handle, "alice.test");
  const rename = log.next((e) => e.type === "sessionKey" && e.sessionKey === renamed.sessionKey);
  assert.equal(await other.updateHandle(renamed.did, "alice.example.com"), 1);
  await rename;
  assert.equal((await client.validateAccessToken(renamed.accessToken)).handle, "alice.example.com");
  assert.equal(await client.updateHandle(renamed.did, "alice.example.org"), 1);
  assert.equal((await client.validateAccessToken(renamed.accessToken)).handle, "alice.example.org", "own, at once");

  // Another tab's refresh (no previousAccessToken) changes the session: the entry is dropped,
  // and the token, still valid, is asked again and cached again.
  const session = await settled(log, await other.createSession(uniqueDid(), "alice.test"));
  await client.validateAccessToken(session.accessToken);
  const changed = log.next((e) => e.type === "sessionKey" && e.sessionKey === session.sessionKey);
  await other.refreshSession(session.refreshToken);
  await changed;
  const asked = calls();
  assert.ok(await client.validateAccessToken(session.accessToken));
  assert.ok(await client.validateAccessToken(session.accessToken));
  assert.equal(calls(), asked + 1);
});

test("this client's own revocations end its cached answers at once, before the feed's event", async (t) => {
  const stack = await startStack();
  t.after(() => stack.stop());
  const { client, calls, log } = await cachingClient(t, stack.server.addr);
  const own = {
    deleteSession: (s) => client.deleteSession(s.refreshToken),
    revokeSession: (s) => client.revokeSession(s.did, s.sessionKey),
    deleteAllSessionsForDid: (s) => client.deleteAllSessionsForDid(s.did),
    revokeOtherSessions: async (s) => {
      const current = await client.createSession(s.did, "alice.test");
      await client.revokeOtherSessions(current.refreshToken);
    },
    "refreshSession with previousAccessToken": (s) => client.refreshSession(s.refreshToken, { previousAccessToken: s.accessToken }),
  };
  for (const [name, revoke] of Object.entries(own)) {
    const session = await settled(log, await client.createSession(uniqueDid(), "alice.test"));
    assert.ok(await client.validateAccessToken(session.accessToken), name);
    const asked = calls();
    assert.ok(await client.validateAccessToken(session.accessToken), name);
    assert.equal(calls(), asked, `${name}: cached`);
    await revoke(session);
    assert.equal(await client.validateAccessToken(session.accessToken), undefined, name);
  }
});

test("a validation in flight when an event arrives does not cache its (stale) answer", async (t) => {
  const stack = await startStack();
  t.after(() => stack.stop());
  const { client, calls, counter, log } = await cachingClient(t, stack.server.addr);
  const other = createSessionClient({ address: stack.server.addr });
  t.after(() => other.close());
  const session = await settled(log, await other.createSession(uniqueDid(), "alice.test"));

  // Hold the service's answer (valid, read before the revocation) until the event has arrived.
  let answered;
  const read = new Promise((resolve) => (answered = resolve));
  let release;
  const released = new Promise((resolve) => (release = resolve));
  counter.hold = () => {
    counter.hold = undefined;
    answered();
    return released;
  };
  const inFlight = client.validateAccessToken(session.accessToken);
  await read;
  const dropped = log.next((e) => e.type === "sessionKey" && e.sessionKey === session.sessionKey);
  await other.deleteSession(session.refreshToken);
  await dropped;
  release();
  assert.ok(await inFlight, "the answer as read (valid then)");

  const asked = calls();
  assert.equal(await client.validateAccessToken(session.accessToken), undefined, "not cached: asked again");
  assert.equal(calls(), asked + 1);
});

test("the feed's end (Valkey or the service gone) drops every answer: an outage error, never a stale valid", async (t) => {
  const valkey = await startValkey();
  const server = await startServer({ args: ["--valkey-url", valkey.url, "--metrics-listen", "127.0.0.1:0", "--health-check-interval-ms", "100"] });
  t.after(async () => {
    await server.kill();
    await valkey.kill();
  });
  const { client, calls, log } = await cachingClient(t, server.addr);

  // Valkey killed: the service's feed breaks and ends the stream.
  const session = await settled(log, await client.createSession(uniqueDid(), "alice.test"));
  assert.ok(await client.validateAccessToken(session.accessToken));
  let down = log.next((e) => e.type === "down");
  await valkey.kill();
  assert.equal((await down).code, "unavailable");
  assert.equal(client.cacheState().state, "connecting");
  assert.equal(client.cacheState().entries, 0);
  await assert.rejects(client.validateAccessToken(session.accessToken), SessionServiceUnavailableError);
  await readiness(server, false);

  // Valkey back on its port: the stream reopens (reset first) and answers are reused again.
  const live = log.next((e) => e.type === "reset");
  const revived = await startValkey(valkey.port);
  t.after(() => revived.kill());
  await live;
  assert.equal(client.cacheState().state, "live");
  // The service's store connection comes back on its own schedule: wait until it answers.
  await readiness(server, true);
  const again = await settled(log, await client.createSession(uniqueDid(), "alice.test"));
  assert.ok(await client.validateAccessToken(again.accessToken));
  const asked = calls();
  assert.ok(await client.validateAccessToken(again.accessToken));
  assert.equal(calls(), asked, "cached again");

  // The service killed: the stream ends with the connection.
  down = log.next((e) => e.type === "down");
  await server.kill();
  await down;
  await assert.rejects(client.validateAccessToken(again.accessToken), SessionServiceUnavailableError);
  assert.equal(client.cacheState().entries, 0);
});

test("with the memory store the service has no feed: the cache turns itself off, calls still work", async (t) => {
  const server = await startServer({ args: ["--store", "memory"] });
  t.after(() => server.kill());
  const counter = wire();
  const log = events();
  const off = log.next((e) => e.type === "unsupported");
  const client = createSessionClient({
    address: server.addr,
    interceptors: [counter.interceptor],
    validationCache: { onEvent: log.onEvent },
  });
  t.after(() => client.close());
  assert.equal((await off).code, "failed_precondition");
  assert.deepEqual(client.cacheState(), { state: "unsupported", entries: 0, code: "failed_precondition" });

  const session = await client.createSession(uniqueDid(), "alice.test");
  assert.ok(await client.validateAccessToken(session.accessToken));
  assert.ok(await client.validateAccessToken(session.accessToken));
  assert.equal(counter.state.calls, 2, "nothing cached");
  assert.deepEqual(
    log.seen.map((e) => e.type),
    ["unsupported"],
    "asked once, not again",
  );
  const disabled = createSessionClient({ address: server.addr, validationCache: false });
  t.after(() => disabled.close());
  assert.deepEqual(disabled.cacheState(), { state: "off", entries: 0 });
});

test("the cache is on by default, and validationCache: false turns it off", async (t) => {
  const stack = await startStack();
  t.after(() => stack.stop());
  const counter = wire();
  const off = createSessionClient({ address: stack.server.addr, validationCache: false, interceptors: [counter.interceptor] });
  t.after(() => off.close());
  assert.deepEqual(off.cacheState(), { state: "off", entries: 0 });
  // Created before the default client's stream opens: no event of its writes can reach that
  // stream later and drop the answer cached below.
  const session = await off.createSession(uniqueDid(), "alice.test");

  const plain = createSessionClient({ address: stack.server.addr, interceptors: [counter.interceptor] });
  t.after(() => plain.close());
  // Not live before its stream's first reset (every validation asks the service meanwhile).
  // A default client has no event hook to wait on: its state is polled.
  const until = Date.now() + 10_000;
  while (plain.cacheState().state !== "live") {
    assert.equal(plain.cacheState().state, "connecting");
    assert.ok(Date.now() < until, "live within 10 s");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.ok(await plain.validateAccessToken(session.accessToken));
  const asked = counter.state.calls;
  assert.ok(await plain.validateAccessToken(session.accessToken));
  assert.equal(counter.state.calls, asked, "answered from memory");
  assert.equal(plain.cacheState().entries, 1);
  assert.ok(await off.validateAccessToken(session.accessToken));
  assert.ok(await off.validateAccessToken(session.accessToken));
  assert.equal(counter.state.calls, asked + 2, "asked each time");
});

test("an entry is not reused past its token's expiry (minus the margin), judged on this clock", async (t) => {
  // 4 s tokens and a 2 s margin: the entry ends 2 s before Valkey expires the token, so what
  // ends it here is the client's clock, not the feed's expiry event.
  const stack = await startStack({ args: ["--access-token-ttl", "4"] });
  t.after(() => stack.stop());
  const { client, calls, log } = await cachingClient(t, stack.server.addr, { expiryMarginMs: 2000 });
  const session = await settled(log, await client.createSession(uniqueDid(), "alice.test"));
  const until = session.accessTokenExpiresAt - 2000;

  assert.ok(await client.validateAccessToken(session.accessToken));
  assert.ok(Date.now() < until, "the machine took over 2 s for one call");
  assert.ok(await client.validateAccessToken(session.accessToken));
  assert.equal(calls(), 1);

  await new Promise((resolve) => setTimeout(resolve, until - Date.now() + 20));
  await client.validateAccessToken(session.accessToken);
  await client.validateAccessToken(session.accessToken);
  assert.equal(calls(), 3, "asked each time, never cached again");
  assert.equal(client.cacheState().entries, 0);
});

test("a silent connection (the service frozen) ends reuse once a keepalive PING goes unanswered", async (t) => {
  const stack = await startStack();
  t.after(() => stack.stop());
  // No FIN, no RST: only a PING finds out. The bound is keepalive interval + timeout (5 s +
  // 5 s by default with the cache; 200 ms + 200 ms here).
  const { client, log } = await cachingClient(t, stack.server.addr, {}, { intervalMs: 200, timeoutMs: 200 });
  const session = await settled(log, await client.createSession(uniqueDid(), "alice.test"));
  assert.ok(await client.validateAccessToken(session.accessToken));
  assert.equal(client.cacheState().entries, 1);

  const down = log.next((e) => e.type === "down");
  stack.server.child.kill("SIGSTOP");
  t.after(() => stack.server.child.kill("SIGCONT"));
  await down;
  assert.equal(client.cacheState().entries, 0);
  await assert.rejects(client.validateAccessToken(session.accessToken), SessionServiceUnavailableError);
  stack.server.child.kill("SIGCONT");
});

test("past --max-revocation-streams the cache waits (RESOURCE_EXHAUSTED, retried) and goes live when a stream frees", async (t) => {
  const stack = await startStack({ args: ["--max-revocation-streams", "1"] });
  t.after(() => stack.stop());
  const first = await cachingClient(t, stack.server.addr);
  const log = events();
  const refused = log.next((e) => e.type === "down" && e.code === "resource_exhausted");
  const second = createSessionClient({
    address: stack.server.addr,
    validationCache: { reconnect: { initialBackoffMs: 20, maxBackoffMs: 100 }, onEvent: log.onEvent },
  });
  t.after(() => second.close());
  await refused;
  assert.equal(second.cacheState().state, "connecting");
  const session = await second.createSession(uniqueDid(), "alice.test");
  assert.ok(await second.validateAccessToken(session.accessToken), "calls work without the cache");
  assert.equal(second.cacheState().entries, 0);

  const live = log.next((e) => e.type === "reset");
  first.client.close();
  await live;
  assert.equal(second.cacheState().state, "live");
});

test("a service shutting down: the stream ends (the service ends it, or the client moves it off the closing connection), so the drain does not wait for it", async (t) => {
  const valkey = await startValkey();
  t.after(() => valkey.kill());
  const listen = `127.0.0.1:${await freePort()}`;
  const args = ["--valkey-url", valkey.url];
  const server = await startServer({ args, listen });
  t.after(() => server.kill());
  const { client, log } = await cachingClient(t, listen);
  const session = await settled(log, await client.createSession(uniqueDid(), "alice.test"));
  assert.ok(await client.validateAccessToken(session.accessToken));

  // SIGTERM: the service sends GOAWAY, ends its revocation streams with UNAVAILABLE and drains;
  // whichever the client sees first ends the stream. With the stream held open the service
  // would wait out its 20 s drain deadline and exit with an error.
  const moved = log.next((e) => e.type === "down");
  const exited = new Promise((resolve) => server.child.once("exit", (code) => resolve(code)));
  server.child.kill("SIGTERM");
  assert.ok(
    ["goaway", "unavailable"].includes((await moved).code),
    "ended by the service's drain or the client's move, not by the service's exit",
  );
  assert.equal(client.cacheState().entries, 0);
  assert.equal(await exited, 0, "a clean exit: nothing left to drain");
  await assert.rejects(client.validateAccessToken(session.accessToken), SessionServiceUnavailableError);

  // The next service on the same address: the stream comes back by itself.
  const live = log.next((e) => e.type === "reset");
  const next = await startServer({ args, listen });
  t.after(() => next.kill());
  await live;
  assert.equal(client.cacheState().state, "live");
  assert.ok(await client.validateAccessToken(session.accessToken), "the session is in Valkey still");
});
