//! The invalidation feed: one dedicated RESP3 connection per replica with
//! `CLIENT TRACKING on BCAST PREFIX <prefix>access: PREFIX <prefix>data:`, so Valkey pushes
//! the name of every such key any client writes, deletes or lets expire (this service's
//! replicas, the TypeScript AppView, `redis-cli`). The cache is live only while this
//! connection is up and subscribed and reaches the same Valkey server as the store's
//! commands (their `run_id`s, checked at subscription, with every ping, and at once after
//! any failed command: see [`crate::store::valkey::identity`]); every break drops the
//! cache ([`ValidationCache::reset`]).

use super::ValidationCache;
use crate::store::valkey::identity::{self, CommandSide};
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

/// Runs the feed for `cache` until dropped: connect, subscribe, check that the feed and
/// `commands` reach the same Valkey server, go live, watch; on any break, reset and start
/// over.
pub async fn run(
    client: redis::Client,
    cache: Arc<ValidationCache>,
    commands: CommandSide,
    prefix: String,
    timeout: Duration,
) {
    // Whether the last attempt failed too: an outage is logged once, not every 200 ms.
    let mut failing = false;
    // Whether the last check found the two apart: logged once per episode too.
    let mut apart = false;
    loop {
        let closed = Arc::new(Notify::new());
        match subscribe(&client, &cache, &prefix, timeout, closed.clone()).await {
            Ok(mut conn) => {
                failing = false;
                // Failures of the command side from here on mean it may have moved.
                let failures = commands.failures().count();
                match same_server(&mut conn, &commands, timeout).await {
                    Ok(server) => {
                        apart = false;
                        cache.go_live();
                        tracing::info!("validation cache live: invalidation feed subscribed");
                        let end =
                            watch(&mut conn, &closed, &commands, &server, failures, timeout).await;
                        cache.reset(false);
                        if end == End::Apart {
                            cache.count_unverified();
                        }
                        tracing::warn!(
                            reason = end.reason(),
                            "validation cache off until its invalidation feed reconnects"
                        );
                    }
                    Err(why) => {
                        cache.reset(false);
                        cache.count_unverified();
                        if !apart {
                            tracing::warn!(
                                reason = %why,
                                "validation cache off: its invalidation feed and the store's commands are not shown to reach the same Valkey server"
                            );
                        }
                        apart = true;
                    }
                }
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

/// The `run_id` of the server both the feed and the store's commands reach, or why they
/// are not shown to be one (two servers, or either could not say: INFO refused by an ACL,
/// a connection down).
async fn same_server(
    feed: &mut MultiplexedConnection,
    commands: &CommandSide,
    timeout: Duration,
) -> Result<String, String> {
    let feed_server = identity::run_id(feed)
        .await
        .map_err(|err| format!("the feed's server did not say who it is: {err}"))?;
    let command_server = tokio::time::timeout(timeout, commands.run_id())
        .await
        .map_err(|_| "the store's connection did not answer INFO in time".to_owned())?
        .map_err(|err| format!("the store's server did not say who it is: {err}"))?;
    if feed_server == command_server {
        Ok(feed_server)
    } else {
        Err("the feed and the store's commands reach two different Valkey servers (a failover behind one address?)".to_owned())
    }
}

/// Why a live feed stopped.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The connection closed or stopped answering pings.
    Lost,
    /// The store's commands failed (their connection reconnects, perhaps elsewhere), or
    /// reach another server than the feed.
    Apart,
}

impl End {
    fn reason(&self) -> &'static str {
        match self {
            End::Lost => "feed connection lost",
            End::Apart => {
                "the store's commands failed or reach another Valkey server than the feed"
            }
        }
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

/// Waits until the connection closes or stops answering pings, the store's commands fail
/// (after `failures` of them were seen), or they reach another server than `server`,
/// checked with every ping.
async fn watch(
    conn: &mut MultiplexedConnection,
    closed: &Notify,
    commands: &CommandSide,
    server: &str,
    failures: u64,
    timeout: Duration,
) -> End {
    loop {
        tokio::select! {
            () = closed.notified() => return End::Lost,
            () = commands.failures().since(failures) => return End::Apart,
            () = tokio::time::sleep(PING_INTERVAL) => {
                if redis::cmd("PING").query_async::<()>(conn).await.is_err() {
                    return End::Lost;
                }
                let now = tokio::time::timeout(timeout, commands.run_id()).await;
                if !matches!(now, Ok(Ok(ref id)) if id == server) {
                    return End::Apart;
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
