//! Prometheus metrics: what operators watch on a dashboard.
//!
//! Names follow the OpenTelemetry conventions translated to Prometheus (`rpc.server.call.duration`
//! in seconds becomes `rpc_server_call_duration_seconds`). Labels never carry a token, a
//! session id or a DID: only method names, status codes, outcomes and, for the cluster feeds,
//! the node ids of the primaries watched now (cleared with the feeds), so cardinality stays
//! bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

/// Labels of a session lifecycle event count (`created`, `refreshed`, `deleted`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// What happened.
    pub event: &'static str,
}

/// Bucket bounds (seconds) for calls that take well under a millisecond when healthy and up to
/// the 500 ms timeouts when not.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Labels of one RPC outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// Always `grpc`.
    pub rpc_system: &'static str,
    /// `barazo.session.v1.SessionService`.
    pub rpc_service: &'static str,
    /// The method, e.g. `ValidateAccessToken`.
    pub rpc_method: &'static str,
    /// The numeric gRPC status code (0 = OK, 5 = NOT_FOUND, 14 = UNAVAILABLE, …).
    pub rpc_grpc_status_code: i32,
}

impl RpcLabels {
    /// The labels of a gRPC call to `service`/`method` that ended with `code`.
    pub fn grpc(service: &'static str, method: &'static str, code: tonic::Code) -> Self {
        Self {
            rpc_system: "grpc",
            rpc_service: service,
            rpc_method: method,
            rpc_grpc_status_code: code as i32,
        }
    }
}

/// Labels of a validation outcome: `valid`, `invalid` or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// What the validation answered.
    pub outcome: &'static str,
}

pub use crate::domain::Revocation;

/// Labels of revoked sessions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// [`Revocation::as_str`].
    pub reason: &'static str,
}

/// Labels of one Valkey round trip.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoundTripLabels {
    /// `valkey`.
    pub db_system_name: &'static str,
    /// The script, e.g. `validate`.
    pub db_operation_name: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// Labels of the slots one cluster primary's invalidation feed watches.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeedPrimaryLabels {
    /// The primary's node id (`CLUSTER MYID`).
    pub node_id: String,
}

/// Labels of the build-info gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The crate version.
    pub version: &'static str,
    /// `debug` or `release`: a debug build is several times slower (see `profile`).
    pub profile: &'static str,
}

