//! The feed of a Valkey Cluster: one tracking connection per primary (those that own slots,
//! and any just added that owns none yet), found from the cluster's own topology
//! (`CLUSTER SHARDS`, asked on the store's connection). Replicas need none: a shard's
//! writes reach its primary first, and a demoted primary's feed, now on a replica, still
//! hears its new primary's writes through replication until the next check moves it.
//!
//! The cache is live only while all of them are, and while, at every ping:
//! - each connection reaches the node the topology names (`CLUSTER MYID`), and that node
//!   still calls itself a primary (`ROLE`: a demoted primary knows it at once, before the
//!   rest of the cluster agrees);
//! - the topology is the one the feeds were opened for (asked on the store's connection);
//! - no store command has failed since (a failure may mean the topology is moving).
//!
//! That is what shows the feeds watch the nodes the store's commands reach: a key command
//! runs only on the node that owns its slot (any other answers `MOVED`, and redis-rs
//! follows), so a feed shown to be on each shard's primary, which itself says it is one,
//! hears every write the commands make. redis-rs's own slot map is not consulted: it is
//! refreshed only when a command is redirected or fails, so it lags a quiet cluster.
//!
//! Any change (a failover, a resharding, a node added or gone) drops the whole cache, and
//! the feeds are opened afresh on the new topology before anything is cached again. Why
//! the whole cache and not the slots of one shard: `WatchRevocations` is one stream with
//! one reset, so its callers cannot tell which answers a shard's gap touched; topology
//! changes are rare and short, and meanwhile every validation is answered by Valkey, which
//! is correct, only slower.

use super::{End, PING_INTERVAL, Retry, Subscribers, Unwatched, subscribe};
use crate::store::KeyLayout;
use crate::store::valkey::cluster::ClusterCommandSide;
use crate::store::valkey::cluster::shards::Owned;
use redis::Value;
use redis::aio::MultiplexedConnection;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Runs the feeds for `subscribers` until dropped: read the topology, subscribe on every
/// primary, check, go live, watch; on any break or change, reset and start over.
pub async fn run_cluster(
    subscribers: Subscribers,
    commands: ClusterCommandSide,
    prefix: String,
    timeout: Duration,
) {
    let keys = KeyLayout::new(&prefix);
    // Whether the last attempt failed too: an outage is logged once, not at every attempt.
    let mut failing = false;
    let mut retry = Retry::new();
    let _unwatched = Unwatched(&subscribers);
    loop {
        match open(&subscribers, &commands, &keys, timeout).await {
            Ok(mut feeds) => {
                failing = false;
                subscribers.go_live();
                let went_live = tokio::time::Instant::now();
                subscribers.watching(&feeds.watched());
                tracing::info!(
                    primaries = feeds.nodes.len(),
                    "validation cache live: an invalidation feed on every primary"
                );
                let end = watch(&mut feeds, &commands, timeout).await;
                retry.lived(went_live.elapsed());
                // Before the reset, so that whoever sees the reset counted sees no feed.
                subscribers.watching(&[]);
                subscribers.reset(false);
                if end == End::Apart {
                    subscribers.count_unverified();
                }
                tracing::warn!(
                    reason = end.reason(),
                    "validation cache off until every primary's invalidation feed is back"
                );
            }
            Err(why) => {
                subscribers.reset(false);
                if failing {
                    tracing::debug!(reason = %why, "validation cache feeds: not live yet");
                } else {
                    tracing::warn!(
                        reason = %why,
                        "validation cache off until an invalidation feed runs on every primary"
                    );
                }
                failing = true;
            }
        }
        retry.pause().await;
    }
}

/// The open feeds: one connection per shard's primary, for one topology.
struct Feeds {
    ownership: Vec<Owned>,
    /// The connection to each shard's primary, in the order of `ownership`.
    nodes: Vec<MultiplexedConnection>,
    /// Told when any of them closes.
    closed: Arc<Notify>,
    /// The store's failures seen before the checks.
    failures: u64,
}

impl Feeds {
    /// Each watched primary's node id and how many slots it owns.
    fn watched(&self) -> Vec<(String, u64)> {
        self.ownership
            .iter()
            .map(|owned| {
                let slots = owned
                    .slots
                    .iter()
                    .map(|&(first, last)| u64::from(last.saturating_sub(first)) + 1)
                    .sum();
                (owned.owner.id.clone(), slots)
            })
            .collect()
    }
}

