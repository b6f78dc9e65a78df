// Trace propagation: with @opentelemetry/api and an SDK in the application, each call is a
// CLIENT span under the caller's active span, and the service's SERVER span (received here
// by an OTLP endpoint the test runs) is that CLIENT span's child, in the same trace.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { context, propagation, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { createSessionClient } from "../dist/index.js";
import { startCollector, SpanKind } from "./otlp.js";
import { startStack, uniqueDid } from "./support.js";

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
trace.setGlobalTracerProvider(provider);
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
const tracer = trace.getTracer("appview");

let collector;
let stack;
before(async () => {
  collector = await startCollector();
  // The SDK's batch delay is 5 s by default; export at once.
  stack = await startStack({ env: { OTEL_EXPORTER_OTLP_ENDPOINT: collector.endpoint, OTEL_BSP_SCHEDULE_DELAY: "20" } });
});
after(async () => {
  await stack.stop();
  await collector.close();
});

/** Runs `call` inside an AppView SERVER span ("GET /api/topics/123"); returns its context. */
async function inRequestSpan(call) {
  return tracer.startActiveSpan("GET /api/topics/123", { kind: 1 }, async (span) => {
    try {
      await call();
      return span.spanContext();
    } finally {
      span.end();
    }
  });
}

async function assertJoined(client, rpc, call) {
  exporter.reset();
  const request = await inRequestSpan(call);
  const clientSpan = exporter
    .getFinishedSpans()
    .find((s) => s.name === `barazo.session.v1.SessionService/${rpc}`);
  assert.ok(clientSpan, "a CLIENT span for the call");
  assert.equal(clientSpan.kind, 2 /* api.SpanKind.CLIENT */);
  assert.equal(clientSpan.spanContext().traceId, request.traceId);
  assert.equal(clientSpan.parentSpanContext?.spanId, request.spanId, "under the caller's active span");
  assert.equal(clientSpan.attributes["rpc.system"], "grpc");
  assert.equal(clientSpan.attributes["rpc.method"], rpc);
  assert.equal(clientSpan.attributes["rpc.grpc.status_code"], 0);

  const serverSpan = await collector.waitFor(
    (s) => s.traceId === request.traceId && s.kind === SpanKind.SERVER && s.name.endsWith(`/${rpc}`),
  );
  assert.equal(serverSpan.parentSpanId, clientSpan.spanContext().spanId, "the service's span is the CLIENT span's child");
  assert.equal(serverSpan.attributes["rpc.method"], rpc);
  return clientSpan;
}

test("the service's span is a child of the caller's, with W3C traceparent written by the client", async (t) => {
  // Unbatched: one ValidateAccessToken call per validation.
  const client = createSessionClient({ address: stack.server.addr, batching: false });
  t.after(() => client.close());
  const created = await client.createSession(uniqueDid(), "alice.test");
  const span = await assertJoined(client, "ValidateAccessToken", () => client.validateAccessToken(created.accessToken));
  const recorded = JSON.stringify(span.attributes);
  assert.equal(recorded.includes(created.accessToken), false, "no token in the client span");
  await assertJoined(client, "RefreshSession", () => client.refreshSession(created.refreshToken));
});

test("with the application's registered propagator the headers come from it, with the same result", async (t) => {
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  t.after(() => propagation.disable());
  const client = createSessionClient({ address: stack.server.addr });
  t.after(() => client.close());
  const created = await client.createSession(uniqueDid(), "alice.test");
  // Batched (the default): a lone validation is a batch of one, traced the same way.
  const span = await assertJoined(client, "ValidateAccessTokens", () => client.validateAccessToken(created.accessToken));
  assert.equal(span.attributes["barazo.batch_size"], 1);
});

test("a batch call is one CLIENT span: under the first caller's span, linked to the other callers' spans", async (t) => {
  const client = createSessionClient({ address: stack.server.addr, validationCache: false });
  t.after(() => client.close());
  const sessions = [
    await client.createSession(uniqueDid(), "alice.test"),
    await client.createSession(uniqueDid(), "bob.test"),
    await client.createSession(uniqueDid(), "carol.test"),
  ];
  exporter.reset();
  // Three requests whose validations fall in one turn.
  const requests = await Promise.all(sessions.map((s) => inRequestSpan(() => client.validateAccessToken(s.accessToken))));
  const batches = exporter.getFinishedSpans().filter((s) => s.name.endsWith("/ValidateAccessTokens"));
  assert.equal(batches.length, 1, "one span for the one call");
  const [batch] = batches;
  assert.equal(batch.kind, 2 /* CLIENT */);
  assert.equal(batch.attributes["barazo.batch_size"], 3);
  assert.equal(batch.parentSpanContext?.spanId, requests[0].spanId, "under the first caller's span");
  assert.equal(batch.spanContext().traceId, requests[0].traceId);
  assert.deepEqual(
    batch.links.map((l) => l.context.spanId),
    [requests[1].spanId, requests[2].spanId],
    "the other callers' spans, linked",
  );
  const serverSpan = await collector.waitFor(
    (s) => s.traceId === requests[0].traceId && s.kind === SpanKind.SERVER && s.name.endsWith("/ValidateAccessTokens"),
  );
  assert.equal(serverSpan.parentSpanId, batch.spanContext().spanId, "the service's span is the batch span's child");
});

test("tracing: false sends no trace context and makes no span", async (t) => {
  const client = createSessionClient({ address: stack.server.addr, tracing: false });
  t.after(() => client.close());
  const did = uniqueDid();
  exporter.reset();
  const request = await inRequestSpan(() => client.createSession(did, "alice.test"));
  assert.deepEqual(
    exporter.getFinishedSpans().map((s) => s.name),
    ["GET /api/topics/123"],
  );
  // The service still traces the call, in a trace of its own.
  const serverSpan = await collector.waitFor(
    (s) => s.kind === SpanKind.SERVER && s.name.endsWith("/CreateSession") && s.attributes["user.id"] === did,
  );
  assert.notEqual(serverSpan.traceId, request.traceId);
  assert.equal(serverSpan.parentSpanId, "");
});
