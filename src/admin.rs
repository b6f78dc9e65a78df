//! The admin HTTP listener: `/metrics` for Prometheus, `/livez` and `/readyz` for probes that
//! cannot speak gRPC (or TLS to the gRPC port). Off unless `--metrics-listen` is set.

use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;

/// The OpenMetrics text format, which Prometheus scrapes natively.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The admin routes over the service's metrics.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/livez", get(live))
        .route("/readyz", get(ready))
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], metrics.encode())
}

/// The process runs and answers HTTP: nothing more is checked, so an orchestrator restarts
/// the service only when it is truly stuck, not when Valkey is down.
async fn live() -> &'static str {
    "ok\n"
}

/// Ready while the store answers its health probes, like `grpc.health.v1`, and not once
/// shutdown has begun.
async fn ready(State(metrics): State<Arc<Metrics>>) -> (StatusCode, &'static str) {
    if metrics.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "session store unavailable\n",
        )
    }
}
