// Batched validation (issue 20): the validateAccessToken calls of one event-loop turn go to
// the service as one ValidateAccessTokens call, each caller with its own answer or typed
// error; against the real service and a real Valkey, and a fake older service (UNIMPLEMENTED).
import assert from "node:assert/strict";
import { createServer } from "node:http2";
import { test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { createSessionClient, proto, SessionServiceUnavailableError } from "../dist/index.js";
import { metrics, sample, startStack, uniqueDid } from "./support.js";

/** The validation RPCs the client sent, in order: `{ method, tokens }` (tokens of a batch). */
function wire() {
  const sent = [];
  const interceptor = (next) => async (request) => {
    if (request.method.name === "ValidateAccessTokens") {
      sent.push({ method: "ValidateAccessTokens", tokens: [...request.message.accessTokens] });
    } else if (request.method.name === "ValidateAccessToken") {
      sent.push({ method: "ValidateAccessToken", tokens: [request.message.accessToken] });
    }
    return next(request);
  };
  return { sent, interceptor };
}

/** The service's count of finished calls of one RPC, from its /metrics. */
async function served(server, method) {
  return sample(await metrics(server), "rpc_server_call_duration_seconds_count", { rpc_method: method });
}

async function stackWithMetrics(t) {
  const stack = await startStack({ args: ["--metrics-listen", "127.0.0.1:0"] });
  t.after(() => stack.stop());
  return stack;
}

test("validations made in one turn go out as one ValidateAccessTokens call, answered per caller in order", async (t) => {
  const stack = await stackWithMetrics(t);
  const { sent, interceptor } = wire();
  const client = createSessionClient({ address: stack.server.addr, validationCache: false, interceptors: [interceptor] });
  t.after(() => client.close());
  const sessions = [];
  for (let i = 0; i < 5; i++) sessions.push(await client.createSession(uniqueDid(), "alice.test"));
  const revoked = await client.createSession(uniqueDid(), "gone.test");
  await client.deleteSession(revoked.refreshToken);

  // Valid, unknown, malformed, empty, a refresh token, a revoked token, and duplicates.
  const cases = [
    [sessions[0].accessToken, sessions[0].did],
    ["0".repeat(64), undefined],
    [sessions[1].accessToken, sessions[1].did],
    ["not a token", undefined],
    [sessions[2].accessToken, sessions[2].did],
    ["", undefined],
    [sessions[0].accessToken, sessions[0].did],
    [sessions[3].refreshToken, undefined],
    [revoked.accessToken, undefined],
    [sessions[4].accessToken, sessions[4].did],
    [sessions[0].accessToken, sessions[0].did],
  ];
  const before = await served(stack.server, "ValidateAccessTokens");
  const answers = await Promise.all(cases.map(([token]) => client.validateAccessToken(token)));
  assert.deepEqual(
    answers.map((a) => a?.did),
    cases.map(([, did]) => did),
    "each caller its own answer",
  );
  assert.equal(answers[4].sessionKey, sessions[2].sessionKey);
  assert.notEqual(answers[0], answers[6], "a duplicate gets its own object");
  assert.deepEqual(answers[0], answers[6]);

  assert.equal(sent.length, 1, "one call on the wire");
  assert.equal(sent[0].method, "ValidateAccessTokens");
  // The same token twice in one turn is asked once.
  assert.deepEqual(sent[0].tokens, [...new Set(cases.map(([token]) => token))]);
  assert.equal(await served(stack.server, "ValidateAccessTokens"), before + 1, "the service served one call");
  assert.equal(await served(stack.server, "ValidateAccessToken"), 0, "and no unary one");

  // The next turn is the next call: answers from separate turns are not held together.
  assert.equal((await client.validateAccessToken(sessions[0].accessToken))?.did, sessions[0].did);
  assert.equal((await client.validateAccessToken(sessions[1].accessToken))?.did, sessions[1].did);
  assert.deepEqual(sent.slice(1).map((s) => s.tokens.length), [1, 1]);
});

test("a lone validation goes out in its own turn, before any I/O or timer callback queued with it", async (t) => {
  const stack = await stackWithMetrics(t);
  let immediate = false;
  let sentAfterImmediate;
  const client = createSessionClient({
    address: stack.server.addr,
    validationCache: false,
    interceptors: [
      (next) => async (request) => {
        if (request.method.name === "ValidateAccessTokens") sentAfterImmediate = immediate;
        return next(request);
      },
    ],
  });
  t.after(() => client.close());
  const session = await client.createSession(uniqueDid(), "alice.test");
  const answer = client.validateAccessToken(session.accessToken);
  setImmediate(() => (immediate = true));
  assert.equal((await answer)?.did, session.did);
  assert.equal(sentAfterImmediate, false, "sent before the check phase of this loop iteration");
});

test("more than 1000 validations in one turn are split into calls of at most 1000", async (t) => {
  const stack = await stackWithMetrics(t);
  const { sent, interceptor } = wire();
  const client = createSessionClient({ address: stack.server.addr, validationCache: false, interceptors: [interceptor] });
  t.after(() => client.close());
  const valid = [];
  for (let i = 0; i < 4; i++) valid.push(await client.createSession(uniqueDid(), "alice.test"));
  // 2345 distinct tokens, valid ones at the edges of the chunks.
  const tokens = Array.from({ length: 2345 }, (_, i) => i.toString(16).padStart(64, "0"));
  const at = { 0: valid[0], 999: valid[1], 1000: valid[2], 2344: valid[3] };
  for (const [i, session] of Object.entries(at)) tokens[i] = session.accessToken;

  const answers = await Promise.all(tokens.map((token) => client.validateAccessToken(token)));
  assert.deepEqual(
    sent.map((s) => [s.method, s.tokens.length]),
    [
      ["ValidateAccessTokens", 1000],
      ["ValidateAccessTokens", 1000],
      ["ValidateAccessTokens", 345],
    ],
  );
  assert.deepEqual(sent.flatMap((s) => s.tokens), tokens, "in order, each once");
  for (let i = 0; i < tokens.length; i++) {
    assert.equal(answers[i]?.did, at[i]?.did, `answer ${i}`);
  }
  assert.equal(await served(stack.server, "ValidateAccessTokens"), 3);
});

test("a failed batch gives every waiter its own typed error (a deadline, an outage), never an invalid answer", async (t) => {
  const stack = await stackWithMetrics(t);
  const client = createSessionClient({ address: stack.server.addr, validationCache: false });
  t.after(() => client.close());
  const sessions = [];
  for (let i = 0; i < 3; i++) sessions.push(await client.createSession(uniqueDid(), "alice.test"));
  const tokens = [...sessions.map((s) => s.accessToken), "0".repeat(64), "malformed"];

  async function allRejected(code) {
    const outcomes = await Promise.allSettled(tokens.map((token) => client.validateAccessToken(token)));
    for (const outcome of outcomes) {
      assert.equal(outcome.status, "rejected", "no answer, valid or not");
      assert.ok(outcome.reason instanceof SessionServiceUnavailableError, `${outcome.reason}`);
      assert.equal(outcome.reason.code, code);
      assert.equal(outcome.reason.rpc, "ValidateAccessTokens");
    }
    assert.equal(new Set(outcomes.map((o) => o.reason)).size, tokens.length, "an error of its own for each waiter");
  }

  // Frozen: the store does not answer within validation's 200 ms deadline.
  stack.valkey.signal("SIGSTOP");
  await allRejected("deadline_exceeded");
  stack.valkey.signal("SIGCONT");
  assert.equal((await client.validateAccessToken(sessions[0].accessToken))?.did, sessions[0].did, "back once Valkey answers");

  // Dead: the service answers UNAVAILABLE for the whole call.
  await stack.valkey.kill();
  await allRejected("unavailable");
});

test("batching: false sends one ValidateAccessToken call per validation", async (t) => {
  const stack = await stackWithMetrics(t);
  const { sent, interceptor } = wire();
  const client = createSessionClient({ address: stack.server.addr, validationCache: false, batching: false, interceptors: [interceptor] });
  t.after(() => client.close());
  const session = await client.createSession(uniqueDid(), "alice.test");
  const answers = await Promise.all([session.accessToken, "0".repeat(64), session.accessToken].map((token) => client.validateAccessToken(token)));
  assert.deepEqual(answers.map((a) => a?.did), [session.did, undefined, session.did]);
  assert.deepEqual(sent.map((s) => s.method), ["ValidateAccessToken", "ValidateAccessToken", "ValidateAccessToken"]);
  assert.equal(await served(stack.server, "ValidateAccessToken"), 3);
  assert.equal(await served(stack.server, "ValidateAccessTokens"), 0);
});

test("cache hits never enter a batch: only the misses of the turn go out", async (t) => {
  const stack = await stackWithMetrics(t);
  const setup = createSessionClient({ address: stack.server.addr, validationCache: false });
  t.after(() => setup.close());
  // Created before the caching client's stream opens: no late event of these writes can drop
  // the answer cached below.
  const cached = await setup.createSession(uniqueDid(), "alice.test");
  const missed = await setup.createSession(uniqueDid(), "bob.test");

  const { sent, interceptor } = wire();
  let live;
  const isLive = new Promise((resolve) => (live = resolve));
  const client = createSessionClient({
    address: stack.server.addr,
    interceptors: [interceptor],
    validationCache: { onEvent: (e) => e.type === "reset" && live() },
  });
  t.after(() => client.close());
  await isLive;
  assert.equal((await client.validateAccessToken(cached.accessToken))?.did, cached.did);
  assert.equal(client.cacheState().entries, 1);

  const answers = await Promise.all([cached, missed, cached].map((s) => client.validateAccessToken(s.accessToken)));
  assert.deepEqual(answers.map((a) => a?.did), [cached.did, missed.did, cached.did]);
  assert.deepEqual(sent.map((s) => s.tokens), [[cached.accessToken], [missed.accessToken]], "the hit was not sent");
});

/**
 * A service that predates ValidateAccessTokens: it implements ValidateAccessToken only (every
 * other RPC answers UNIMPLEMENTED), and counts the calls it gets by method.
 */
async function olderService(t) {
  const calls = { ValidateAccessToken: 0, ValidateAccessTokens: 0 };
  const handler = connectNodeAdapter({
    grpc: true,
    connect: false,
    grpcWeb: false,
    interceptors: [
      (next) => async (request) => {
        if (request.method.name in calls) calls[request.method.name]++;
        return next(request);
      },
    ],
    routes: (router) => {
      router.rpc(proto.SessionService.method.validateAccessToken, async (request) =>
        // Tokens starting with "v" are valid, for the session of did:plc:<token>.
        request.accessToken.startsWith("v")
          ? { valid: true, session: { did: `did:plc:${request.accessToken}`, handle: "old.test", sessionKey: "f".repeat(64) } }
          : { valid: false },
      );
      // As tonic answers a method its service does not have.
      router.rpc(proto.SessionService.method.validateAccessTokens, async () => {
        throw new ConnectError("Operation is not implemented or not supported", Code.Unimplemented);
      });
    },
  });
  const server = createServer(handler);
  const sessions = new Set();
  server.on("session", (session) => sessions.add(session));
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => {
    // close() waits for open connections: the client's would stay open till its idle timeout.
    for (const session of sessions) session.destroy();
    return new Promise((resolve) => server.close(resolve));
  });
  return { address: `127.0.0.1:${server.address().port}`, calls };
}

