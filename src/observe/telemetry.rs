//! Logs and traces.
//!
//! - Logs: `tracing` events on stderr, human-readable or JSON (`RUST_LOG` filters); JSON lines
//!   inside an exported span carry its `trace_id` and `span_id`.
//! - Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
//!   set, OpenTelemetry spans are exported over OTLP/gRPC, and the callers' W3C
//!   `traceparent`/`tracestate` make each RPC span a child of the caller's span. Without
//!   either variable no exporter runs and no span is made.
//!
//! Spans are made with the OpenTelemetry API directly rather than bridged from `tracing`
//! spans: the bridge cost about a third of `ValidateAccessToken` throughput, far over the
//! 15% budget; the API directly costs about 14% at 100% sampling (see BENCHMARKS.md).
//!
//! Nothing secret is ever passed to a log macro or span field in this crate: tokens and session
//! ids appear at most as the first 8 hex chars of their SHA-256 (see `session::log_prefix`).

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};
use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written to stderr. Owned here, where it is used; the configuration
/// only parses it (`--log-format`), so the configuration does not depend on what it sets up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Spans buffered for export unless `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise.
const DEFAULT_SPAN_QUEUE: usize = 16_384;

/// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
const DEFAULT_SERVICE_NAME: &str = "barazo-session";

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP trace exporter")]
pub struct TelemetryError(#[from] opentelemetry_otlp::ExporterBuildError);

/// The tracer, set once when traces are exported; `None` means tracing is off.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered. Called once on graceful shutdown.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "could not flush the last spans");
        }
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

fn resource() -> Resource {
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name(DEFAULT_SERVICE_NAME).build()
    }
}

/// Installs the global subscriber (logs, and traces when an OTLP endpoint is configured).
/// `RUST_LOG` filters logs (default `info`); spans are exported whatever the log filter.
pub fn init(format: LogFormat) -> Result<Telemetry, TelemetryError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let provider = tracer_provider()?;
    if let Some(provider) = &provider {
        // A second init (tests, or an embedding program) keeps the first tracer.
        let _ = TRACER.set(provider.tracer("barazo-session"));
    }
    // A second init keeps the first subscriber too.
    let _ = subscriber(format, rust_log.as_deref()).try_init();
    Ok(Telemetry { provider })
}

/// The `tracing` subscriber for `RUST_LOG` = `rust_log` (default `info`): log lines in
/// `format`, and h2's warnings counted ([`crate::transport::abuse`]).
///
/// Under one global level ceiling, the most verbose level any layer records: per-layer
/// filters alone give `tracing` no level hint, so every span h2, hyper and tonic open at
/// trace level would be created, looked up and closed in the registry per request (half
/// the server's CPU, BENCHMARKS.md). No span of this crate is a `tracing` span (see the
/// module docs), so nothing exported depends on it.
fn subscriber(
    format: LogFormat,
    rust_log: Option<&str>,
) -> impl tracing::Subscriber + Send + Sync + for<'a> LookupSpan<'a> {
    let filter = rust_log
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // h2's warnings are counted whatever the log level.
    let ceiling = filter
        .max_level_hint()
        .unwrap_or(LevelFilter::TRACE)
        .max(LevelFilter::WARN);
    let http2_named = rust_log.is_some_and(|value| value.contains("h2") || value.contains("hyper"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in files or log shippers.
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Human => fmt.boxed(),
        LogFormat::Json => fmt
            .json()
            .event_format(JsonWithTraceIds(
                tracing_subscriber::fmt::format().json().flatten_event(true),
            ))
            .boxed(),
    }
    .with_filter(filter)
    // The HTTP/2 layer's warnings are counted (crate::transport::abuse), not logged: anyone can cause
    // them. Unless RUST_LOG names h2 or hyper, the operator asked for them.
    .with_filter(tracing_subscriber::filter::filter_fn(move |metadata| {
        http2_named || !crate::transport::abuse::is_http2_warning(metadata)
    }));
    let http2_events = crate::transport::abuse::Http2Events.with_filter(
        tracing_subscriber::filter::filter_fn(crate::transport::abuse::is_http2_warning)
            .with_max_level_hint(LevelFilter::WARN),
    );
    tracing_subscriber::registry()
        .with(ceiling)
        .with(fmt)
        .with(http2_events)
}

/// The OTLP trace pipeline when an endpoint is configured, else `None`.
fn tracer_provider() -> Result<Option<SdkTracerProvider>, TelemetryError> {
    if !otlp_configured() {
        return Ok(None);
    }
    // The exporter reads the endpoint, headers, timeout and TLS from the standard
    // OTEL_EXPORTER_OTLP_* variables; the provider reads OTEL_TRACES_SAMPLER(_ARG),
    // defaulting to parent-based always-on.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let mut batch = BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        // The SDK's 2048 drops spans in bursts at tens of thousands of RPCs a second
        // (measured: 12% lost at 27k/s); 16384 lost none there, for ~10 MiB more RSS.
        batch = batch.with_max_queue_size(DEFAULT_SPAN_QUEUE);
    }
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch.build())
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_resource(resource())
            .with_span_processor(processor)
            .build(),
    ))
}

