//! The invalidation feed: dedicated RESP3 connections with
//! `CLIENT TRACKING on BCAST PREFIX <prefix>access: PREFIX <prefix>data:`, so Valkey pushes
//! the name of every such key any client writes, deletes or lets expire (this service's
//! replicas, the TypeScript AppView, `redis-cli`). The cache is live only while every
//! connection it needs is up, subscribed, and shown to reach the servers the store's
//! commands reach; every break drops the cache ([`ValidationCache::reset`]).
//!
//! - `standalone.rs`: one connection, on the server whose `run_id` the store's commands
//!   reach.
//! - `cluster.rs`: one connection per primary that owns slots, each on the node the store's
//!   commands for those slots reach (node ids), followed as the topology changes.
//!
//! It has two subscribers: the validation cache (when it is on) and the events
//! `WatchRevocations` streams ([`FeedEvents`]); each hears every change of the feed.

mod cluster;
mod standalone;

pub use cluster::run_cluster;
pub use standalone::run;

use super::{FeedEvents, Invalidation, ValidationCache};
use crate::store::KeyLayout;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How often the feed connection is pinged: a connection that died silently (a network
/// partition, no RST) stops the cache within this plus the command timeout.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);

/// The pause before the first attempt to bring a feed back after it was live.
const RETRY_FIRST: Duration = Duration::from_millis(200);

/// The longest pause between attempts (before its jitter): a Valkey that stays down costs
/// each replica about one dial every two seconds, and the cache is back within about 3 s
/// of its return (2 s plus up to half again).
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How long a feed must have stayed live for its break to be retried from
/// [`RETRY_FIRST`] again: one that breaks sooner (a check failing at once, store commands
/// failing now and then) counts as a failed attempt, so a flapping feed backs off too.
const STABLE: Duration = RETRY_MAX;

/// Pauses between attempts to bring a feed back: [`RETRY_FIRST`] after a feed that had
/// been live for [`STABLE`] broke, doubling while attempts fail, up to [`RETRY_MAX`]; each
/// lengthened by up to half at random, so replicas that lost one Valkey together do not
/// all dial it in step.
struct Retry {
    next: Duration,
}

impl Retry {
    fn new() -> Self {
        Self { next: RETRY_FIRST }
    }

    /// The feed was live for `lived` before it broke: its next attempt comes soon if that
    /// was long enough to count as back.
    fn lived(&mut self, lived: Duration) {
        if lived >= STABLE {
            self.next = RETRY_FIRST;
        }
    }

    /// Waits before the next attempt; each failed attempt makes the next wait longer.
    async fn pause(&mut self) {
        let base = self.advance();
        tokio::time::sleep(jittered(base, getrandom::u32().unwrap_or(0))).await;
    }

    /// This pause before its jitter; the next is twice as long, up to the cap.
    fn advance(&mut self) -> Duration {
        let now = self.next;
        self.next = (now * 2).min(RETRY_MAX);
        now
    }
}

/// `base` lengthened by `random`'s share of half of it.
fn jittered(base: Duration, random: u32) -> Duration {
    base + base.mul_f64(f64::from(random) / f64::from(u32::MAX) / 2.0)
}

/// Held by a running feed: when its task ends or is dropped (shutdown aborts it), no
/// answer is served or streamed any more on the word of a feed that no longer watches.
struct Unwatched<'a>(&'a Subscribers);

impl Drop for Unwatched<'_> {
    fn drop(&mut self) {
        self.0.watching(&[]);
        self.0.reset(false);
    }
}

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

    fn watching(&self, primaries: &[(String, u64)]) {
        self.events.watching(primaries);
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
    authenticate_as_commands(client, &mut conn).await?;
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

/// Authenticates the feed as the store's commands do (`AUTH [user] password`, RESP2's way),
/// so a feed never runs where the commands cannot: RESP3's `HELLO 3 AUTH` alone is taken by
/// a Valkey that has no password (its default user accepts any), where the commands' `AUTH`
/// is refused.
async fn authenticate_as_commands(
    client: &redis::Client,
    conn: &mut MultiplexedConnection,
) -> redis::RedisResult<()> {
    let settings = client.get_connection_info().redis_settings();
    let Some(password) = settings.password() else {
        return Ok(());
    };
    let mut auth = redis::cmd("AUTH");
    if let Some(user) = settings.username() {
        auth.arg(user);
    }
    auth.arg(password).query_async::<()>(conn).await
}

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
    /// The cluster's slots changed hands (a failover, a resharding, a node added).
    Reshaped,
}

impl End {
    fn reason(&self) -> &'static str {
        match self {
            End::Lost => "feed connection lost",
            End::Apart => {
                "the store's commands failed or reach another Valkey server than the feed"
            }
            End::Moved => "the watched database's keys moved (SWAPDB?) or were flushed",
            End::Reshaped => "the cluster's slots changed hands (failover or resharding)",
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_attempts_wait_longer_up_to_the_cap_and_a_stable_feed_starts_over() {
        let mut retry = Retry::new();
        let ms: Vec<u128> = (0..6).map(|_| retry.advance().as_millis()).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 2000, 2000]);
        retry.lived(STABLE);
        assert_eq!(retry.advance(), RETRY_FIRST);
    }

    #[test]
    fn a_feed_that_breaks_soon_after_going_live_keeps_backing_off() {
        let mut retry = Retry::new();
        for _ in 0..4 {
            retry.advance();
        }
        retry.lived(STABLE - Duration::from_millis(1));
        assert_eq!(
            retry.advance(),
            RETRY_MAX,
            "a flapping feed stays at the cap"
        );
    }

    #[test]
    fn a_feed_that_stops_leaves_nothing_live() {
        let metrics = Arc::new(crate::observe::metrics::Metrics::new());
        let subscribers = Subscribers {
            cache: Some(ValidationCache::new(16, metrics.clone())),
            events: FeedEvents::new(metrics),
        };
        subscribers.go_live();
        subscribers.watching(&[("a-node".to_owned(), 16_384)]);
        assert!(subscribers.events.is_live());
        drop(Unwatched(&subscribers));
        assert!(!subscribers.events.is_live(), "WatchRevocations is told");
        let cache = subscribers.cache.as_ref().expect("cache");
        assert!(!cache.is_live(), "the cache answers nothing more");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_lasts_its_base_and_at_most_half_again() {
        let mut retry = Retry::new();
        let started = tokio::time::Instant::now();
        retry.pause().await;
        let waited = started.elapsed();
        assert!(
            waited >= RETRY_FIRST && waited <= RETRY_FIRST * 3 / 2,
            "{waited:?}"
        );
        assert_eq!(retry.advance(), RETRY_FIRST * 2, "the next pause doubles");
    }

    #[test]
    fn jitter_adds_at_most_half() {
        let base = Duration::from_millis(200);
        assert_eq!(jittered(base, 0), base);
        assert_eq!(jittered(base, u32::MAX), Duration::from_millis(300));
        let middle = jittered(base, u32::MAX / 2);
        assert!(middle > base && middle < Duration::from_millis(300));
    }
}
