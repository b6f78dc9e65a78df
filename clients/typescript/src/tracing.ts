// OpenTelemetry, when the application has `@opentelemetry/api` (an optional peer
// dependency): a CLIENT span per call, and W3C trace context sent with every attempt.
import { Code } from "@connectrpc/connect";
import type { Attributes, Context, Link } from "@opentelemetry/api";
import { codeOf } from "./errors.js";

type Api = typeof import("@opentelemetry/api");

/** The application's OpenTelemetry API, or undefined when it has none installed. */
const api: Api | undefined = await import("@opentelemetry/api").catch(() => undefined);

/** Codes that are the service's own failure; the others are answers about the request. */
const serverFailures = new Set<Code>([
  Code.Unknown,
  Code.DeadlineExceeded,
  Code.Unimplemented,
  Code.Internal,
  Code.Unavailable,
  Code.DataLoss,
]);

/** Where the client sends its calls, for the span's `server.*` attributes. */
export interface Peer {
  address: string;
  port: number;
}

/** The active trace context now (to parent a batch's span on), or undefined without tracing. */
export function activeContext(enabled: boolean): unknown {
  return api === undefined || !enabled ? undefined : api.context.active();
}

/**
 * The callers of one batch call: their trace contexts (from `activeContext`), in order, and
 * how many tokens the call carries.
 */
export interface BatchTrace {
  contexts: unknown[];
  size: number;
}

/**
 * Runs one logical call (every attempt of it) inside a CLIENT span that is a child of the
 * active context, and makes that span the active context for the attempts, so `inject`
 * sends its id. Without the API (or with tracing off), just runs the call.
 *
 * A batch call has one span for all its callers: the first caller's span is its parent (the
 * service's span joins that trace), the other callers' spans are its links, and
 * `barazo.batch_size` (as the service names it) says how many tokens it carried.
 */
export async function traced<T>(
  rpc: string,
  peer: Peer,
  enabled: boolean,
  call: () => Promise<T>,
  batch?: BatchTrace,
): Promise<T> {
  if (api === undefined || !enabled) {
    return call();
  }
  const parent = (batch?.contexts[0] as Context | undefined) ?? api.context.active();
  const attributes: Attributes = {
    "rpc.system": "grpc",
    "rpc.service": "barazo.session.v1.SessionService",
    "rpc.method": rpc,
    "server.address": peer.address,
    "server.port": peer.port,
  };
  if (batch !== undefined) {
    attributes["barazo.batch_size"] = batch.size;
  }
  const span = api.trace.getTracer("@barazo/session-client").startSpan(
    `barazo.session.v1.SessionService/${rpc}`,
    batch === undefined
      ? { kind: api.SpanKind.CLIENT, attributes }
      : { kind: api.SpanKind.CLIENT, attributes, links: links(batch.contexts, parent) },
    parent,
  );
  try {
    const answer = await api.context.with(api.trace.setSpan(parent, span), call);
    span.setAttribute("rpc.grpc.status_code", 0);
    return answer;
  } catch (error) {
    const code = codeOf(error);
    span.setAttribute("rpc.grpc.status_code", code);
    if (serverFailures.has(code)) {
      span.setStatus({ code: api.SpanStatusCode.ERROR });
    }
    throw error;
  } finally {
    span.end();
  }
}

/** The other callers' spans of a batch (each once; not the parent's), as span links. */
function links(contexts: unknown[], parent: Context): Link[] {
  const own = api!.trace.getSpanContext(parent)?.spanId;
  const seen = new Set<string>(own === undefined ? [] : [own]);
  const found: Link[] = [];
  for (const context of contexts) {
    const spanContext = api!.trace.getSpanContext(context as Context);
    if (spanContext === undefined || !api!.isSpanContextValid(spanContext) || seen.has(spanContext.spanId)) continue;
    seen.add(spanContext.spanId);
    found.push({ context: spanContext });
  }
  return found;
}

/**
 * Adds the active context's trace headers: through the application's registered
 * propagator (its choice of formats, baggage), and W3C `traceparent`/`tracestate` directly
 * when that propagator wrote none (no SDK registered one), so the service always joins the
 * caller's trace.
 */
export function injectTraceContext(headers: Headers): void {
  if (api === undefined) {
    return;
  }
  const active = api.context.active();
  api.propagation.inject(active, headers, {
    set: (carrier, key, value) => carrier.set(key, value),
  });
  if (headers.has("traceparent")) {
    return;
  }
  const spanContext = api.trace.getSpanContext(active);
  if (spanContext === undefined || !api.isSpanContextValid(spanContext)) {
    return;
  }
  const flags = (spanContext.traceFlags & 0xff).toString(16).padStart(2, "0");
  headers.set("traceparent", `00-${spanContext.traceId}-${spanContext.spanId}-${flags}`);
  const state = spanContext.traceState?.serialize();
  if (state) {
    headers.set("tracestate", state);
  }
}