/// The JSON event format plus `trace_id` and `span_id` of the current span, so a log line
/// and its trace join. Lines outside any exported span carry neither.
struct JsonWithTraceIds(Format<Json>);

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = Context::map_current(|cx| cx.span().span_context().clone());
        if !ids.is_valid() {
            return self.0.format_event(ctx, writer, event);
        }
        // The inner format writes one object and a newline; reopen the object to add the ids.
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let object = line.trim_end().strip_suffix('}').unwrap_or(&line);
        writeln!(
            writer,
            "{object},\"trace_id\":\"{}\",\"span_id\":\"{}\"}}",
            ids.trace_id(),
            ids.span_id()
        )
    }
}

/// Reads W3C trace context from gRPC metadata.
struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The caller's trace context from `traceparent`/`tracestate`, or a fresh root context.
fn caller_context(metadata: &tonic::metadata::MetadataMap) -> Context {
    if metadata.get("traceparent").is_none() {
        return Context::new();
    }
    TraceContextPropagator::new()
        .extract_with_context(&Context::new(), &MetadataExtractor(metadata))
}

/// Starts the SERVER span of one RPC, a child of the caller's span when the request carries
/// `traceparent`. `None` (and no cost) when tracing is off.
pub fn start_rpc_span(
    name: &'static str,
    service: &'static str,
    method: &'static str,
    metadata: &tonic::metadata::MetadataMap,
) -> Option<Context> {
    let tracer = TRACER.get()?;
    let parent = caller_context(metadata);
    // Room for the attributes recorded later (status code, outcome, DID), so that recording
    // them does not reallocate: the builder keeps this vector.
    let mut attributes = Vec::with_capacity(6);
    attributes.extend([
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", service),
        KeyValue::new("rpc.method", method),
    ]);
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    Some(parent.with_span(span))
}

/// Ends an RPC's span with its gRPC status code and the answer's `facts`; `failed` marks it
/// an error (server-side failures only, after the OpenTelemetry RPC conventions).
pub fn end_rpc_span(cx: &Context, code: tonic::Code, failed: bool, facts: Vec<KeyValue>) {
    let span = cx.span();
    span.set_attributes(
        std::iter::once(KeyValue::new("rpc.grpc.status_code", code as i64)).chain(facts),
    );
    if failed {
        span.set_status(opentelemetry::trace::Status::error(code.description()));
    }
    span.end();
}

/// Starts a CLIENT span under the current RPC span (none outside a traced RPC).
pub fn start_client_span(
    name: &'static str,
    attributes: impl FnOnce() -> Vec<KeyValue>,
) -> Option<Context> {
    let tracer = TRACER.get()?;
    let parent = Context::current();
    if !parent.has_active_span() {
        return None;
    }
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Client)
        .with_attributes(attributes())
        .start_with_context(tracer, &parent);
    Some(parent.with_span(span))
}

/// Ends a CLIENT span, as an error when the round trip failed.
pub fn end_client_span(cx: &Context, ok: bool) {
    let span = cx.span();
    if !ok {
        span.set_status(opentelemetry::trace::Status::error(
            "valkey round trip failed",
        ));
    }
    span.end();
}

/// Sets an attribute on the current span when it is recorded; `value` is computed only then.
pub fn record<V: Into<opentelemetry::Value>>(key: &'static str, value: impl FnOnce() -> V) {
    Context::map_current(|cx| {
        let span = cx.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new(key, value()));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a span at `level` with `target` would reach the span registry of the
    /// subscriber `RUST_LOG` = `rust_log` makes.
    fn span_created(rust_log: Option<&str>, target_is_h2: bool, level: tracing::Level) -> bool {
        let subscriber = subscriber(LogFormat::Human, rust_log);
        tracing::subscriber::with_default(subscriber, || {
            // `span!` needs its target and level as constants: one call site per case.
            let span = match (target_is_h2, level) {
                (true, tracing::Level::TRACE) => {
                    tracing::trace_span!(target: "h2::proto::streams", "poll")
                }
                (true, tracing::Level::DEBUG) => {
                    tracing::debug_span!(target: "hyper::proto::h2::server", "serve")
                }
                _ => tracing::trace_span!(target: "barazo_session::x", "ours"),
            };
            !span.is_disabled()
        })
    }

    #[test]
    fn dependencies_spans_never_reach_the_registry_under_the_default_filter() {
        for rust_log in [None, Some("info"), Some("warn"), Some("not a filter =!")] {
            assert!(
                !span_created(rust_log, true, tracing::Level::TRACE),
                "{rust_log:?}: a trace-level span of h2 was created"
            );
            assert!(
                !span_created(rust_log, true, tracing::Level::DEBUG),
                "{rust_log:?}: a debug-level span of hyper was created"
            );
            assert!(!span_created(rust_log, false, tracing::Level::TRACE));
        }
        // An operator who asks for them gets them.
        assert!(span_created(Some("h2=trace"), true, tracing::Level::TRACE));
        assert!(span_created(Some("debug"), true, tracing::Level::DEBUG));
    }

    #[test]
    fn http2_warnings_are_still_counted_under_a_quieter_filter() {
        let metadata_enabled = |rust_log: &str| {
            let subscriber = subscriber(LogFormat::Human, Some(rust_log));
            tracing::subscriber::with_default(
                subscriber,
                || tracing::event_enabled!(target: "h2::proto::connection", tracing::Level::WARN),
            )
        };
        assert!(metadata_enabled("error"));
        assert!(metadata_enabled("off"));
    }
}
