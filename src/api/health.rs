//! The `grpc.health.v1` status: `SERVING` only while the store answers.
//!
//! A background task probes the store on an interval and publishes changes. Its probe also
//! wakes the Valkey connection after an outage, so the service recovers without traffic.

use crate::observe::metrics::Metrics;
use crate::proto::session_service_server::SERVICE_NAME;
use crate::rpc::EXT_AUTHZ_SERVICE;
use crate::store::SessionStore;
use std::sync::Arc;
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Service names whose status is published: the server as a whole (""), the session
/// service and the ext_authz service (an Envoy cluster's `grpc_health_check` may name it),
/// which orchestrators and grpcurl may ask about by name. Both need the store.
const SERVICES: [&str; 3] = ["", SERVICE_NAME, EXT_AUTHZ_SERVICE];

/// A health service name that reports `SERVING` for as long as the process runs, whatever
/// the store does: for liveness probes over `grpc.health.v1`, which must not restart pods
/// because Valkey is down.
pub const LIVENESS: &str = "liveness";

/// Marks the process alive (see [`LIVENESS`]).
pub async fn publish_alive(reporter: &HealthReporter) {
    reporter
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;
}

/// Publishes `status` for every service name this server reports on.
pub async fn publish(reporter: &HealthReporter, status: ServingStatus) {
    for service in SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Says goodbye on shutdown: publishes `NOT_SERVING` so load balancers stop sending, then
/// drops the statuses, which ends every open `Watch` stream. Without that, a client watching
/// health would hold graceful shutdown open until the drain timeout.
pub async fn withdraw(mut reporter: HealthReporter) {
    publish(&reporter, ServingStatus::NotServing).await;
    for service in SERVICES.into_iter().chain([LIVENESS]) {
        reporter.clear_service_status(service).await;
    }
}

/// Pings the store every `interval` and publishes the result when it changes. Runs until
/// the task is dropped.
pub async fn monitor<S: SessionStore>(
    store: Arc<S>,
    reporter: HealthReporter,
    metrics: Arc<Metrics>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        ticker.tick().await;
        let (status, failure) = match store.ping().await {
            Ok(()) => (ServingStatus::Serving, None),
            Err(err) => (ServingStatus::NotServing, Some(err)),
        };
        metrics.set_store_up(failure.is_none());
        if last != Some(status) {
            match &failure {
                None => tracing::info!("session store answers: SERVING"),
                Some(err) => {
                    tracing::warn!(error = %crate::api::error::chain(err), "session store does not answer: NOT_SERVING")
                }
            }
            publish(&reporter, status).await;
            last = Some(status);
        }
    }
}
