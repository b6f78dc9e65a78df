//! The invalidation feed: one dedicated RESP3 connection per replica with
//! `CLIENT TRACKING on BCAST PREFIX <prefix>access: PREFIX <prefix>data:`, so Valkey pushes
//! the name of every such key any client writes, deletes or lets expire (this service's
//! replicas, the TypeScript AppView, `redis-cli`). The cache is live only while this
//! connection is up and subscribed; every break drops the cache ([`ValidationCache::reset`]).

use super::ValidationCache;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How often the feed connection is pinged: a connection that died silently (a network
/// partition, no RST) stops the cache within this plus the command timeout.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);

/// Pause between reconnection attempts, so a Valkey that is down costs little.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Runs the feed for `cache` until dropped: connect, subscribe, go live, watch; on any
/// break reset and start over.
pub async fn run(
    client: redis::Client,
    cache: Arc<ValidationCache>,
    prefix: String,
    timeout: Duration,
) {
    // Whether the last attempt failed too: an outage is logged once, not every 200 ms.
    let mut failing = false;
    loop {
        let closed = Arc::new(Notify::new());
        match subscribe(&client, &cache, &prefix, timeout, closed.clone()).await {
            Ok(mut conn) => {
                failing = false;
                cache.go_live();
                tracing::info!("validation cache live: invalidation feed subscribed");
                watch(&mut conn, &closed).await;
                cache.reset(false);
                tracing::warn!(
                    "validation cache off until its invalidation feed reconnects: feed connection lost"
                );
            }
            Err(err) => {
                cache.reset(false);
                if failing {
                    tracing::debug!(error = %err, "validation cache feed: could not subscribe");
                } else {
                    // Also what an ACL that forbids CLIENT TRACKING looks like: the service
                    // works, every validation goes to Valkey.
                    tracing::warn!(
                        error = %err,
                        "validation cache off until its invalidation feed can subscribe (CLIENT TRACKING)"
                    );
                }
                failing = true;
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Opens the feed connection and turns tracking on. Pushes are handled on the
/// connection's own task, as they arrive (no queue).
async fn subscribe(
    client: &redis::Client,
    cache: &Arc<ValidationCache>,
    prefix: &str,
    timeout: Duration,
    closed: Arc<Notify>,
) -> redis::RedisResult<MultiplexedConnection> {
    let handler_cache = cache.clone();
    let handler_prefix = prefix.to_owned();
    let on_push = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
        handle(&handler_cache, &handler_prefix, &closed, push);
        Ok(())
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_push_sender(on_push);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .arg("PREFIX")
        .arg(format!("{prefix}access:"))
        .arg("PREFIX")
        .arg(format!("{prefix}data:"))
        .query_async::<()>(&mut conn)
        .await?;
    Ok(conn)
}

/// Waits until the connection closes or stops answering pings.
async fn watch(conn: &mut MultiplexedConnection, closed: &Notify) {
    loop {
        tokio::select! {
            () = closed.notified() => return,
            () = tokio::time::sleep(PING_INTERVAL) => {
                if redis::cmd("PING").query_async::<()>(conn).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One push message: key invalidations, a flush (null invalidation), or the library's
/// notice that the connection closed.
fn handle(cache: &ValidationCache, prefix: &str, closed: &Notify, push: PushInfo) {
    match push.kind {
        // The watcher resets the cache: a late notice from a replaced connection must
        // not turn off the cache its successor made live.
        PushKind::Disconnection => closed.notify_one(),
        PushKind::Invalidate => match push.data.first() {
            Some(Value::Array(keys)) => {
                cache.invalidate_keys(
                    prefix,
                    keys.iter().filter_map(|key| match key {
                        Value::BulkString(bytes) => Some(bytes.as_slice()),
                        _ => None,
                    }),
                );
            }
            // `FLUSHALL`/`FLUSHDB`: every key is gone; the subscription itself stays.
            _ => cache.reset(true),
        },
        _ => {}
    }
}
