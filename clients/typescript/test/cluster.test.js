// The validation cache against a real three-primary Valkey Cluster (--valkey-mode cluster):
// the service's WatchRevocations feed follows every primary, so the client's cache goes live
// (not "unsupported", as before the service had a feed in cluster mode), answers repeat
// validations from memory, and drops a session revoked through another client as soon as the
// feed names it, whichever primary holds the token's key.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { performance } from "node:perf_hooks";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { createSessionClient, proto } from "../dist/index.js";
import { events, metrics, sample, startClusterStack, uniqueDid } from "./support.js";

const sha256 = (text) => createHash("sha256").update(text).digest("hex");

/** The service's key of an access token (default `--key-prefix`). */
const accessKey = (token) => `barazo:session:access:${sha256(token)}`;

/** Rejects with `what` unless `promise` settles within `ms`: a bound, not a synchronisation. */
function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Counts the validations the client asks the service on the wire (one per token). */
function wire() {
  const state = { calls: 0 };
  const interceptor = (next) => async (request) => {
    if (request.method.name === "ValidateAccessToken") state.calls++;
    else if (request.method.name === "ValidateAccessTokens") state.calls += request.message.accessTokens.length;
    return next(request);
  };
  return { state, interceptor };
}

/**
 * Sessions created with `create` until their access keys live on each of the cluster's three
 * primaries (each key checked on its node with EXISTS): index i holds one on node i.
 */
async function onEveryPrimary(cluster, create) {
  const byNode = [undefined, undefined, undefined];
  for (let made = 0; byNode.includes(undefined); made++) {
    assert.ok(made < 60, "60 sessions and still a primary without an access key");
    const session = await create();
    const owner = await cluster.ownerOf(accessKey(session.accessToken));
    assert.ok(owner >= 0, "the key's slot belongs to a node");
    byNode[owner] ??= session;
  }
  for (const [node, session] of byNode.entries()) {
    assert.equal(await cluster.command(node, "EXISTS", accessKey(session.accessToken)), 1, `the access key is on node ${node}`);
  }
  return byNode;
}

