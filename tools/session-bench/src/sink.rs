//! An OTLP/gRPC trace receiver that accepts exports without decoding their spans.
//!
//! The tracing-cost comparison must charge the server for making and exporting spans, not
//! for a collector's work: on a 2-core machine a receiver that decodes every span competes
//! with the server for CPU (production collectors run elsewhere). So the request message is
//! read as an empty protobuf message, whose decoder skips every field unparsed.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// `ExportTraceServiceRequest`, down to the spans.
#[derive(Clone, PartialEq, prost::Message)]
struct Skipped {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}

/// `ResourceSpans` with only `scope_spans` (field 2) read.
#[derive(Clone, PartialEq, prost::Message)]
struct ResourceSpans {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
}

/// `ScopeSpans` with only `spans` (field 2) read, each span left unparsed.
#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpans {
    #[prost(message, repeated, tag = "2")]
    spans: Vec<Unparsed>,
}

/// Any message, its fields skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct Unparsed {}

/// Counts the export requests and spans it accepts.
#[derive(Clone, Default)]
pub struct Sink {
    exports: Arc<AtomicU64>,
    spans: Arc<AtomicU64>,
}

impl tonic::server::NamedService for Sink {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

/// The unary `Export` method.
struct Export(Sink);

impl tonic::server::UnaryService<Skipped> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<Skipped>) -> Self::Future {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.exports.fetch_add(1, Ordering::Relaxed);
        self.0.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Box::pin(async {
            Ok(Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        })
    }
}

impl<B> Service<http::Request<B>> for Sink
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let sink = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                ExportTraceServiceResponse,
                Skipped,
            >::default());
            Ok(grpc.unary(Export(sink), request).await)
        })
    }
}

impl Sink {
    /// Starts the receiver on a loopback ephemeral port; returns it and its endpoint URL.
    pub fn start() -> std::io::Result<(Self, String)> {
        let incoming = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = incoming.local_addr()?;
        let sink = Self::default();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(sink.clone())
                .serve_with_incoming(incoming),
        );
        Ok((sink, format!("http://{addr}")))
    }

    /// Export requests accepted so far.
    pub fn exports(&self) -> u64 {
        self.exports.load(Ordering::Relaxed)
    }

    /// Spans received so far.
    pub fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }
}
