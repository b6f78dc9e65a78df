//! Requests that cannot be decoded: junk bytes, a wrong wire type, invalid UTF-8 in a
//! string field, a compressed flag without `grpc-encoding`, a missing or truncated message.
//!
//! tonic answers these `INTERNAL` before any handler runs, so they never reached the call
//! layer ([`crate::api::call`]): no metric, no log line, and a code that says "server fault" for
//! what is the caller's mistake. This layer, innermost around the routes, turns such an
//! answer into `INVALID_ARGUMENT` (the Status comes from [`crate::api::error`]), counts it in the
//! RPC metrics under its method and that code, and logs it once at debug level (anyone who
//! reaches the port can send junk, so it must not flood the log).

use crate::api::error::RequestError;
use crate::observe::metrics::Metrics;
use crate::rpc::Rpc;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::codegen::{Service, http};
use tonic::{Code, Status};

/// What tonic 0.14 (and prost) write into the `INTERNAL` status of a request it could not
/// decode. Matched by prefix: the rest names the field or the flag. The integration test
/// `hostile::junk_is_invalid_argument_and_counted` pins these against the tonic in use.
const DECODE_FAILURES: &[&str] = &[
    // prost: undecodable bytes, a wrong wire type, invalid UTF-8 in a string field.
    "failed to decode Protobuf message",
    // tonic: the compressed flag without grpc-encoding, or a flag other than 0 and 1.
    "protocol error: received message with compressed-flag but no grpc-encoding",
    "protocol error: received message with invalid compression flag",
    // tonic: a body without a whole message.
    "Missing request message.",
    "Unexpected EOF decoding stream.",
];

/// Whether `status` is tonic's answer to a request it could not decode.
fn is_decode_failure(status: &Status) -> bool {
    status.code() == Code::Internal
        && DECODE_FAILURES
            .iter()
            .any(|prefix| status.message().starts_with(prefix))
}

/// Tower layer that answers undecodable requests `INVALID_ARGUMENT` and counts them.
#[derive(Clone)]
pub struct UndecodableLayer {
    metrics: Arc<Metrics>,
}

impl UndecodableLayer {
    /// Counts refusals in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower_layer::Layer<S> for UndecodableLayer {
    type Service = Undecodable<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Undecodable {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service behind an [`UndecodableLayer`].
#[derive(Clone)]
pub struct Undecodable<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The RPC a request path names, if any (a session RPC or ext_authz `Check`; other
/// services are not in the RPC metrics, so only their code is corrected).
fn rpc_of(path: &str) -> Option<Rpc> {
    Rpc::from_path(path)
}

pin_project_lite::pin_project! {
    /// The inner service's future, with what is needed to correct and count its answer.
    pub struct UndecodableFuture<F> {
        #[pin]
        inner: F,
        rpc: Option<Rpc>,
        started: Instant,
        metrics: Arc<Metrics>,
    }
}

impl<F, E> Future for UndecodableFuture<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.inner.poll(cx) {
            Poll::Ready(Ok(response)) => response,
            other => return other,
        };
        // A successful answer carries no grpc-status in its headers: one lookup, no more.
        let Some(status) = Status::from_header_map(response.headers()) else {
            return Poll::Ready(Ok(response));
        };
        if !is_decode_failure(&status) {
            return Poll::Ready(Ok(response));
        }
        let refused = RequestError::Undecodable;
        tracing::debug!(
            rpc.method = this.rpc.map_or("unknown", Rpc::method),
            error = status.message(),
            "rpc refused: the request could not be decoded"
        );
        if let Some(rpc) = this.rpc {
            this.metrics
                .rpc(&rpc.labels(refused.code()), this.started.elapsed());
            if rpc.validates() {
                // No answer at all, as call.rs counts a failed validation.
                this.metrics.validation("error");
            }
        }
        Poll::Ready(Ok(Status::from(refused).into_http()))
    }
}

impl<S, B> Service<http::Request<B>> for Undecodable<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = UndecodableFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        UndecodableFuture {
            rpc: rpc_of(request.uri().path()),
            started: Instant::now(),
            metrics: self.metrics.clone(),
            inner: self.inner.call(request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tonics_decode_failures_are_the_callers() {
        for message in [
            "failed to decode Protobuf message: ValidateAccessTokenRequest.access_token: invalid string value: data is not UTF-8 encoded",
            "failed to decode Protobuf message: invalid wire type value: 7",
            "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            "Missing request message.",
        ] {
            assert!(is_decode_failure(&Status::internal(message)), "{message}");
        }
        // The service's own INTERNAL answers stay server faults.
        for status in [
            Status::from(RequestError::Store(crate::store::StoreError::Protocol(
                "x".into(),
            ))),
            crate::rpc::polled_after_completion(),
            Status::invalid_argument("failed to decode Protobuf message"),
        ] {
            assert!(!is_decode_failure(&status), "{status:?}");
        }
    }

    #[test]
    fn only_the_services_rpcs_are_counted() {
        assert_eq!(
            rpc_of("/barazo.session.v1.SessionService/ValidateAccessToken"),
            Some(Rpc::ValidateAccessToken)
        );
        assert_eq!(rpc_of("/grpc.health.v1.Health/Check"), None);
        assert_eq!(rpc_of("/barazo.session.v1.SessionService/Nope"), None);
        assert_eq!(
            rpc_of("/envoy.service.auth.v3.Authorization/Check"),
            Some(Rpc::Check)
        );
    }
}