/// Every metric of the service, registered once at startup.
pub struct Metrics {
    registry: Registry,
    rpc_duration: Family<RpcLabels, Histogram, fn() -> Histogram>,
    validations: Family<OutcomeLabels, Counter>,
    sessions: Family<EventLabels, Counter>,
    revocations: Family<ReasonLabels, Counter>,
    round_trips: Family<RoundTripLabels, Histogram, fn() -> Histogram>,
    store_in_flight: Gauge,
    store_up: Gauge,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_invalidations: Counter,
    cache_resets: Counter,
    cache_unverified: Counter,
    cache_entries: Gauge,
    cache_feed_slots: Family<FeedPrimaryLabels, Gauge>,
    cache_feed_live: Gauge,
    /// Set at shutdown: from then on the service is not ready, whatever the store says.
    draining: std::sync::atomic::AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let rpc_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "rpc_server_call_duration",
            "Duration of RPCs handled, by method and gRPC status code",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        let validations = Family::default();
        registry.register(
            "barazo_session_validations",
            "ValidateAccessToken answers: valid, invalid, or error (no answer)",
            validations.clone(),
        );
        registry.register(
            "barazo_session_connection_events",
            "Connection-level abuse, counted instead of logged: handshake_timeout, reset_flood, protocol_error, accept_failed, idle_close, send_timeout (process-wide)",
            crate::transport::abuse::CONNECTION_EVENTS.clone(),
        );
        let sessions = Family::default();
        registry.register(
            "barazo_session_sessions",
            "Sessions created, refreshed and deleted",
            sessions.clone(),
        );
        let revocations = Family::default();
        registry.register(
            "barazo_session_revocations",
            "Sessions revoked, by reason: user, others, cap, lifetime, logout, all-for-did",
            revocations.clone(),
        );
        let round_trips = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "barazo_session_valkey_round_trip_duration",
            "Duration of Valkey round trips (one script each), by script and outcome",
            Unit::Seconds,
            round_trips.clone(),
        );
        let store_in_flight = Gauge::default();
        registry.register(
            "barazo_session_valkey_in_flight_commands",
            "Valkey round trips currently waiting for an answer on the shared connection",
            store_in_flight.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "barazo_session_store_up",
            "1 while the session store answers health probes, else 0",
            store_up.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "barazo_session_validation_cache_hits",
            "Validations answered from this replica's validation cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "barazo_session_validation_cache_misses",
            "Validations the validation cache could not answer (sent to Valkey)",
            cache_misses.clone(),
        );
        let cache_invalidations = Counter::default();
        registry.register(
            "barazo_session_validation_cache_invalidations",
            "Key invalidations received from Valkey on the validation cache's feed",
            cache_invalidations.clone(),
        );
        let cache_resets = Counter::default();
        registry.register(
            "barazo_session_validation_cache_resets",
            "Times the validation cache dropped everything: its feed broke or Valkey was flushed",
            cache_resets.clone(),
        );
        let cache_unverified = Counter::default();
        registry.register(
            "barazo_session_validation_cache_unverified",
            "Times the validation cache stayed or went off because its feed and the store's commands could not be shown to reach the same Valkey server (a failover, a reconnect, INFO refused)",
            cache_unverified.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "barazo_session_validation_cache_entries",
            "Answers held in the validation cache",
            cache_entries.clone(),
        );
        let cache_feed_live = Gauge::default();
        registry.register(
            "barazo_session_validation_cache_feed_live",
            "1 while the invalidation feed is live (connected, subscribed and shown to watch the server the store's commands reach): the validation cache may answer and WatchRevocations streams; 0 otherwise",
            cache_feed_live.clone(),
        );
        let cache_feed_slots = Family::default();
        registry.register(
            "barazo_session_validation_cache_feed_slots",
            "Valkey Cluster: the slots of each primary (by node id) whose invalidation feed is live (it serves the validation cache and WatchRevocations, and runs with the cache off too); no series while the feeds are not live",
            cache_feed_slots.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                profile: crate::observe::profile::PROFILE,
            })
            .set(1);
        registry.register(
            "barazo_session_build_info",
            "Always 1; the labels say which build runs",
            build_info,
        );
        Self {
            registry,
            rpc_duration,
            validations,
            sessions,
            revocations,
            round_trips,
            store_in_flight,
            store_up,
            cache_hits,
            cache_misses,
            cache_invalidations,
            cache_resets,
            cache_unverified,
            cache_entries,
            cache_feed_slots,
            cache_feed_live,
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Records one finished RPC.
    pub fn rpc(&self, labels: &RpcLabels, elapsed: Duration) {
        self.rpc_duration
            .get_or_create(labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one validation answer: `valid`, `invalid` or `error`.
    pub fn validation(&self, outcome: &'static str) {
        self.validations
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts `n` sessions that were `created`, `refreshed` or `deleted`.
    pub fn sessions(&self, event: &'static str, n: u64) {
        if n > 0 {
            self.sessions
                .get_or_create(&EventLabels { event })
                .inc_by(n);
        }
    }

    /// Counts `n` sessions revoked for `reason` (also as `deleted` sessions).
    pub fn revoked(&self, reason: Revocation, n: u64) {
        if n > 0 {
            self.revocations
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str(),
                })
                .inc_by(n);
            self.sessions("deleted", n);
        }
    }

    /// Marks a Valkey round trip as started; the guard records it when dropped or finished.
    pub fn round_trip(&self, operation: &'static str) -> RoundTrip<'_> {
        self.store_in_flight.inc();
        RoundTrip {
            metrics: self,
            operation,
            started: std::time::Instant::now(),
            outcome: "error",
        }
    }

    /// Counts a validation answered from the validation cache.
    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    /// Counts a validation the cache could not answer.
    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    /// Counts `n` key invalidations received on the cache's feed.
    pub fn cache_invalidations(&self, n: u64) {
        self.cache_invalidations.inc_by(n);
    }

    /// Counts a check that could not show the feed and the commands on one Valkey server.
    pub fn cache_unverified(&self) {
        self.cache_unverified.inc();
    }

    /// Counts a reset of the validation cache.
    pub fn cache_reset(&self) {
        self.cache_resets.inc();
    }

    /// Publishes how many answers the validation cache holds.
    pub fn set_cache_entries(&self, n: usize) {
        self.cache_entries.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Publishes whether the invalidation feed is live.
    pub fn set_cache_feed_live(&self, live: bool) {
        self.cache_feed_live.set(i64::from(live));
    }

    /// Publishes the cluster primaries the invalidation feeds are live on, each with the
    /// number of slots it owns (`(node id, slots)`; none when the feeds are not live).
    pub fn set_cache_feed_slots(&self, primaries: &[(String, u64)]) {
        self.cache_feed_slots.clear();
        for (node_id, slots) in primaries {
            let labels = FeedPrimaryLabels {
                node_id: node_id.clone(),
            };
            self.cache_feed_slots
                .get_or_create(&labels)
                .set(i64::try_from(*slots).unwrap_or(i64::MAX));
        }
    }

    /// Publishes whether the store answers its health probes.
    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// Marks the service as shutting down: not ready from now on, even if a health probe
    /// that was already running reports the store up afterwards.
    pub fn begin_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the service is ready: the store answered its last health probe and the
    /// service is not shutting down.
    pub fn ready(&self) -> bool {
        !self.draining.load(std::sync::atomic::Ordering::SeqCst) && self.store_up.get() == 1
    }

    /// The Prometheus/OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// One Valkey round trip in progress. Counted as an error unless [`RoundTrip::succeeded`] is
/// called, so a cancelled call is not mistaken for a success.
pub struct RoundTrip<'a> {
    metrics: &'a Metrics,
    operation: &'static str,
    started: std::time::Instant,
    outcome: &'static str,
}

impl RoundTrip<'_> {
    /// Marks the round trip as answered.
    pub fn succeeded(mut self) {
        self.outcome = "ok";
    }
}

impl Drop for RoundTrip<'_> {
    fn drop(&mut self) {
        self.metrics.store_in_flight.dec();
        self.metrics
            .round_trips
            .get_or_create(&RoundTripLabels {
                db_system_name: "valkey",
                db_operation_name: self.operation,
                outcome: self.outcome,
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_follow_the_conventions() {
        let metrics = Metrics::new();
        metrics.rpc(
            &RpcLabels {
                rpc_system: "grpc",
                rpc_service: "s",
                rpc_method: "ValidateAccessToken",
                rpc_grpc_status_code: 0,
            },
            Duration::from_micros(300),
        );
        metrics.validation("valid");
        metrics.sessions("created", 2);
        metrics.round_trip("validate").succeeded();
        metrics.set_store_up(true);
        let text = metrics.encode();
        for needle in [
            "rpc_server_call_duration_seconds_bucket{le=\"0.0005\",rpc_system=\"grpc\",rpc_service=\"s\",rpc_method=\"ValidateAccessToken\",rpc_grpc_status_code=\"0\"} 1",
            "barazo_session_validations_total{outcome=\"valid\"} 1",
            "barazo_session_sessions_total{event=\"created\"} 2",
            "barazo_session_valkey_round_trip_duration_seconds_count{db_system_name=\"valkey\",db_operation_name=\"validate\",outcome=\"ok\"} 1",
            "barazo_session_valkey_in_flight_commands 0",
            "barazo_session_store_up 1",
            "barazo_session_build_info{version=\"",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
        let build = format!(
            "barazo_session_build_info{{version=\"{}\",profile=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            crate::observe::profile::PROFILE
        );
        assert!(text.contains(&build), "{build} in\n{text}");
        assert!(metrics.ready());
        metrics.begin_draining();
        metrics.set_store_up(true);
        assert!(!metrics.ready(), "draining wins over a late probe");
    }

    #[test]
    fn an_unfinished_round_trip_counts_as_an_error() {
        let metrics = Metrics::new();
        drop(metrics.round_trip("refresh"));
        assert!(metrics.encode().contains(
            "barazo_session_valkey_round_trip_duration_seconds_count{db_system_name=\"valkey\",db_operation_name=\"refresh\",outcome=\"error\"} 1"
        ));
    }
}
