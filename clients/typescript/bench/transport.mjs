// The transport's own cost per call, from one Node process: connect-node (what the client
// uses) against @grpc/grpc-js and a minimal gRPC call on plain node:http2 (the floor: no
// interceptors, no deadline timer, no cancellation), all with the generated protobuf-es messages, calling
// ValidateAccessToken (one valid token per call) and ValidateAccessTokens (64 tokens per
// call) with C calls in flight for D seconds each, alternating the transports R times.
// Per row: calls/s, and CPU microseconds per call in this process (`process.cpuUsage`).
// No client library code around either (no retries, spans, cache): the transport alone.
//
//   BARAZO_SESSION_BIN=../../target/release/barazo-session node bench/transport.mjs [--concurrency 64] [--seconds 5] [--rounds 2]
import { connect as http2Connect } from "node:http2";
import { cpus, loadavg } from "node:os";
import { parseArgs } from "node:util";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import grpc from "@grpc/grpc-js";
import { createSessionClient, proto } from "../dist/index.js";
import { serverBinary, startStack, uniqueDid } from "../test/support.js";

const { values } = parseArgs({
  options: {
    concurrency: { type: "string", default: "64" },
    seconds: { type: "string", default: "5" },
    rounds: { type: "string", default: "2" },
  },
});
const concurrency = Number(values.concurrency);
const seconds = Number(values.seconds);
const rounds = Number(values.rounds);
const batchSize = 64;

/** `call` by `concurrency` callers for `seconds`: calls/s and CPU µs per call. */
async function measure(label, call) {
  for (let i = 0; i < 200; i++) await call(); // warm: connection open, code optimised
  let calls = 0;
  const until = performance.now() + seconds * 1000;
  const cpu = process.cpuUsage();
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < until) {
        await call();
        calls++;
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  return {
    label,
    callsPerSecond: Math.round(calls / elapsed),
    cpuUsPerCall: Number(((used.user + used.system) / calls).toFixed(1)),
  };
}

const service = "/barazo.session.v1.SessionService/";
/** A grpc-js unary call with protobuf-es (de)serialisation, as a promise. */
function grpcJsUnary(client, method, requestSchema, responseSchema) {
  const serialize = (message) => Buffer.from(toBinary(requestSchema, message));
  const deserialize = (bytes) => fromBinary(responseSchema, bytes);
  return (message) =>
    new Promise((resolve, reject) => {
      client.makeUnaryRequest(`${service}${method}`, serialize, deserialize, message, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (error, answer) =>
        error ? reject(error) : resolve(answer),
      );
    });
}

/** A unary gRPC call on a plain node:http2 session: one frame out, one frame and trailers in. */
function http2Unary(session, method, requestSchema, responseSchema) {
  const headers = {
    ":method": "POST",
    ":path": `${service}${method}`,
    "content-type": "application/grpc+proto",
    te: "trailers",
    "grpc-timeout": "10000m",
  };
  return (message) =>
    new Promise((resolve, reject) => {
      const body = toBinary(requestSchema, message);
      const frame = Buffer.allocUnsafe(5 + body.length);
      frame[0] = 0;
      frame.writeUInt32BE(body.length, 1);
      frame.set(body, 5);
      const stream = session.request(headers);
      const chunks = [];
      stream.on("data", (chunk) => chunks.push(chunk));
      let status;
      stream.on("trailers", (trailers) => (status = trailers["grpc-status"]));
      stream.on("error", reject);
      stream.on("end", () => {
        if (status !== "0") return reject(new Error(`grpc-status ${status}`));
        const data = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
        resolve(fromBinary(responseSchema, data.subarray(5, 5 + data.readUInt32BE(1))));
      });
      stream.end(frame);
    });
}

const loadBefore = loadavg();
const stack = await startStack();
try {
  const setup = createSessionClient({ address: stack.server.addr, validationCache: false });
  const tokens = [];
  for (let i = 0; i < batchSize; i++) tokens.push((await setup.createSession(uniqueDid(), "bench.test")).accessToken);
  setup.close();

  const single = create(proto.ValidateAccessTokenRequestSchema, { accessToken: tokens[0] });
  const batch = create(proto.ValidateAccessTokensRequestSchema, { accessTokens: tokens });

  const connect = createClient(proto.SessionService, createGrpcTransport({ baseUrl: `http://${stack.server.addr}` }));
  const connectCalls = {
    unary: async () => {
      if (!(await connect.validateAccessToken(single, { timeoutMs: 10_000 })).valid) throw new Error("invalid");
    },
    batch: async () => {
      if ((await connect.validateAccessTokens(batch, { timeoutMs: 10_000 })).results.length !== batchSize) throw new Error("short");
    },
  };
  const channel = new grpc.Client(stack.server.addr, grpc.credentials.createInsecure());
  const grpcSingle = grpcJsUnary(channel, "ValidateAccessToken", proto.ValidateAccessTokenRequestSchema, proto.ValidateAccessTokenResponseSchema);
  const grpcBatch = grpcJsUnary(channel, "ValidateAccessTokens", proto.ValidateAccessTokensRequestSchema, proto.ValidateAccessTokensResponseSchema);
  const grpcJsCalls = {
    unary: async () => {
      if (!(await grpcSingle(single)).valid) throw new Error("invalid");
    },
    batch: async () => {
      if ((await grpcBatch(batch)).results.length !== batchSize) throw new Error("short");
    },
  };

  const h2 = http2Connect(`http://${stack.server.addr}`);
  const h2Single = http2Unary(h2, "ValidateAccessToken", proto.ValidateAccessTokenRequestSchema, proto.ValidateAccessTokenResponseSchema);
  const h2Batch = http2Unary(h2, "ValidateAccessTokens", proto.ValidateAccessTokensRequestSchema, proto.ValidateAccessTokensResponseSchema);
  const http2Calls = {
    unary: async () => {
      if (!(await h2Single(single)).valid) throw new Error("invalid");
    },
    batch: async () => {
      if ((await h2Batch(batch)).results.length !== batchSize) throw new Error("short");
    },
  };

  const results = [];
  for (let round = 1; round <= rounds; round++) {
    results.push({ round, ...(await measure("connect-node ValidateAccessToken", connectCalls.unary)) });
    results.push({ round, ...(await measure("grpc-js ValidateAccessToken", grpcJsCalls.unary)) });
    results.push({ round, ...(await measure("node:http2 ValidateAccessToken", http2Calls.unary)) });
    results.push({ round, ...(await measure(`connect-node ValidateAccessTokens ×${batchSize}`, connectCalls.batch)) });
    results.push({ round, ...(await measure(`grpc-js ValidateAccessTokens ×${batchSize}`, grpcJsCalls.batch)) });
    results.push({ round, ...(await measure(`node:http2 ValidateAccessTokens ×${batchSize}`, http2Calls.batch)) });
  }
  channel.close();
  h2.close();
  console.log(
    JSON.stringify(
      {
        server: serverBinary,
        concurrency,
        seconds,
        cpus: cpus().length,
        loadavgBefore: loadBefore.map((l) => l.toFixed(2)),
        loadavgAfter: loadavg().map((l) => l.toFixed(2)),
        node: process.version,
        results,
      },
      null,
      2,
    ),
  );
} finally {
  await stack.stop();
}
