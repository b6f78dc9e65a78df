// A refresh whose answer is lost (the caller's deadline passes while Valkey is slow) has
// still rotated the cookie: the client repeats it with the same cookie inside the reuse
// grace, so the user stays signed in and nothing reads as a stolen cookie.
import assert from "node:assert/strict";
import { createServer, connect } from "node:net";
import { test } from "node:test";
import { createSessionClient } from "../dist/index.js";
import { metrics, sample, startServer, startValkey, uniqueDid } from "./support.js";

/**
 * A TCP proxy to `port` that holds every chunk Valkey sends back for `delayMs` while that
 * is above 0 (set it at any time), as a latency spike on the way to the service would.
 */
async function delayingProxy(port) {
  const sockets = new Set();
  const proxy = {
    delayMs: 0,
    port: 0,
    close: () =>
      new Promise((done) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => done());
      }),
  };
  const server = createServer((client) => {
    const valkey = connect(port, "127.0.0.1");
    sockets.add(client).add(valkey);
    client.on("data", (chunk) => valkey.write(chunk));
    valkey.on("data", (chunk) => {
      const delay = proxy.delayMs;
      if (delay > 0) setTimeout(() => client.write(chunk), delay);
      else client.write(chunk);
    });
    const end = () => {
      client.destroy();
      valkey.destroy();
    };
    client.on("close", end).on("error", end);
    valkey.on("close", end).on("error", end);
  });
  await new Promise((listening) => server.listen(0, "127.0.0.1", listening));
  proxy.port = server.address().port;
  return proxy;
}

/** A Valkey behind a delaying proxy, and a service with rotation on reaching it through it. */
async function slowStack(t, args = []) {
  const valkey = await startValkey();
  t.after(() => valkey.kill());
  const proxy = await delayingProxy(valkey.port);
  t.after(() => proxy.close());
  const server = await startServer({
    args: ["--valkey-url", `redis://127.0.0.1:${proxy.port}`, "--refresh-token-rotation", "on", ...args],
  });
  t.after(() => server.kill());
  return { proxy, server };
}

test("a refresh whose answer is lost to a slow Valkey is repeated within the grace: the user stays signed in, no reuse", async (t) => {
  const { proxy, server } = await slowStack(t, ["--refresh-reuse-grace", "2", "--metrics-listen", "127.0.0.1:0"]);

  // Each refresh attempt, as the client makes it: the first one's failure ends the spike.
  const attempts = [];
  const observe = (next) => async (request) => {
    if (!request.url.endsWith("/RefreshSession")) return next(request);
    try {
      const answer = await next(request);
      attempts.push("answered");
      return answer;
    } catch (error) {
      attempts.push(error.code);
      proxy.delayMs = 0;
      throw error;
    }
  };
  const client = createSessionClient({
    address: server.addr,
    validationCache: false,
    timeoutMs: { refreshSession: 300 },
    interceptors: [observe],
  });
  t.after(() => client.close());
  const created = await client.createSession(uniqueDid(), "alice.test");

  // Valkey answers after 400 ms: the call's 300 ms run out, the script has run all the same.
  proxy.delayMs = 400;
  const refreshed = await client.refreshSession(created.refreshToken);
  assert.ok(refreshed, "the user is still signed in");
  assert.deepEqual(attempts, [4 /* DEADLINE_EXCEEDED */, "answered"]);
  assert.equal(refreshed.refreshTokenRotated, true);
  assert.notEqual(refreshed.refreshToken, created.refreshToken);
  assert.ok(await client.validateAccessToken(refreshed.accessToken));

  // After the grace the browser's cookie is the successor the repeat returned: it refreshes.
  await new Promise((resolve) => setTimeout(resolve, 2100));
  const next = await client.refreshSession(refreshed.refreshToken);
  assert.ok(next, "the cookie the repeat handed out is the session's current one");
  const text = await metrics(server);
  assert.equal(sample(text, "barazo_session_sessions_total", { event: "refresh_token_reused" }), 0);
});

test("refreshRetry: false leaves a lost refresh to the caller", async (t) => {
  const { proxy, server } = await slowStack(t);
  const client = createSessionClient({
    address: server.addr,
    validationCache: false,
    timeoutMs: { refreshSession: 300 },
    refreshRetry: false,
  });
  t.after(() => client.close());
  const created = await client.createSession(uniqueDid(), "alice.test");
  proxy.delayMs = 400;
  await assert.rejects(client.refreshSession(created.refreshToken), (error) => error.code === "deadline_exceeded");
});
