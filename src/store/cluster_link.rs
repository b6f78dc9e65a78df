//! The Valkey Cluster store's connection: made on first use, one attempt at a time, and
//! replaced when it has stopped answering.
//!
//! Why replace it: under load, redis-rs 1.8's cluster connection can wedge for good when a
//! node dies. Its background repair of the dead node's connection and its slot refresh wait
//! on each other, every call then times out, and that lasts after the node is back
//! (reproduced by `a_node_killed_and_restarted_under_load_heals_without_a_restart` in
//! `tests/it/cluster.rs`). So when every call has failed for [`WEDGED_AFTER`], the link drops
//! the connection and the next call builds a new one from the seeds. During a real outage
//! that only means a fresh attempt every [`WEDGED_AFTER`]; calls still answer UNAVAILABLE.

use super::StoreError;
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
pub const WEDGED_AFTER: Duration = Duration::from_secs(2);

/// A [`StoreError::Unavailable`] that carries our own reason.
fn unreachable(reason: &'static str) -> StoreError {
    StoreError::Unavailable(redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        reason,
    )))
}

/// The cluster connection shared by every call.
pub struct ClusterLink {
    client: ClusterClient,
    current: RwLock<Option<ClusterConnection>>,
    /// Held while connecting, so callers wait for one attempt instead of making their own.
    connecting: tokio::sync::Mutex<()>,
    /// When the last connection attempt failed.
    last_failure: Mutex<Option<Instant>>,
    /// Start of the current run of failed calls, in ms since `epoch` plus one; 0 while
    /// the last call succeeded. Atomic: every call touches it.
    failing_since_ms: AtomicU64,
    epoch: Instant,
}

impl ClusterLink {
    /// A link that connects through `client` on first use.
    pub fn new(client: ClusterClient) -> Self {
        Self {
            client,
            current: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            last_failure: Mutex::new(None),
            failing_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
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
            .and_then(|conn| conn.map_err(StoreError::Unavailable));
        match &attempt {
            Ok(conn) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Some(conn.clone());
                }
                self.failing_since_ms.store(0, Ordering::Relaxed);
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
            Err(StoreError::Unavailable(_)) => self.failed(),
            _ => {
                if self.failing_since_ms.load(Ordering::Relaxed) != 0 {
                    self.failing_since_ms.store(0, Ordering::Relaxed);
                }
            }
        }
    }

    fn failed(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let since = match self.failing_since_ms.compare_exchange(
            0,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return,
            Err(since) => since,
        };
        let wedged_after = u64::try_from(WEDGED_AFTER.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(since) < wedged_after {
            return;
        }
        self.failing_since_ms.store(0, Ordering::Relaxed);
        let dropped = self
            .current
            .write()
            .ok()
            .and_then(|mut current| current.take());
        if dropped.is_some() {
            tracing::warn!(
                failing_for_ms = now.saturating_sub(since),
                "every Valkey Cluster call failed for a while: replacing the connection"
            );
        }
    }
}
