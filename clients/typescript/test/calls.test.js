// Every call of the client against the real service and a real Valkey, and the answers the
// AppView acts on: undefined for "no such token/session", typed errors naming the field.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { createSessionClient, SessionServiceInvalidArgumentError } from "../dist/index.js";
import { metrics, sample, startStack, uniqueDid } from "./support.js";

const hex64 = /^[0-9a-f]{64}$/;
let stack;
let client;

before(async () => {
  stack = await startStack({ args: ["--metrics-listen", "127.0.0.1:0"] });
  client = createSessionClient({ address: stack.server.addr });
});
after(async () => {
  client.close();
  await stack.stop();
});

describe("the session lifecycle", () => {
  test("createSession returns the session with both tokens and no sid", async () => {
    const did = uniqueDid();
    const before = Date.now();
    const created = await client.createSession(did, "alice.bsky.social", {
      userAgent: "Firefox/141",
      ipAddress: "203.0.113.7",
    });
    assert.equal(created.did, did);
    assert.equal(created.handle, "alice.bsky.social");
    assert.match(created.accessToken, hex64);
    assert.match(created.refreshToken, hex64);
    assert.notEqual(created.accessToken, created.refreshToken);
    assert.equal(created.refreshTokenRotated, false);
    assert.match(created.sessionKey, hex64);
    assert.deepEqual(created.client, { userAgent: "Firefox/141", ipAddress: "203.0.113.7" });
    // Epoch milliseconds, as the old module: 15 minutes for the token, 7 days for the session.
    assert.ok(created.createdAt >= before - 5000 && created.createdAt <= Date.now() + 5000, `${created.createdAt}`);
    assert.equal(created.accessTokenExpiresAt - created.createdAt, 15 * 60 * 1000);
    assert.equal(created.expiresAt - created.refreshedAt, 7 * 24 * 3600 * 1000);
    assert.equal("sid" in created, false);
  });

  test("validateAccessToken answers the session, or undefined for any token that is not live", async () => {
    const did = uniqueDid();
    const created = await client.createSession(did, "alice.test");
    const session = await client.validateAccessToken(created.accessToken);
    assert.ok(session);
    assert.equal(session.did, did);
    assert.equal(session.handle, "alice.test");
    assert.equal(session.sessionKey, created.sessionKey);
    assert.deepEqual(session.client, { userAgent: "", ipAddress: "" });
    // The access token never reveals the refresh token.
    assert.equal("sid" in session, false);
    assert.equal(JSON.stringify(session).includes(created.refreshToken), false);

    assert.equal(await client.validateAccessToken("0".repeat(64)), undefined, "unknown token");
    assert.equal(await client.validateAccessToken("not a token"), undefined, "malformed token");
    assert.equal(await client.validateAccessToken(""), undefined, "empty token");
    assert.equal(await client.validateAccessToken(created.refreshToken), undefined, "a refresh token is no access token");
  });

  test("refreshSession mints a new access token for the same session and keeps the refresh token", async () => {
    const created = await client.createSession(uniqueDid(), "alice.test");
    const refreshed = await client.refreshSession(created.refreshToken, {
      client: { userAgent: "Safari/18", ipAddress: "2001:db8::1" },
      previousAccessToken: created.accessToken,
    });
    assert.ok(refreshed);
    assert.match(refreshed.accessToken, hex64);
    assert.notEqual(refreshed.accessToken, created.accessToken);
    assert.equal(refreshed.sessionKey, created.sessionKey);
    assert.equal(refreshed.createdAt, created.createdAt);
    assert.ok(refreshed.refreshedAt >= created.refreshedAt);
    assert.deepEqual(refreshed.client, { userAgent: "Safari/18", ipAddress: "2001:db8::1" });
    // Without rotation on the server the cookie stays as it is; the tab's old token is gone.
    assert.equal(await client.validateAccessToken(created.accessToken), undefined, "the tab's previous token");
    assert.equal(refreshed.refreshToken, created.refreshToken);
    assert.equal(refreshed.refreshTokenRotated, false);
    assert.equal((await client.validateAccessToken(refreshed.accessToken))?.sessionKey, created.sessionKey);
  });

  test("refreshSession and revokeOtherSessions answer undefined when the session is gone", async () => {
    assert.equal(await client.refreshSession("f".repeat(64)), undefined, "unknown");
    assert.equal(await client.refreshSession("garbage"), undefined, "malformed");
    const created = await client.createSession(uniqueDid(), "alice.test");
    assert.equal(await client.deleteSession(created.refreshToken), true);
    assert.equal(await client.refreshSession(created.refreshToken), undefined, "deleted");
    assert.equal(await client.revokeOtherSessions(created.refreshToken), undefined, "deleted");
    assert.equal(await client.validateAccessToken(created.accessToken), undefined);
  });

  test("deleteSession is idempotent", async () => {
    const created = await client.createSession(uniqueDid(), "alice.test");
    assert.equal(await client.deleteSession(created.refreshToken), true);
    assert.equal(await client.deleteSession(created.refreshToken), false);
    assert.equal(await client.deleteSession("nonsense"), false);
  });

  test("deleteAllSessionsForDid revokes every session of the DID and counts them", async () => {
    const did = uniqueDid();
    const other = await client.createSession(uniqueDid(), "bob.test");
    const sessions = await Promise.all([1, 2, 3].map(() => client.createSession(did, "alice.test")));
    assert.equal(await client.deleteAllSessionsForDid(did), 3);
    for (const s of sessions) {
      assert.equal(await client.validateAccessToken(s.accessToken), undefined);
    }
    assert.equal(await client.deleteAllSessionsForDid(did), 0);
    assert.ok(await client.validateAccessToken(other.accessToken), "another DID's session stays");
  });

  test("deleteAllSessionsForDid counts an #account status under its reason", async () => {
    for (const reason of ["deleted", "takendown", "deactivated", "suspended"]) {
      const did = uniqueDid();
      await Promise.all([1, 2].map(() => client.createSession(did, "alice.test")));
      const counted = async () =>
        sample(await metrics(stack.server), "barazo_session_revocations_total", { reason: `account-${reason}` }) || 0;
      const before = await counted();
      assert.equal(await client.deleteAllSessionsForDid(did, { reason }), 2, reason);
      assert.equal(await counted(), before + 2, reason);
      assert.deepEqual(await client.listSessions(did), [], reason);
    }
  });

  test("refreshSession's onEnded hears why a session ended: revoked (and how), or unknown", async () => {
    const ended = [];
    const onEnded = (end) => ended.push(end);
    const did = uniqueDid();
    const loggedOut = await client.createSession(did, "alice.test");
    await client.deleteSession(loggedOut.refreshToken);
    const device = await client.createSession(did, "alice.test");
    await client.revokeSession(did, device.sessionKey);
    const suspended = await client.createSession(uniqueDid(), "bob.test");
    await client.deleteAllSessionsForDid(suspended.did, { reason: "suspended" });
    for (const session of [loggedOut, device, suspended]) {
      assert.equal(await client.refreshSession(session.refreshToken, { onEnded }), undefined);
    }
    assert.equal(await client.refreshSession("ab".repeat(32), { onEnded }), undefined);
    assert.deepEqual(ended, [
      { reason: "SESSION_REVOKED", metadata: { revocation: "logout" } },
      { reason: "SESSION_REVOKED", metadata: { revocation: "user" } },
      { reason: "SESSION_REVOKED", metadata: { revocation: "account-suspended" } },
      { reason: "SESSION_UNKNOWN", metadata: {} },
    ]);
  });

  test("updateHandle renames every live session of the DID and counts them", async () => {
    const did = uniqueDid();
    const sessions = await Promise.all([1, 2].map(() => client.createSession(did, "alice.test")));
    assert.equal(await client.updateHandle(did, "alice.example.com"), 2);
    for (const s of sessions) {
      assert.equal((await client.validateAccessToken(s.accessToken)).handle, "alice.example.com");
    }
    assert.equal(await client.updateHandle(uniqueDid(), "bob.test"), 0, "a DID without sessions");
  });

  test("listSessions, revokeSession and revokeOtherSessions back the 'your sessions' page", async () => {
    const did = uniqueDid();
    const laptop = await client.createSession(did, "alice.test", { userAgent: "laptop", ipAddress: "" });
    const phone = await client.createSession(did, "alice.test", { userAgent: "phone", ipAddress: "" });
    const tablet = await client.createSession(did, "alice.test", { userAgent: "tablet", ipAddress: "" });
    await client.refreshSession(laptop.refreshToken);

    const listed = await client.listSessions(did);
    assert.deepEqual(
      listed.map((s) => s.sessionKey).sort(),
      [laptop, phone, tablet].map((s) => s.sessionKey).sort(),
    );
    assert.equal(listed[0].sessionKey, laptop.sessionKey, "most recently refreshed first");
    assert.equal(listed[0].client.userAgent, "laptop");
    assert.equal(JSON.stringify(listed).includes(laptop.refreshToken), false, "no credential listed");

    // Another user's DID cannot revoke it.
    assert.equal(await client.revokeSession(uniqueDid(), phone.sessionKey), false);
    assert.equal(await client.revokeSession(did, phone.sessionKey), true);
    assert.equal(await client.revokeSession(did, phone.sessionKey), false);
    assert.equal(await client.validateAccessToken(phone.accessToken), undefined);

    assert.equal(await client.revokeOtherSessions(laptop.refreshToken), 1);
    assert.equal(await client.validateAccessToken(tablet.accessToken), undefined);
    assert.deepEqual(
      (await client.listSessions(did)).map((s) => s.sessionKey),
      [laptop.sessionKey],
    );
    assert.deepEqual(await client.listSessions(uniqueDid()), []);
  });
});