test("against a service without ValidateAccessTokens (UNIMPLEMENTED): the batch's callers are asked one by one, and unary calls are used for good", async (t) => {
  const older = await olderService(t);
  const { sent, interceptor } = wire();
  const client = createSessionClient({ address: older.address, validationCache: false, interceptors: [interceptor] });
  t.after(() => client.close());

  const first = await Promise.all(["va", "x", "vb"].map((token) => client.validateAccessToken(token)));
  assert.deepEqual(first.map((a) => a?.did), ["did:plc:va", undefined, "did:plc:vb"], "answered, not failed");
  assert.deepEqual(older.calls, { ValidateAccessToken: 3, ValidateAccessTokens: 1 });

  const second = await Promise.all(["vc", "vd"].map((token) => client.validateAccessToken(token)));
  assert.deepEqual(second.map((a) => a?.did), ["did:plc:vc", "did:plc:vd"]);
  assert.deepEqual(older.calls, { ValidateAccessToken: 5, ValidateAccessTokens: 1 }, "no batch tried again");
  assert.deepEqual(
    sent.map((s) => s.method),
    ["ValidateAccessTokens", "ValidateAccessToken", "ValidateAccessToken", "ValidateAccessToken", "ValidateAccessToken", "ValidateAccessToken"],
  );
});
