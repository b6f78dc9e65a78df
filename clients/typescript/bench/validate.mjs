// validateAccessToken from one Node process, in one run, each way the AppView could do it:
//
//   in-process ioredis        the seed's own code: GET <prefix>access:<sha256 hex> → sid,
//                             GET <prefix>data:<sid>, JSON.parse, on the same Valkey
//   cache off, batching off   one ValidateAccessToken call per validation
//   cache off, batching on    the turn's validations in one ValidateAccessTokens call
//   cache on                  the validation cache (batching on for its misses)
//
// N valid tokens (sessions the service created) validated by C concurrent callers for D
// seconds per row; then a lone caller (concurrency 1, cache off), batched and unbatched calls
// interleaved in one loop so both see the same machine. Per
// row: calls/s, latency percentiles as the caller sees them (the promise, from call to
// answer), and CPU microseconds per validation in this Node process (`process.cpuUsage`
// over the row, divided by validations: what the AppView's event loop pays). Then R
// revocations made by another client: the time from its deleteSession answer to the caching
// client's event (negative: the event came first).
//
//   npm run build && BARAZO_SESSION_BIN=../../target/release/barazo-session \
//     node bench/validate.mjs [--tokens 1000] [--concurrency 64] [--seconds 10] [--rounds 1] [--revocations 200]
//
// Deadlines are raised to 10 s so that a slow machine shows as latency, not as errors.
// Starts its own valkey-server and barazo-session ($BARAZO_SESSION_BIN, else the debug build
// target/debug/barazo-session: say which in the figures), like the tests do.
import { createHash } from "node:crypto";
import { cpus, loadavg } from "node:os";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import { createSessionClient } from "../dist/index.js";
import { serverBinary, startStack, uniqueDid } from "../test/support.js";

const { values } = parseArgs({
  options: {
    tokens: { type: "string", default: "1000" },
    concurrency: { type: "string", default: "64" },
    seconds: { type: "string", default: "10" },
    rounds: { type: "string", default: "1" },
    revocations: { type: "string", default: "200" },
  },
});
const tokens = Number(values.tokens);
const concurrency = Number(values.concurrency);
const seconds = Number(values.seconds);
const rounds = Number(values.rounds);
const revocations = Number(values.revocations);
const timeoutMs = { validateAccessToken: 10_000, createSession: 10_000, deleteSession: 10_000 };
/** The service's default key prefix (--key-prefix). */
const prefix = "barazo:session:";

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

/**
 * One row: `validate` by `callers` concurrent callers for `seconds`, after one warm-up pass
 * over every token (the cache fills; connections are open either way).
 */