describe("INVALID_ARGUMENT is a typed error naming the field", () => {
  const cases = [
    ["createSession with a bad DID", () => client.createSession("not-a-did", "alice.test"), "did"],
    ["createSession with a bad handle", () => client.createSession(uniqueDid(), "-bad-"), "handle"],
    [
      "createSession with a bad IP address",
      () => client.createSession(uniqueDid(), "alice.test", { ipAddress: "nowhere" }),
      "client.ip_address",
    ],
    ["deleteAllSessionsForDid with a bad DID", () => client.deleteAllSessionsForDid("DID:x"), "did"],
    ["updateHandle with a bad handle", () => client.updateHandle(uniqueDid(), "-bad-"), "handle"],
    ["updateHandle with a bad DID", () => client.updateHandle("nope", "alice.test"), "did"],
    [
      "deleteAllSessionsForDid with a status that ends no session",
      () => client.deleteAllSessionsForDid(uniqueDid(), { reason: "throttled" }),
      "reason",
    ],
    ["listSessions with a bad DID", () => client.listSessions("nope"), "did"],
    ["revokeSession with a bad session key", () => client.revokeSession(uniqueDid(), "short"), "session_key"],
  ];
  for (const [name, run, field] of cases) {
    test(name, async () => {
      await assert.rejects(run(), (error) => {
        assert.ok(error instanceof SessionServiceInvalidArgumentError, `${error}`);
        assert.equal(error.code, "invalid_argument");
        assert.equal(error.field, field);
        return true;
      });
    });
  }
});

