// validateAccessToken with and without the validation cache, in one run: N valid tokens
// validated by C concurrent callers for D seconds each way; calls/s and latency percentiles
// as the caller sees them (the promise, from call to answer). Then R revocations made by
// another client: the time from its deleteSession answer to the caching client's event
// (negative: the event came first).
//
//   npm run build && node bench/validate.mjs [--tokens 1000] [--concurrency 64] [--seconds 10] [--revocations 200]
//
// Deadlines are raised to 10 s so that a slow machine shows as latency, not as errors.
// Starts its own valkey-server and barazo-session ($BARAZO_SESSION_BIN, else the debug build
// target/debug/barazo-session: say which in the figures), like the tests do.
import { loadavg, cpus } from "node:os";
import { parseArgs } from "node:util";
import { createSessionClient } from "../dist/index.js";
import { serverBinary, startStack, uniqueDid } from "../test/support.js";

const { values } = parseArgs({
  options: {
    tokens: { type: "string", default: "1000" },
    concurrency: { type: "string", default: "64" },
    seconds: { type: "string", default: "10" },
    revocations: { type: "string", default: "200" },
  },
});
const tokens = Number(values.tokens);
const concurrency = Number(values.concurrency);
const seconds = Number(values.seconds);
const revocations = Number(values.revocations);
const timeoutMs = { validateAccessToken: 10_000, createSession: 10_000, deleteSession: 10_000 };

/** Latencies in whole microseconds, up to 1 s (slower ones count as 1 s). */
class Histogram {
  counts = new Uint32Array(1_000_001);
  total = 0;
  record(us) {
    this.counts[Math.min(1_000_000, Math.max(0, Math.round(us)))]++;
    this.total++;
  }
  percentile(p) {
    const rank = Math.ceil((p / 100) * this.total);
    let seen = 0;
    for (let us = 0; us < this.counts.length; us++) {
      seen += this.counts[us];
      if (seen >= rank) return us;
    }
    return Number.NaN;
  }
}

async function run(label, client, sessions, wire) {
  // Warm: every token validated once (the cache fills; the connection is open either way).
  for (const s of sessions) {
    if ((await client.validateAccessToken(s.accessToken)) === undefined) throw new Error("a token did not validate");
  }
  const before = wire.calls;
  const histogram = new Histogram();
  let errors = 0;
  const until = performance.now() + seconds * 1000;
  let next = 0;
  async function caller() {
    while (performance.now() < until) {
      const token = sessions[next++ % sessions.length].accessToken;
      const start = performance.now();
      try {
        if ((await client.validateAccessToken(token)) === undefined) errors++;
      } catch {
        errors++;
      }
      histogram.record((performance.now() - start) * 1000);
    }
  }
  const started = performance.now();
  await Promise.all(Array.from({ length: concurrency }, caller));
  const elapsed = (performance.now() - started) / 1000;
  return {
    label,
    callsPerSecond: Math.round(histogram.total / elapsed),
    p50us: histogram.percentile(50),
    p99us: histogram.percentile(99),
    calls: histogram.total,
    networkCalls: wire.calls - before,
    errors,
  };
}

function counter() {
  const wire = { calls: 0 };
  wire.interceptor = (next) => async (request) => {
    if (request.method.name === "ValidateAccessToken") wire.calls++;
    return next(request);
  };
  return wire;
}

const loadBefore = loadavg();
const stack = await startStack();
try {
  const setup = createSessionClient({ address: stack.server.addr, timeoutMs });
  const sessions = [];
  for (let i = 0; i < tokens; i++) sessions.push(await setup.createSession(uniqueDid(), "bench.test"));
  setup.close();

  const results = [];
  let propagation;
  {
    const wire = counter();
    const client = createSessionClient({ address: stack.server.addr, timeoutMs, interceptors: [wire.interceptor] });
    results.push(await run("cache off", client, sessions, wire));
    client.close();
  }
  {
    const wire = counter();
    let live;
    const isLive = new Promise((resolve) => (live = resolve));
    const waiters = new Map();
    const seen = new Set(); // session keys named before anyone waited for them
    const client = createSessionClient({
      address: stack.server.addr,
      timeoutMs,
      interceptors: [wire.interceptor],
      validationCache: {
        onEvent: (e) => {
          if (e.type === "reset") live();
          if (e.type !== "sessionKey") return;
          const waiter = waiters.get(e.sessionKey);
          if (waiter === undefined) seen.add(e.sessionKey);
          else waiter(performance.now());
        },
      },
    });
    await isLive;
    results.push(await run("cache on", client, sessions, wire));

    // Revocation propagation: another client (another AppView process) logs a session out.
    const other = createSessionClient({ address: stack.server.addr, timeoutMs });
    const delays = [];
    for (let i = 0; i < revocations; i++) {
      const session = await other.createSession(uniqueDid(), "bench.test");
      // The creation's own event first: it would drop the answer cached below.
      if (!seen.has(session.sessionKey)) {
        await new Promise((resolve) => waiters.set(session.sessionKey, resolve));
      }
      seen.delete(session.sessionKey);
      await client.validateAccessToken(session.accessToken);
      const event = new Promise((resolve) => waiters.set(session.sessionKey, resolve));
      await other.deleteSession(session.refreshToken);
      const answered = performance.now();
      delays.push((await event) - answered);
      waiters.delete(session.sessionKey);
      if ((await client.validateAccessToken(session.accessToken)) !== undefined) throw new Error("stale answer");
    }
    other.close();
    client.close();
    delays.sort((a, b) => a - b);
    const at = (p) => delays[Math.min(delays.length - 1, Math.ceil((p / 100) * delays.length) - 1)].toFixed(2);
    if (revocations > 0) {
      propagation = { revocations, msFromDeleteAnswerToEvent: { p50: at(50), p99: at(99), max: at(100) } };
    }
  }
  console.log(
    JSON.stringify(
      {
        server: serverBinary,
        tokens,
        concurrency,
        seconds,
        cpus: cpus().length,
        loadavgBefore: loadBefore.map((l) => l.toFixed(2)),
        loadavgAfter: loadavg().map((l) => l.toFixed(2)),
        node: process.version,
        results,
        propagation,
      },
      null,
      2,
    ),
  );
} finally {
  await stack.stop();
}