/// Reads the topology, subscribes on every primary that owns slots, and checks.
async fn open(
    subscribers: &Subscribers,
    commands: &ClusterCommandSide,
    keys: &KeyLayout,
    timeout: Duration,
) -> Result<Feeds, String> {
    let failures = commands.failures().count();
    let ownership = within(timeout, commands.ownership()).await??;
    let closed = Arc::new(Notify::new());
    let mut nodes = Vec::with_capacity(ownership.len());
    for owned in &ownership {
        let node = &owned.owner;
        let client = commands
            .client_for(node)
            .map_err(|err| format!("no client for {}:{}: {err}", node.host, node.port))?;
        let mut conn = subscribe(&client, subscribers, keys, timeout, closed.clone())
            .await
            .map_err(|err| {
                format!(
                    "could not subscribe on {}:{} (CLIENT TRACKING): {err}",
                    node.host, node.port
                )
            })?;
        if let Some(end) = still_primary(&mut conn, &node.id).await {
            return Err(format!(
                "{}:{} is not the primary CLUSTER SHARDS names: {}",
                node.host,
                node.port,
                end.reason()
            ));
        }
        nodes.push(conn);
    }
    let feeds = Feeds {
        ownership,
        nodes,
        closed,
        failures,
    };
    // Subscribed to the topology as it is after the subscriptions, not only before.
    if let Some(end) = agreed(&feeds, commands, timeout).await {
        return Err(end.reason().to_owned());
    }
    Ok(feeds)
}

/// Waits until a feed closes or fails its checks, a store command fails, or the topology
/// changes; checked with every ping.
async fn watch(feeds: &mut Feeds, commands: &ClusterCommandSide, timeout: Duration) -> End {
    let closed = feeds.closed.clone();
    let failures = feeds.failures;
    loop {
        let checked = async {
            tokio::time::sleep(PING_INTERVAL).await;
            check(feeds, commands, timeout).await
        };
        tokio::select! {
            () = closed.notified() => return End::Lost,
            () = commands.failures().since(failures) => return End::Apart,
            end = checked => if let Some(end) = end {
                return end;
            },
        }
    }
}

/// One round of checks: each feed (its ping), then the topology and the store's routing;
/// `None` when all hold.
async fn check(feeds: &mut Feeds, commands: &ClusterCommandSide, timeout: Duration) -> Option<End> {
    for (conn, owned) in feeds.nodes.iter_mut().zip(&feeds.ownership) {
        if let Some(end) = still_primary(conn, &owned.owner.id).await {
            return Some(end);
        }
    }
    agreed(feeds, commands, timeout).await
}

/// Whether `conn` still reaches the node `id` and that node still calls itself a primary.
async fn still_primary(conn: &mut MultiplexedConnection, id: &str) -> Option<End> {
    let answer: redis::RedisResult<(String, Value)> = redis::pipe()
        .cmd("CLUSTER")
        .arg("MYID")
        .cmd("ROLE")
        .query_async(conn)
        .await;
    match answer {
        Err(_) => Some(End::Lost),
        Ok((reached, _)) if reached != id => Some(End::Apart),
        Ok((_, role)) if !is_primary(&role) => Some(End::Reshaped),
        Ok(_) => None,
    }
}

/// `ROLE`'s first element is `master` on a primary.
fn is_primary(role: &Value) -> bool {
    let Value::Array(fields) = role else {
        return false;
    };
    matches!(fields.first(), Some(Value::BulkString(b)) if b == b"master")
        || matches!(fields.first(), Some(Value::SimpleString(s)) if s == "master")
}

/// Whether the topology, asked on the store's connection, is still the feeds'; `None` when
/// it is.
async fn agreed(feeds: &Feeds, commands: &ClusterCommandSide, timeout: Duration) -> Option<End> {
    match within(timeout, commands.ownership()).await {
        Ok(Ok(now)) if now == feeds.ownership => None,
        Ok(Ok(_)) => Some(End::Reshaped),
        Ok(Err(_)) | Err(_) => Some(End::Apart),
    }
}

/// `future`, or why it did not answer within `timeout`.
async fn within<T>(timeout: Duration, future: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(timeout, future)
        .await
        .map_err(|_| "the cluster did not answer in time".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_master_role_is_a_primary() {
        let role = |first: &str| Value::Array(vec![Value::BulkString(first.into())]);
        assert!(is_primary(&role("master")));
        assert!(!is_primary(&role("slave")));
        assert!(!is_primary(&Value::Nil));
        assert!(!is_primary(&Value::Array(vec![])));
    }
}
