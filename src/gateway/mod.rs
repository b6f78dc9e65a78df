//! The HTTP listener (`--http-listen`), for gateways that ask over HTTP rather than gRPC:
//! forward auth for nginx's `auth_request`, Caddy's `forward_auth` and Traefik's
//! `ForwardAuth` ([`forward_auth`]), and RFC 7662 token introspection for API gateways
//! ([`introspect`]).
//!
//! Both answer through the doors the gRPC listener uses: the one validation path with its
//! cache ([`crate::api::validation`]), the per-call layer (load shedding, time limit, span,
//! metrics; [`crate::api::call`]), and the policy with each caller's budget
//! ([`crate::authz`]). A caller allowed `Check` may use both endpoints; how the gateway's
//! own credential is told apart from the user's token is in [`caller`]. [`listener`]
//! serves the connections: HTTP/1.1 or HTTP/2, TLS and mTLS as the gRPC listener has them.

pub(crate) mod caller;
pub(crate) mod forward_auth;
pub(crate) mod introspect;
pub(crate) mod listener;

use crate::api::call::Calls;
use crate::api::validation::AccessTokens;
use crate::authz::AuthLayer;
use crate::observe::metrics::Metrics;
use crate::store::SessionStore;
use axum::Router;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::routing::{any, post};
use std::sync::Arc;
use tonic::metadata::MetadataMap;

/// The path of forward auth.
pub const FORWARD_AUTH_PATH: &str = "/v1/forward-auth";
/// The path of token introspection.
pub const INTROSPECT_PATH: &str = "/v1/introspect";

/// What the HTTP endpoints share with the gRPC services.
pub(crate) struct Gateway<S> {
    /// The validation path `ValidateAccessToken` and `Check` take.
    pub(crate) tokens: Arc<AccessTokens<S>>,
    /// The per-call layer (one concurrency limit with the gRPC listener's calls).
    pub(crate) calls: Arc<Calls>,
    /// The policy and the callers' budgets of the gRPC listener.
    pub(crate) authz: AuthLayer,
    /// Counts refusals made before a call starts (credentials).
    pub(crate) metrics: Arc<Metrics>,
    /// The cookie forward auth reads the user's token from, when there is no bearer header.
    pub(crate) cookie: Option<String>,
}

/// The routes of the HTTP listener over one store: anything else is 404, and introspection
/// by another method than POST is 405.
pub(crate) fn router<S: SessionStore>(gateway: Gateway<S>) -> Router {
    Router::new()
        .route(FORWARD_AUTH_PATH, any(forward_auth::handle::<S>))
        .route(INTROSPECT_PATH, post(introspect::handle::<S>))
        .with_state(Arc::new(gateway))
}

/// The caller's trace context, so the call's span joins the gateway's trace (the only
/// headers the call layer reads; copying them all would cost every call).
pub(crate) fn trace_context(headers: &HeaderMap) -> MetadataMap {
    let mut context = HeaderMap::new();
    for name in ["traceparent", "tracestate"] {
        if let Some(value) = headers.get(name) {
            context.insert(name, value.clone());
        }
    }
    MetadataMap::from_headers(context)
}

/// Answers about one user must not be reused by a cache between the gateway and us.
pub(crate) fn no_store() -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(1);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers
}

/// The answer when the call could not be decided (the store failing, the call timing out,
/// the service shedding load, or any other failure): 503 with `Retry-After`, so a gateway
/// neither lets the request through nor logs the user out.
pub(crate) fn unavailable(status: &tonic::Status) -> axum::response::Response {
    use axum::http::{HeaderValue, StatusCode, header};
    use axum::response::IntoResponse as _;
    let mut headers = no_store();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    let body = format!("{}\n", status.message());
    (StatusCode::SERVICE_UNAVAILABLE, headers, body).into_response()
}

#[cfg(test)]
pub(crate) mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    /// A header map of `pairs`, repeated names appended, as a request carries them.
    pub(crate) fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }
}
