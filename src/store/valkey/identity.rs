//! Which Valkey server a connection reaches, so that the validation cache serves only while
//! its invalidation feed and the store's commands are on the same one.
//!
//! Behind one address (a DNS name, a Kubernetes Service, a Sentinel-managed endpoint) a
//! failover moves *new* connections to the promoted replica while old ones stay on the old
//! primary: a feed left there hears nothing of the writes that now land elsewhere. A
//! server's `run_id` (`INFO server`) is unique per process, unlike anything replicated.

use redis::RedisResult;
use redis::aio::{ConnectionLike, ConnectionManager};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

/// The `run_id` of the server `conn` reaches.
pub async fn run_id(conn: &mut impl ConnectionLike) -> RedisResult<String> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    parse_run_id(&info).map(str::to_owned).ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "INFO server has no run_id",
        ))
    })
}

fn parse_run_id(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(str::trim)
        .filter(|id| !id.is_empty())
}

/// Failures of the store's command connection, after each of which redis-rs's connection
/// manager reconnects, perhaps to another server: the feed re-checks at once.
#[derive(Default)]
pub struct Failures {
    count: AtomicU64,
    raised: Notify,
}

impl Failures {
    /// Records a failed round trip.
    pub fn raise(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.raised.notify_waiters();
    }

    /// How many so far: a check remembers it, and a later count tells that one came since.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Resolves when the count moves past `seen` (at once if it has already).
    pub async fn since(&self, seen: u64) {
        loop {
            let raised = self.raised.notified();
            if self.count() != seen {
                return;
            }
            raised.await;
        }
    }
}

/// The standalone store's command side, as the feed checks it: its connection (a clone of
/// the store's own, so the server asked is the one that answers the store's reads) and its
/// failures.
#[derive(Clone)]
pub struct CommandSide {
    pub(crate) conn: ConnectionManager,
    pub(crate) failures: Arc<Failures>,
}

impl CommandSide {
    /// The `run_id` of the server the store's commands reach now.
    pub async fn run_id(&self) -> RedisResult<String> {
        run_id(&mut self.conn.clone()).await
    }

    /// The store's command failures.
    pub fn failures(&self) -> &Failures {
        &self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_id_is_read_from_info_server() {
        let info = "# Server\r\nvalkey_version:9.1.2\r\nrun_id:e804c789f4577a8c6b480c1a97fb0b866163b8b8\r\ntcp_port:6379\r\n";
        assert_eq!(
            parse_run_id(info),
            Some("e804c789f4577a8c6b480c1a97fb0b866163b8b8")
        );
        assert_eq!(parse_run_id("# Server\r\nrun_id:\r\n"), None);
        assert_eq!(parse_run_id(""), None);
    }

    #[tokio::test]
    async fn a_failure_wakes_a_waiter_and_one_before_the_wait_is_not_lost() {
        let failures = Arc::new(Failures::default());
        let seen = failures.count();
        failures.raise();
        // Raised before anyone waited: still seen.
        tokio::time::timeout(std::time::Duration::from_secs(1), failures.since(seen))
            .await
            .expect("an earlier failure is seen");
        let seen = failures.count();
        let waiter = tokio::spawn({
            let failures = failures.clone();
            async move { failures.since(seen).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        failures.raise();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("no panic");
    }
}