async function run(label, validate, sessions, callers, wire) {
  for (const s of sessions) {
    if ((await validate(s.accessToken)) === undefined) throw new Error(`${label}: a token did not validate`);
  }
  const before = { ...wire };
  const histogram = new Histogram();
  let errors = 0;
  const until = performance.now() + seconds * 1000;
  let next = 0;
  async function caller() {
    while (performance.now() < until) {
      const token = sessions[next++ % sessions.length].accessToken;
      const start = performance.now();
      try {
        if ((await validate(token)) === undefined) errors++;
      } catch {
        errors++;
      }
      histogram.record((performance.now() - start) * 1000);
    }
  }
  const cpu = process.cpuUsage();
  const started = performance.now();
  await Promise.all(Array.from({ length: callers }, caller));
  const elapsed = (performance.now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  const rpcs = wire.unary - before.unary + wire.batches - before.batches;
  return {
    label,
    concurrency: callers,
    callsPerSecond: Math.round(histogram.total / elapsed),
    p50us: histogram.percentile(50),
    p99us: histogram.percentile(99),
    cpuUsPerValidation: Number(((used.user + used.system) / histogram.total).toFixed(1)),
    calls: histogram.total,
    rpcs,
    tokensPerRpc: rpcs === 0 ? 0 : Number(((wire.tokens - before.tokens) / rpcs).toFixed(1)),
    errors,
  };
}

/**
 * The lone caller, two ways in one loop: a call through `a`, then one through `b`, and so on
 * for `seconds`, so both see the same machine (a loaded machine's scheduling noise is larger
 * than what batching adds to one call). CPU per call from `process.cpuUsage` around each call:
 * with one caller, nothing else runs in the process meanwhile.
 */
async function interleaved(a, b, sessions) {
  const rows = [a, b].map((way) => ({ ...way, histogram: new Histogram(), cpu: 0, errors: 0 }));
  for (const way of rows) {
    for (const s of sessions) {
      if ((await way.validate(s.accessToken)) === undefined) throw new Error(`${way.label}: a token did not validate`);
    }
    way.before = { ...way.wire };
  }
  const until = performance.now() + seconds * 1000;
  let next = 0;
  while (performance.now() < until) {
    for (const way of rows) {
      const token = sessions[next++ % sessions.length].accessToken;
      const cpu = process.cpuUsage();
      const start = performance.now();
      try {
        if ((await way.validate(token)) === undefined) way.errors++;
      } catch {
        way.errors++;
      }
      way.histogram.record((performance.now() - start) * 1000);
      const used = process.cpuUsage(cpu);
      way.cpu += used.user + used.system;
    }
  }
  return rows.map((way) => {
    const rpcs = way.wire.unary - way.before.unary + way.wire.batches - way.before.batches;
    return {
      label: way.label,
      concurrency: 1,
      callsPerSecond: Math.round(way.histogram.total / seconds),
      p50us: way.histogram.percentile(50),
      p99us: way.histogram.percentile(99),
      cpuUsPerValidation: Number((way.cpu / way.histogram.total).toFixed(1)),
      calls: way.histogram.total,
      rpcs,
      tokensPerRpc: rpcs === 0 ? 0 : Number(((way.wire.tokens - way.before.tokens) / rpcs).toFixed(1)),
      errors: way.errors,
    };
  });
}

/** Counts the client's validation RPCs on the wire, and the tokens they carry. */
function counter() {
  const wire = { unary: 0, batches: 0, tokens: 0 };
  wire.interceptor = (next) => async (request) => {
    if (request.method.name === "ValidateAccessToken") {
      wire.unary++;
      wire.tokens++;
    } else if (request.method.name === "ValidateAccessTokens") {
      wire.batches++;
      wire.tokens += request.message.accessTokens.length;
    }
    return next(request);
  };
  return wire;
}

/** The seed's in-process validation, as the AppView does it today. */
function inProcess(redis) {
  return async (token) => {
    const hash = createHash("sha256").update(token).digest("hex");
    const sid = await redis.get(`${prefix}access:${hash}`);
    if (sid === null) return undefined;
    const data = await redis.get(`${prefix}data:${sid}`);
    return data === null ? undefined : JSON.parse(data);
  };
}

/** A client of the service with the counter on; resolves once its cache is live, if on. */
async function client(address, options) {
  const wire = counter();
  let live;
  const isLive = new Promise((resolve) => (live = resolve));
  const cache = options.validationCache;
  const own = createSessionClient({
    address,
    timeoutMs,
    interceptors: [wire.interceptor],
    ...options,
    ...(cache === false ? {} : { validationCache: { ...cache, onEvent: (e) => { if (e.type === "reset") live(); cache?.onEvent?.(e); } } }),
  });
  if (cache !== false) await isLive;
  return { client: own, wire };
}

const loadBefore = loadavg();
const stack = await startStack();
try {
  const setup = createSessionClient({ address: stack.server.addr, timeoutMs, validationCache: false });
  const sessions = [];
  for (let i = 0; i < tokens; i++) sessions.push(await setup.createSession(uniqueDid(), "bench.test"));
  setup.close();
  const addr = stack.server.addr;

  const results = [];
  const row = async (label, callers, options) => {
    if (options === "ioredis") {
      const redis = new Redis(stack.valkey.url);
      results.push(await run(label, inProcess(redis), sessions, callers, { unary: 0, batches: 0, tokens: 0 }));
      redis.disconnect();
      return;
    }
    const { client: own, wire } = await client(addr, options);
    results.push(await run(label, (t) => own.validateAccessToken(t), sessions, callers, wire));
    own.close();
  };
  for (let round = 1; round <= rounds; round++) {
    await row("in-process ioredis", concurrency, "ioredis");
    await row("cache off, batching off", concurrency, { validationCache: false, batching: false });
    await row("cache off, batching on", concurrency, { validationCache: false, batching: true });
    await row("cache on", concurrency, { validationCache: {} });
    await row("lone caller: in-process ioredis", 1, "ioredis");
    {
      const off = await client(addr, { validationCache: false, batching: false });
      const on = await client(addr, { validationCache: false, batching: true });
      results.push(
        ...(await interleaved(
          { label: "lone caller: cache off, batching off (interleaved)", validate: (t) => off.client.validateAccessToken(t), wire: off.wire },
          { label: "lone caller: cache off, batching on (interleaved)", validate: (t) => on.client.validateAccessToken(t), wire: on.wire },
          sessions,
        )),
      );
      off.client.close();
      on.client.close();
    }
  }

  // Revocation propagation: another client (another AppView process) logs a session out.
  let propagation;
  if (revocations > 0) {
    const waiters = new Map();
    const seen = new Set(); // session keys named before anyone waited for them
    const { client: caching } = await client(addr, {
      validationCache: {
        onEvent: (e) => {
          if (e.type !== "sessionKey") return;
          const waiter = waiters.get(e.sessionKey);
          if (waiter === undefined) seen.add(e.sessionKey);
          else waiter(performance.now());
        },
      },
    });
    const other = createSessionClient({ address: addr, timeoutMs, validationCache: false });
    const delays = [];
    for (let i = 0; i < revocations; i++) {
      const session = await other.createSession(uniqueDid(), "bench.test");
      // The creation's own event first: it would drop the answer cached below.
      if (!seen.has(session.sessionKey)) {
        await new Promise((resolve) => waiters.set(session.sessionKey, resolve));
      }
      seen.delete(session.sessionKey);
      await caching.validateAccessToken(session.accessToken);
      const event = new Promise((resolve) => waiters.set(session.sessionKey, resolve));
      await other.deleteSession(session.refreshToken);
      const answered = performance.now();
      delays.push((await event) - answered);
      waiters.delete(session.sessionKey);
      if ((await caching.validateAccessToken(session.accessToken)) !== undefined) throw new Error("stale answer");
    }
    other.close();
    caching.close();
    delays.sort((a, b) => a - b);
    const at = (p) => delays[Math.min(delays.length - 1, Math.ceil((p / 100) * delays.length) - 1)].toFixed(2);
    propagation = { revocations, msFromDeleteAnswerToEvent: { p50: at(50), p99: at(99), max: at(100) } };
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
