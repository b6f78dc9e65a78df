//! What the invalidation feed tells `WatchRevocations` streams: one broadcast ring of
//! [`Invalidation`]s, and whether the feed is live. The feed publishes here whether or not
//! the validation cache is on.

use crate::observe::metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::broadcast;

/// How many revocation events the feed keeps for `WatchRevocations` streams that have not
/// read them yet; a stream further behind gets a reset instead (its memory stays flat).
pub const EVENT_BUFFER: usize = 1024;

/// What a `WatchRevocations` caller must drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// Answers for the access token with this hash (hex SHA-256).
    AccessHash(String),
    /// Answers for every token of the session whose key (hex SHA-256 of the sid) this is.
    SessionKey(String),
    /// Everything: Valkey was flushed (or the feed became live).
    Reset,
    /// The feed broke: events may have been missed and more will not come until it is
    /// back, so streams end (their callers stop reusing answers).
    Broken,
}

/// The feed's events and liveness, for `WatchRevocations` (see
/// [`crate::api::revocations`]).
pub struct FeedEvents {
    live: AtomicBool,
    sender: broadcast::Sender<Invalidation>,
    metrics: Arc<Metrics>,
}

impl FeedEvents {
    /// No stream yet, the feed not live.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        let (sender, _) = broadcast::channel(EVENT_BUFFER);
        Arc::new(Self {
            live: AtomicBool::new(false),
            sender,
            metrics,
        })
    }

    /// A new receiver of events (for one `WatchRevocations` stream).
    pub fn subscribe(&self) -> broadcast::Receiver<Invalidation> {
        self.sender.subscribe()
    }

    /// Whether the feed is connected, subscribed and checked now.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// The feed became live: streams may have missed events while it was down.
    pub(crate) fn go_live(&self) {
        self.live.store(true, Ordering::SeqCst);
        self.metrics.set_cache_feed_live(true);
        let _ = self.sender.send(Invalidation::Reset);
    }

    /// The feed broke, or with `still_live` it is intact but Valkey was flushed.
    pub(crate) fn reset(&self, still_live: bool) {
        let was_live = self.live.load(Ordering::SeqCst);
        // A flush notice that arrives after the feed broke (from the old connection) must
        // not make the streams trust a feed that is gone.
        self.live.store(was_live && still_live, Ordering::SeqCst);
        self.metrics.set_cache_feed_live(was_live && still_live);
        if was_live {
            self.metrics.cache_reset();
            let _ = self.sender.send(if still_live {
                Invalidation::Reset
            } else {
                Invalidation::Broken
            });
        }
    }

    /// The cluster primaries the feeds are live on, with their slot counts (none: not live).
    pub(crate) fn watching(&self, primaries: &[(String, u64)]) {
        self.metrics.set_cache_feed_slots(primaries);
    }

    /// Counts a check that could not show the feed and the store's commands on one server.
    pub(crate) fn count_unverified(&self) {
        self.metrics.cache_unverified();
    }

    /// Keys changed in Valkey: one event each.
    pub(crate) fn publish(&self, invalidations: Vec<Invalidation>) {
        self.metrics
            .cache_invalidations(u64::try_from(invalidations.len()).unwrap_or(u64::MAX));
        for invalidation in invalidations {
            let _ = self.sender.send(invalidation);
        }
    }
}
