//! The invalidation feed: one dedicated RESP3 connection per replica with
//! `CLIENT TRACKING on BCAST PREFIX <prefix>access: PREFIX <prefix>data:`, so Valkey pushes
//! the name of every such key any client writes, deletes or lets expire (this service's
//! replicas, the TypeScript AppView, `redis-cli`). The cache is live only while this
//! connection is up and subscribed and reaches the same Valkey server as the store's
//! commands (their `run_id`s, checked at subscription, with every ping, and at once after
//! any failed command: see [`crate::store::valkey::identity`]); every break drops the
//! cache ([`ValidationCache::reset`]).
//!
//! It has two subscribers: the validation cache (when it is on) and the events
//! `WatchRevocations` streams ([`FeedEvents`]); each hears every change of the feed.

use super::{FeedEvents, Invalidation, ValidationCache};
use crate::store::KeyLayout;
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

/// Who hears the feed: the validation cache (`None` when it is off) and the events
/// `WatchRevocations` streams.
#[derive(Clone)]
pub struct Subscribers {
    /// The validation cache, when it is on.
    pub cache: Option<Arc<ValidationCache>>,
    /// What `WatchRevocations` streams.
    pub events: Arc<FeedEvents>,
}

impl Subscribers {
    fn go_live(&self) {
        if let Some(cache) = &self.cache {
            cache.go_live();
        }
        self.events.go_live();
    }

    /// The feed broke (`still_live` false) or Valkey was flushed under a live feed.
    fn reset(&self, still_live: bool) {
        if let Some(cache) = &self.cache {
            cache.reset(still_live);
        }
        self.events.reset(still_live);
    }

    fn invalidate(&self, invalidations: Vec<Invalidation>) {
        if let Some(cache) = &self.cache {
            cache.invalidate(&invalidations);
        }
        self.events.publish(invalidations);
    }

    fn count_unverified(&self) {
        self.events.count_unverified();
    }
}

/// Runs the feed for `subscribers` until dropped: connect, subscribe, check that the feed
/// and `commands` reach the same Valkey server, go live, watch; on any break, reset and
/// start over.
pub async fn run(
    client: redis::Client,
    subscribers: Subscribers,
    commands: CommandSide,
    prefix: String,
    timeout: Duration,
) {
    let keys = KeyLayout::new(&prefix);
    // Whether the last attempt failed too: an outage is logged once, not every 200 ms.
    let mut failing = false;
    // Whether the last check found the two apart: logged once per episode too.
    let mut apart = false;
    loop {
        let closed = Arc::new(Notify::new());
        match subscribe(&client, &subscribers, &keys, timeout, closed.clone()).await {
            Ok(mut conn) => {
                failing = false;
                // Failures of the command side from here on mean it may have moved.
                let failures = commands.failures().count();
                let checked = match same_server(&mut conn, &commands, timeout).await {
                    Ok(server) => mark(&mut conn, &keys)
                        .await
                        .map(|marker| (server, marker))
                        .map_err(|err| format!("could not write the feed's marker key: {err}")),
                    Err(why) => Err(why),
                };
                match checked {
                    Ok((server, marker)) => {
                        apart = false;
                        subscribers.go_live();
                        tracing::info!("validation cache live: invalidation feed subscribed");
                        let watched = Watched {
                            commands: &commands,
                            server: &server,
                            failures,
                            marker: &marker,
                            timeout,
                        };
                        let end = watch(&mut conn, &closed, &watched).await;
                        subscribers.reset(false);
                        if end == End::Apart {
                            subscribers.count_unverified();
                        }
                        tracing::warn!(
                            reason = end.reason(),
                            "validation cache off until its invalidation feed reconnects"
                        );
                    }
                    Err(why) => {
                        subscribers.reset(false);
                        subscribers.count_unverified();
                        if !apart {
                            tracing::warn!(
                                reason = %why,
                                "validation cache off: its invalidation feed cannot be shown to watch the database the store's commands reach"
                            );
                        }
                        apart = true;
                    }
                }
            }
            Err(err) => {
                subscribers.reset(false);
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

/// Opens the feed connection and turns tracking on. Pushes are handled on the
/// connection's own task, as they arrive (no queue).
async fn subscribe(
    client: &redis::Client,
    subscribers: &Subscribers,
    keys: &KeyLayout,
    timeout: Duration,
    closed: Arc<Notify>,
) -> redis::RedisResult<MultiplexedConnection> {
    let handler_subscribers = subscribers.clone();
    let handler_keys = keys.clone();
    let on_push = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
        handle(&handler_subscribers, &handler_keys, &closed, push);
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
        .arg(keys.access_prefix())
        .arg("PREFIX")
        .arg(keys.data_prefix())
        .query_async::<()>(&mut conn)
        .await?;
    Ok(conn)
}

/// Writes this subscription's marker key into the database the feed watches, and returns
/// its name. `SWAPDB` moves every key to another database and Valkey says nothing of it;
/// a marker gone from its place says so at the next ping. Outside the tracked prefixes,
/// so writing it invalidates nothing; it expires by itself when its replica is gone.
async fn mark(conn: &mut MultiplexedConnection, keys: &KeyLayout) -> redis::RedisResult<String> {
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|err| {
        redis::RedisError::from(std::io::Error::other(format!("no random marker: {err}")))
    })?;
    let marker = keys.feed_marker(&hex::encode(nonce));
    redis::cmd("SET")
        .arg(&marker)
        .arg(1)
        .arg("PX")
        .arg(MARKER_TTL_MS)
        .query_async::<()>(conn)
        .await?;
    Ok(marker)
}

/// How long a marker outlives its last ping: long enough for any pause of the feed.
const MARKER_TTL_MS: u64 = 60_000;

/// Why a live feed stopped.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The connection closed or stopped answering pings.
    Lost,
    /// The store's commands failed (their connection reconnects, perhaps elsewhere), or
    /// reach another server than the feed.
    Apart,
    /// The marker left the database (`SWAPDB`, `FLUSHDB`, an operator's `DEL`).
    Moved,
}

impl End {
    fn reason(&self) -> &'static str {
        match self {
            End::Lost => "feed connection lost",
            End::Apart => {
                "the store's commands failed or reach another Valkey server than the feed"
            }
            End::Moved => "the watched database's keys moved (SWAPDB?) or were flushed",
        }
    }
}

/// What a live feed checks besides its own connection.
struct Watched<'a> {
    /// The store's command side, and the server it must reach.
    commands: &'a CommandSide,
    server: &'a str,
    /// The command failures seen before the feed went live.
    failures: u64,
    /// This subscription's marker key.
    marker: &'a str,
    timeout: Duration,
}

