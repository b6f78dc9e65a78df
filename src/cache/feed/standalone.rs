//! The feed of a standalone Valkey: one connection, checked to reach the same server as the
//! store's commands (their `run_id`s, checked at subscription, with every ping, and at once
//! after any failed command: see [`crate::store::valkey::identity`]).

use super::{End, PING_INTERVAL, Retry, Subscribers, Unwatched, subscribe};
use crate::store::KeyLayout;
use crate::store::valkey::identity::{self, CommandSide};
use redis::aio::MultiplexedConnection;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

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
    // Whether the last attempt failed too: an outage is logged once, not at every attempt.
    let mut failing = false;
    let mut retry = Retry::new();
    let _unwatched = Unwatched(&subscribers);
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
                        let went_live = tokio::time::Instant::now();
                        tracing::info!("validation cache live: invalidation feed subscribed");
                        let watched = Watched {
                            commands: &commands,
                            server: &server,
                            failures,
                            marker: &marker,
                            timeout,
                        };
                        let end = watch(&mut conn, &closed, &watched).await;
                        retry.lived(went_live.elapsed());
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
        retry.pause().await;
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
