//! The Valkey Cluster store's connection: made on first use, one attempt at a time, and
//! replaced when it has stopped answering.
//!
//! Why replace it: under load, redis-rs 1.8's cluster connection can wedge for good when a
//! node dies. The slot refresh it starts never completes (its logs stop at "beginning slot
//! refresh"), every call then times out, and that lasts after the node is back
//! (reproduced by `a_node_killed_and_restarted_under_load_heals_without_a_restart` in
//! `tests/it/cluster.rs`). So when every call has failed for [`WEDGED_AFTER`], the link drops
//! the connection and the next call builds a new one from the seeds. During a real outage
//! that only means a fresh attempt every [`WEDGED_AFTER`]; calls still answer UNAVAILABLE.

use crate::store::StoreError;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// Longest wait for a connection to the cluster (topology discovery included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// After a failed connection attempt, calls in this window fail at once without a new one.
const CONNECT_RETRY_AFTER: Duration = Duration::from_millis(500);

/// A connection on which every call failed for this long is replaced.
const WEDGED_AFTER: Duration = Duration::from_secs(2);

/// A [`StoreError::Unavailable`] that carries our own reason.
fn unreachable(reason: &'static str) -> StoreError {
    StoreError::unavailable(std::io::Error::new(std::io::ErrorKind::TimedOut, reason))
}

/// The cluster connection shared by every call.
pub struct ClusterLink {
    client: ClusterClient,
    current: RwLock<Option<ClusterConnection>>,
    /// Held while connecting, so callers wait for one attempt instead of making their own.
    connecting: tokio::sync::Mutex<()>,
    /// When the last connection attempt failed.
    last_failure: Mutex<Option<Instant>>,
    streak: FailureStreak,
}

/// How long every call has been failing. Lock-free: every call touches it.
struct FailureStreak {
    /// Start of the current run of failures, in ms since `epoch` plus one; 0 while the
    /// last call succeeded.
    since_ms: AtomicU64,
    epoch: Instant,
}

impl FailureStreak {
    fn new() -> Self {
        Self {
            since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn succeeded(&self) {
        if self.since_ms.load(Ordering::Relaxed) != 0 {
            self.since_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failure at `now_ms`; returns how long the run has lasted when it has
    /// lasted `limit` or more (and starts counting afresh), else `None`.
    fn failed(&self, now_ms: u64, limit: Duration) -> Option<u64> {
        let since =
            match self
                .since_ms
                .compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return None,
                Err(since) => since,
            };
        let lasted = now_ms.saturating_sub(since);
        if lasted < u64::try_from(limit.as_millis()).unwrap_or(u64::MAX) {
            return None;
        }
        self.since_ms.store(0, Ordering::Relaxed);
        Some(lasted)
    }
}

impl ClusterLink {
    /// A link that connects through `client` on first use.
    pub fn new(client: ClusterClient) -> Self {
        Self {
            client,
            current: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            last_failure: Mutex::new(None),
            streak: FailureStreak::new(),
        }
    }

    fn installed(&self) -> Option<ClusterConnection> {
        self.current.read().ok().and_then(|current| current.clone())
    }

    /// The connection, made now if there is none. Fails at once while an attempt has just
    /// failed; waits at most [`CONNECT_TIMEOUT`] otherwise.
    pub async fn get(&self) -> Result<ClusterConnection, StoreError> {
        if let Some(conn) = self.installed() {
            return Ok(conn);
        }
        let _turn = self.connecting.lock().await;
        if let Some(conn) = self.installed() {
            return Ok(conn);
        }
        if self
            .last_failure
            .lock()
            .is_ok_and(|failed| failed.is_some_and(|at| at.elapsed() < CONNECT_RETRY_AFTER))
        {
            return Err(unreachable("the cluster was unreachable moments ago"));
        }
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_connection())
            .await
            .map_err(|_| unreachable("connecting to the cluster timed out"))
            .and_then(|conn| conn.map_err(StoreError::unavailable));
        match &attempt {
            Ok(conn) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Some(conn.clone());
                }
                self.streak.succeeded();
            }
            Err(_) => {
                if let Ok(mut failed) = self.last_failure.lock() {
                    *failed = Some(Instant::now());
                }
            }
        }
        attempt
    }

    /// Records how a call on the connection ended: any answer from the cluster counts as
    /// success, only [`StoreError::Unavailable`] as failure.
    pub fn record<T>(&self, outcome: &Result<T, StoreError>) {
        match outcome {
            Err(StoreError::Unavailable(_)) => {
                let Some(lasted) = self.streak.failed(self.streak.now_ms(), WEDGED_AFTER) else {
                    return;
                };
                let dropped = self
                    .current
                    .write()
                    .ok()
                    .and_then(|mut current| current.take());
                if dropped.is_some() {
                    tracing::warn!(
                        failing_for_ms = lasted,
                        "every Valkey Cluster call failed for a while: replacing the connection"
                    );
                }
            }
            _ => self.streak.succeeded(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(2);

    #[test]
    fn a_run_of_failures_counts_once_it_lasts_the_limit() {
        let streak = FailureStreak::new();
        assert_eq!(streak.failed(1_000, LIMIT), None, "starts the run");
        assert_eq!(streak.failed(2_999, LIMIT), None, "1.999 s");
        assert_eq!(streak.failed(3_000, LIMIT), Some(2_000));
        // Counted once: the next failure starts a new run.
        assert_eq!(streak.failed(3_001, LIMIT), None);
        assert_eq!(streak.failed(5_001, LIMIT), Some(2_000));
    }

    #[test]
    fn one_success_ends_the_run() {
        let streak = FailureStreak::new();
        assert_eq!(streak.failed(1_000, LIMIT), None);
        streak.succeeded();
        assert_eq!(streak.failed(2_500, LIMIT), None, "a new run from 2.5 s");
        assert_eq!(streak.failed(4_000, LIMIT), None);
        assert_eq!(streak.failed(4_500, LIMIT), Some(2_000));
    }
}
