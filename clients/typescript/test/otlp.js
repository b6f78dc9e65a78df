// A minimal OTLP/gRPC trace collector endpoint (h2c), standing in for an OpenTelemetry
// Collector: it decodes just the span fields the tests look at from each Export request.
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { createServer } from "node:http2";

const EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/** The length-delimited fields `number` of a message, each as a reader of its own. */
function* nested(bytes, number) {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === number && wireType === WireType.LengthDelimited) {
      yield reader.bytes();
    } else {
      reader.skip(wireType, field);
    }
  }
}

const hex = (bytes) => Buffer.from(bytes).toString("hex");

/** opentelemetry.proto.trace.v1.Span: ids, name, kind and string attributes. */
function decodeSpan(bytes) {
  const span = { traceId: "", spanId: "", parentSpanId: "", name: "", kind: 0, attributes: {} };
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1) span.traceId = hex(reader.bytes());
    else if (field === 2) span.spanId = hex(reader.bytes());
    else if (field === 4) span.parentSpanId = hex(reader.bytes());
    else if (field === 5) span.name = reader.string();
    else if (field === 6) span.kind = reader.int32();
    else if (field === 9) {
      // KeyValue { key = 1; AnyValue value = 2 { string_value = 1 } }
      const kv = new BinaryReader(reader.bytes());
      let key = "";
      let value = "";
      while (kv.pos < kv.len) {
        const [f, w] = kv.tag();
        if (f === 1) key = kv.string();
        else if (f === 2) {
          for (const s of nested(kv.bytes(), 1)) value = new TextDecoder().decode(s);
        } else kv.skip(w, f);
      }
      span.attributes[key] = value;
    } else reader.skip(wireType, field);
  }
  return span;
}

/** Span kinds as OTLP numbers them. */
export const SpanKind = { SERVER: 2, CLIENT: 3 };

/** Starts the collector on 127.0.0.1:0; `endpoint` is its URL, `waitFor(predicate)` a span. */
export async function startCollector() {
  const spans = [];
  const waiters = [];
  const server = createServer();
  // The service under test is stopped while its exporter may still be connected: a reset
  // connection or stream is its going away, not a failure of the test.
  server.on("session", (session) => session.on("error", () => {}));
  server.on("stream", (stream, headers) => {
    stream.on("error", () => {});
    const chunks = [];
    stream.on("data", (chunk) => chunks.push(chunk));
    stream.on("end", () => {
      const body = Buffer.concat(chunks);
      // Uncompressed gRPC frames only: the service sends no grpc-encoding unless configured to.
      if (headers[":path"] === EXPORT && body.length >= 5 && body[0] === 0) {
        const message = body.subarray(5, 5 + body.readUInt32BE(1));
        for (const resourceSpans of nested(message, 1)) {
          for (const scopeSpans of nested(resourceSpans, 2)) {
            for (const span of nested(scopeSpans, 2)) spans.push(decodeSpan(span));
          }
        }
        for (const waiter of [...waiters]) waiter();
      }
      // An empty ExportTraceServiceResponse, then grpc-status 0 in the trailers.
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      stream.end(Buffer.alloc(5));
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    endpoint: `http://127.0.0.1:${server.address().port}`,
    spans,
    /** Resolves with the first span exported (so far or later) that `predicate` accepts. */
    waitFor(predicate) {
      return new Promise((resolve) => {
        const check = () => {
          const found = spans.find(predicate);
          if (found === undefined) return false;
          waiters.splice(waiters.indexOf(check), 1);
          resolve(found);
          return true;
        };
        waiters.push(check);
        check();
      });
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}