/// Waits until the connection closes or stops answering pings, the store's commands fail
/// or reach another server, or the marker leaves the database; checked with every ping.
async fn watch(conn: &mut MultiplexedConnection, closed: &Notify, watched: &Watched<'_>) -> End {
    loop {
        // The checks run beside the other two signals, so a failed store command ends the
        // cache at once even while a slow check waits.
        let checked = async {
            tokio::time::sleep(PING_INTERVAL).await;
            check(conn, watched).await
        };
        tokio::select! {
            () = closed.notified() => return End::Lost,
            () = watched.commands.failures().since(watched.failures) => return End::Apart,
            end = checked => if let Some(end) = end {
                return end;
            },
        }
    }
}

/// One round of checks: the marker read (and kept alive) on the feed's own connection, which
/// is also its ping, then the command side's server; `None` when all hold.
async fn check(conn: &mut MultiplexedConnection, watched: &Watched<'_>) -> Option<End> {
    let marker = redis::cmd("GETEX")
        .arg(watched.marker)
        .arg("PX")
        .arg(MARKER_TTL_MS)
        .query_async::<Option<String>>(conn)
        .await;
    match marker {
        Ok(Some(_)) => {}
        Ok(None) => return Some(End::Moved),
        Err(_) => return Some(End::Lost),
    }
    let now = tokio::time::timeout(watched.timeout, watched.commands.run_id()).await;
    (!matches!(now, Ok(Ok(ref id)) if id == watched.server)).then_some(End::Apart)
}

/// One push message: key invalidations, a flush (null invalidation), or the library's
/// notice that the connection closed.
fn handle(subscribers: &Subscribers, keys: &KeyLayout, closed: &Notify, push: PushInfo) {
    match push.kind {
        // The watcher resets the subscribers: a late notice from a replaced connection must
        // not turn off the cache its successor made live.
        PushKind::Disconnection => closed.notify_one(),
        PushKind::Invalidate => match push.data.first() {
            Some(Value::Array(names)) => {
                subscribers.invalidate(invalidations(
                    keys,
                    names.iter().filter_map(|name| match name {
                        Value::BulkString(bytes) => Some(bytes.as_slice()),
                        _ => None,
                    }),
                ));
            }
            // `FLUSHALL`/`FLUSHDB`: every key is gone; the subscription itself stays.
            _ => subscribers.reset(true),
        },
        _ => {}
    }
}

/// What changed keys (full names, in the layout `keys`) invalidate: an access key one token's
/// answers, a data key every answer of its session (named by its session key, the SHA-256
/// of the sid, never the sid itself).
pub fn invalidations<'a>(
    keys: &KeyLayout,
    names: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<Invalidation> {
    names
        .into_iter()
        .filter_map(|key| {
            let key = std::str::from_utf8(key).ok()?;
            if let Some(hash) = key.strip_prefix(keys.access_prefix()) {
                Some(Invalidation::AccessHash(hash.to_owned()))
            } else {
                key.strip_prefix(keys.data_prefix())
                    .map(|sid| Invalidation::SessionKey(crate::domain::sha256_hex(sid)))
            }
        })
        .collect()
}