describe("the validation cache against a three-primary Valkey Cluster", () => {
  let stack;
  before(async () => {
    stack = await startClusterStack({ args: ["--metrics-listen", "127.0.0.1:0"] });
  });
  after(() => stack?.stop());

  test("the service's own WatchRevocations stream starts with reset, then names writes on every primary", async (t) => {
    const sessionManager = new Http2SessionManager(`http://${stack.server.addr}`);
    const raw = createClient(proto.SessionService, createGrpcTransport({ baseUrl: `http://${stack.server.addr}`, sessionManager }));
    const abort = new AbortController();
    t.after(() => {
      abort.abort();
      sessionManager.abort();
    });
    // SERVING comes before the feed on every primary is live: while it is not, the stream is
    // refused UNAVAILABLE ("retry shortly"), as the README says; retried until it opens.
    const open = () => {
      const log = events();
      const ended = (async () => {
        for await (const message of raw.watchRevocations({}, { signal: abort.signal })) {
          log.push(message.event);
        }
        return "ended";
      })().catch((error) => (abort.signal.aborted ? "aborted" : error));
      return { log, ended };
    };
    const deadline = Date.now() + 15_000;
    let log, first;
    for (;;) {
      let ended;
      ({ log, ended } = open());
      first = await within(Promise.race([log.next(() => true), ended.then((why) => ({ ended: why }))]), 15_000, "a first event");
      const refused = first.ended instanceof ConnectError && first.ended.code === Code.Unavailable;
      if (!refused || Date.now() > deadline) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.deepEqual(first.ended, undefined, "the stream was open, not refused or ended");
    assert.equal(first.case, "reset", "the first event is reset");

    // Writes after the reset on each primary reach the stream: the feed follows all three.
    const client = createSessionClient({ address: stack.server.addr, validationCache: false });
    t.after(() => client.close());
    const byNode = await onEveryPrimary(stack.cluster, () => client.createSession(uniqueDid(), "alice.test"));
    for (const [node, session] of byNode.entries()) {
      const hash = sha256(session.accessToken);
      await within(
        log.some((e) => e.case === "accessTokenHash" && e.value === hash),
        5_000,
        `the SET of node ${node}'s access key on the stream`,
      );
    }
    assert.equal(log.seen.filter((e) => e.case === "reset").length, 1, "no reset after the first");
  });

  test("a caching client goes live, answers from memory, and drops a session revoked elsewhere within a second", async (t) => {
    const counter = wire();
    const log = events();
    const live = log.next((e) => e.type === "reset");
    const client = createSessionClient({
      address: stack.server.addr,
      interceptors: [counter.interceptor],
      validationCache: { reconnect: { initialBackoffMs: 20, maxBackoffMs: 200 }, onEvent: (e) => log.push(e) },
    });
    t.after(() => client.close());
    const calls = () => counter.state.calls;
    await within(live, 15_000, "the cache's first reset");
    assert.deepEqual(client.cacheState(), { state: "live", entries: 0 });
    assert.ok(!log.seen.some((e) => e.type === "unsupported"), "not turned off");
    t.diagnostic(`cache events before live: ${log.seen.map((e) => e.type).join(", ")}`);
    const liveAt = log.seen.length;

    // Another AppView process: no cache, its revocations reach `client` only through the feed.
    const other = createSessionClient({ address: stack.server.addr, validationCache: false });
    t.after(() => other.close());
    const byNode = await onEveryPrimary(stack.cluster, () => other.createSession(uniqueDid(), "alice.test"));
    // Until the feed has passed on a session's own creation (its access and data keys, on two
    // primaries) those events can arrive late and drop an answer cached before them.
    for (const session of byNode) {
      const hash = sha256(session.accessToken);
      await within(
        Promise.all([
          log.some((e) => e.type === "accessTokenHash" && e.hash === hash),
          log.some((e) => e.type === "sessionKey" && e.sessionKey === session.sessionKey),
        ]),
        5_000,
        "the creation's events",
      );
    }

    // A hit: no call on the wire, and the service counts no validation.
    const [session] = byNode;
    const first = await client.validateAccessToken(session.accessToken);
    assert.equal(first?.did, session.did);
    assert.equal(calls(), 1);
    const validated = sample(await metrics(stack.server), "barazo_session_validations_total", { outcome: "valid" });
    assert.ok(validated >= 1, "the service counted the first validation");
    for (let i = 0; i < 5; i++) {
      assert.deepEqual(await client.validateAccessToken(session.accessToken), first);
    }
    assert.equal(calls(), 1, "answered from memory");
    assert.equal(sample(await metrics(stack.server), "barazo_session_validations_total", { outcome: "valid" }), validated, "the service was not asked");
    assert.equal(client.cacheState().entries, 1);

    // Revoked through the other client, one session per primary holding its access key.
    const revocations = [
      ["deleteSession", (s) => other.deleteSession(s.refreshToken)],
      ["revokeSession", (s) => other.revokeSession(s.did, s.sessionKey)],
      ["refreshSession with previousAccessToken", (s) => other.refreshSession(s.refreshToken, { previousAccessToken: s.accessToken })],
    ];
    for (const [node, s] of byNode.entries()) {
      const [name, revoke] = revocations[node];
      const what = `${name} (access key on node ${node})`;
      const hash = sha256(s.accessToken);
      assert.ok(await client.validateAccessToken(s.accessToken), what);
      const asked = calls();
      assert.ok(await client.validateAccessToken(s.accessToken), what);
      assert.equal(calls(), asked, `${what}: cached`);

      const named = log.next((e) => e.type === "accessTokenHash" && e.hash === hash);
      const dropped = log.next(
        (e) => (e.type === "accessTokenHash" && e.hash === hash) || (e.type === "sessionKey" && e.sessionKey === s.sessionKey),
      );
      await revoke(s);
      const revoked = performance.now();
      await within(dropped, 1_000, `${what}: the cached answer dropped`);
      const ms = performance.now() - revoked;
      assert.equal(await client.validateAccessToken(s.accessToken), undefined, `${what}: no longer valid`);
      assert.equal(calls(), asked + 1, `${what}: asked the service again`);
      // The token's own key's primary named it (whichever event came first).
      await within(named, 1_000, `${what}: node ${node}'s feed named the token`);
      t.diagnostic(`${what}: dropped ${ms.toFixed(2)} ms after the revocation's answer`);
    }
    assert.equal(client.cacheState().state, "live");
    const since = log.seen.slice(liveAt).map((e) => e.type);
    assert.ok(!since.includes("down") && !since.includes("reset"), `the stream stayed open, never reset: ${since.join(", ")}`);
  });
});