test("close() ends the client: later calls fail instead of reconnecting", async () => {
  const own = createSessionClient({ address: stack.server.addr });
  const created = await own.createSession(uniqueDid(), "alice.test");
  own.close();
  await assert.rejects(own.validateAccessToken(created.accessToken), (error) => error.code === "canceled");
});

test("with rotation on the service: a new cookie on every refresh, only the refreshing tab's token revoked, an old cookie ends the session", async (t) => {
  const stack = await startStack({ args: ["--refresh-token-rotation", "on", "--refresh-reuse-grace", "0"] });
  t.after(() => stack.stop());
  const rotating = createSessionClient({ address: stack.server.addr });
  t.after(() => rotating.close());
  const did = uniqueDid();
  const created = await rotating.createSession(did, "alice.test");
  // Tab B refreshes without a token of its own: tab A's token stays valid.
  const tabB = await rotating.refreshSession(created.refreshToken);
  assert.ok(tabB);
  assert.equal(tabB.refreshTokenRotated, true);
  assert.notEqual(tabB.refreshToken, created.refreshToken);
  assert.ok(await rotating.validateAccessToken(created.accessToken), "tab A keeps its token");
  // Tab A refreshes with the new cookie and its own token: only A's old token goes.
  const tabA = await rotating.refreshSession(tabB.refreshToken, { previousAccessToken: created.accessToken });
  assert.ok(tabA);
  assert.equal(tabA.refreshTokenRotated, true);
  assert.equal(await rotating.validateAccessToken(created.accessToken), undefined, "A's previous token");
  assert.ok(await rotating.validateAccessToken(tabB.accessToken), "B's token");
  assert.ok(await rotating.validateAccessToken(tabA.accessToken));
  // The first cookie again (no grace): reuse, the whole session ends; the call that found it
  // says so, with the DID to tell, and later calls that it was revoked as reuse.
  const ended = [];
  const onEnded = (end) => ended.push(end);
  assert.equal(await rotating.refreshSession(created.refreshToken, { onEnded }), undefined);
  assert.equal(await rotating.validateAccessToken(tabA.accessToken), undefined);
  assert.equal(await rotating.refreshSession(tabA.refreshToken, { onEnded }), undefined);
  assert.equal(await rotating.refreshSession(tabA.refreshToken), undefined, "without onEnded: the same answer");
  assert.deepEqual(ended, [
    { reason: "REFRESH_TOKEN_REUSED", did, metadata: { did } },
    { reason: "SESSION_REVOKED", metadata: { revocation: "reuse" } },
  ]);
});
