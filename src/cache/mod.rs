//! The coherent validation cache: valid answers of `find_by_access_hash` kept in this
//! replica's memory, kept exactly as fresh as Valkey by Valkey's own invalidation pushes
//! (`feed.rs`), and the revocation events the same pushes feed to `WatchRevocations`.
//!
//! Guarantees (README, "Validation cache"):
//! - Only answers that validate are cached (an unknown or random token never takes memory),
//!   at most `--validation-cache-entries` of them, none past its token's
//!   `accessTokenExpiresAt`.
//! - It answers only while the invalidation feed is connected and subscribed ("live");
//!   every break drops everything, and calls go to the store until the feed is back.
//! - A read that was in flight when an invalidation arrived never inserts: a generation
//!   taken before the store call must be unchanged when its answer is inserted.

pub mod feed;

use crate::metrics::Metrics;
use crate::rotation::Presented;
use crate::session::{SessionRecord, sha256_hex};
use crate::store::{
    ByRefresh, Created, Found, Lifetimes, Refresh, Refreshed, SessionStore, StoreError,
};
use crate::telemetry;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
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

/// One cached answer.
struct Entry {
    found: Found,
    /// When the store's clock read `found.now_ms`, on this replica's monotonic clock.
    read_at: Instant,
    /// When the token stops validating (`accessTokenExpiresAt`), on the same clock.
    expires: Instant,
}

#[derive(Default)]
struct State {
    live: bool,
    generation: u64,
    /// Boxed: the table's slots stay small, so its spare capacity (up to half of it right
    /// after it grows) costs pointers, not whole records.
    entries: HashMap<String, Box<Entry>>,
    /// sid → the cached token hashes of that session, so that a change of `data:<sid>`
    /// drops them all. Never leaves this module.
    by_sid: HashMap<String, Vec<String>>,
}

impl State {
    fn remove_hash(&mut self, hash: &str) -> bool {
        let Some(entry) = self.entries.remove(hash) else {
            return false;
        };
        let sid = &entry.found.record.sid;
        if let Some(hashes) = self.by_sid.get_mut(sid) {
            hashes.retain(|h| h != hash);
            if hashes.is_empty() {
                self.by_sid.remove(sid);
            }
        }
        true
    }

    fn remove_sid(&mut self, sid: &str) {
        for hash in self.by_sid.remove(sid).unwrap_or_default() {
            self.entries.remove(&hash);
        }
    }

    fn clear(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.entries.clear();
        self.by_sid.clear();
    }
}

/// A test-only pause between a store answer and its insertion into the cache (the
/// stale-read race, forced deterministically).
pub type InsertHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The cache and the event channel of one replica, shared by the store wrapper
/// ([`Cached`]) and the feed task.
pub struct ValidationCache {
    state: Mutex<State>,
    capacity: usize,
    metrics: Arc<Metrics>,
    events: broadcast::Sender<Invalidation>,
}

impl ValidationCache {
    /// An empty, not yet live cache of at most `capacity` answers.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Arc::new(Self {
            state: Mutex::new(State::default()),
            capacity,
            metrics,
            events,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent with each
        // other in a way that validates a revoked token (removal is the only partial
        // operation), so a poisoned lock is used as is.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the cache answers now (its feed is connected and subscribed).
    pub fn is_live(&self) -> bool {
        self.state().live
    }

    /// How many answers are cached.
    pub fn len(&self) -> usize {
        self.state().entries.len()
    }

    /// Whether no answer is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new receiver of revocation events (for one `WatchRevocations` stream).
    pub fn subscribe(&self) -> broadcast::Receiver<Invalidation> {
        self.events.subscribe()
    }

    /// The cached answer for `hash`, its store clock moved on by the time since it was
    /// read; `None` when not live, not cached, or past its token's expiry.
    fn get(&self, hash: &str) -> Option<Found> {
        let mut state = self.state();
        if !state.live {
            return None;
        }
        let now = Instant::now();
        let entry = state.entries.get(hash)?;
        if now >= entry.expires {
            state.remove_hash(hash);
            self.metrics.set_cache_entries(state.entries.len());
            return None;
        }
        let elapsed = i64::try_from(now.duration_since(entry.read_at).as_millis()).unwrap_or(0);
        let mut found = entry.found.clone();
        found.now_ms = found.now_ms.saturating_add(elapsed);
        Some(found)
    }

    /// The generation to pass to [`ValidationCache::insert`], taken before the store is
    /// asked; `None` while not live (the answer will not be cached).
    fn generation(&self) -> Option<u64> {
        let state = self.state();
        state.live.then_some(state.generation)
    }

    /// Caches `found` for `hash` if nothing was invalidated since `generation` was taken
    /// and it validates `hash` now; `read_at` is when the store was asked (an earlier
    /// instant only shortens the entry's life).
    fn insert(&self, hash: &str, found: &Found, generation: u64, read_at: Instant) {
        let record = &found.record;
        if !record.accepts_access_hash(hash, found.now_ms) {
            return;
        }
        let left = record.access_token_expires_at.saturating_sub(found.now_ms);
        let expires = read_at + Duration::from_millis(u64::try_from(left).unwrap_or(0));
        let mut state = self.state();
        if !state.live || state.generation != generation {
            return;
        }
        // Full: evict any one entry (HashMap order is effectively random). Expired entries
        // need no sweep: Valkey expires their access key at the same moment and pushes its
        // invalidation, and a read past the expiry drops the entry anyway.
        if state.entries.len() >= self.capacity
            && !state.entries.contains_key(hash)
            && let Some(victim) = state.entries.keys().next().cloned()
        {
            state.remove_hash(&victim);
        }
        state.remove_hash(hash);
        state
            .by_sid
            .entry(record.sid.clone())
            .or_default()
            .push(hash.to_owned());
        state.entries.insert(
            hash.to_owned(),
            Box::new(Entry {
                found: found.clone(),
                read_at,
                expires,
            }),
        );
        self.metrics.set_cache_entries(state.entries.len());
    }

    /// The feed subscribed: the cache may answer from now on (it starts empty).
    pub fn go_live(&self) {
        let mut state = self.state();
        state.clear();
        state.live = true;
        self.metrics.set_cache_entries(0);
        drop(state);
        // A stream may have missed events while the feed was down.
        let _ = self.events.send(Invalidation::Reset);
    }

    /// Drops everything: the feed broke, or with `still_live` the feed is intact but Valkey
    /// was flushed (`FLUSHALL`'s null invalidation).
    pub fn reset(&self, still_live: bool) {
        let mut state = self.state();
        let was_live = state.live;
        state.clear();
        state.live = still_live;
        self.metrics.set_cache_entries(0);
        drop(state);
        if was_live {
            self.metrics.cache_reset();
            let _ = self.events.send(if still_live {
                Invalidation::Reset
            } else {
                Invalidation::Broken
            });
        }
    }

    /// Drops every entry after this replica wrote sessions: its own caller must see the
    /// write at once (a revocation answered here must not validate here a moment later),
    /// before Valkey's invalidation for it arrives on the feed. The generation moves on,
    /// so a read in flight does not cache what it saw before the write. Coarse (every
    /// entry, not the session's), but writes are rare next to validations.
    fn forget_after_write(&self) {
        let mut state = self.state();
        state.clear();
        self.metrics.set_cache_entries(0);
    }

    /// Valkey says these keys (full names, under `prefix`) changed.
    pub fn invalidate_keys<'a>(&self, prefix: &str, keys: impl IntoIterator<Item = &'a [u8]>) {
        let access = format!("{prefix}access:");
        let data = format!("{prefix}data:");
        let mut events = Vec::new();
        let mut state = self.state();
        state.generation = state.generation.wrapping_add(1);
        let mut count = 0u64;
        for key in keys {
            count += 1;
            let Ok(key) = std::str::from_utf8(key) else {
                continue;
            };
            if let Some(hash) = key.strip_prefix(access.as_str()) {
                state.remove_hash(hash);
                events.push(Invalidation::AccessHash(hash.to_owned()));
            } else if let Some(sid) = key.strip_prefix(data.as_str()) {
                state.remove_sid(sid);
                events.push(Invalidation::SessionKey(sha256_hex(sid)));
            }
        }
        self.metrics.set_cache_entries(state.entries.len());
        drop(state);
        self.metrics.cache_invalidations(count);
        for event in events {
            let _ = self.events.send(event);
        }
    }
}

/// A store whose `find_by_access_hash` answers from a [`ValidationCache`] when it can;
/// every other operation goes straight to the inner store (their effects reach the cache
/// through Valkey's invalidations, like any other writer's).
pub struct Cached<S> {
    inner: S,
    cache: Arc<ValidationCache>,
    hook: Option<InsertHook>,
}

impl<S> Cached<S> {
    /// `inner`, with validations answered from `cache` while it is live.
    pub fn new(inner: S, cache: Arc<ValidationCache>) -> Self {
        Self {
            inner,
            cache,
            hook: None,
        }
    }

    /// The same store, awaiting `hook` between each store answer and its insertion (tests).
    pub fn with_insert_hook(mut self, hook: InsertHook) -> Self {
        self.hook = Some(hook);
        self
    }
}

impl<S: SessionStore> SessionStore for Cached<S> {
    async fn create(
        &self,
        record: &SessionRecord,
        lifetimes: Lifetimes,
    ) -> Result<Created, StoreError> {
        let written = self.inner.create(record, lifetimes).await;
        self.cache.forget_after_write();
        written
    }

    async fn find_by_access_hash(&self, access_hash: &str) -> Result<Option<Found>, StoreError> {
        if let Some(found) = self.cache.get(access_hash) {
            self.cache.metrics.cache_hit();
            telemetry::record("barazo.cache", || "hit");
            return Ok(Some(found));
        }
        let generation = self.cache.generation();
        telemetry::record("barazo.cache", || {
            if generation.is_some() {
                "miss"
            } else {
                "bypass"
            }
        });
        self.cache.metrics.cache_miss();
        let read_at = Instant::now();
        let found = self.inner.find_by_access_hash(access_hash).await?;
        if let (Some(found), Some(generation)) = (&found, generation) {
            if let Some(hook) = &self.hook {
                hook().await;
            }
            self.cache.insert(access_hash, found, generation, read_at);
        }
        Ok(found)
    }

    async fn refresh(
        &self,
        presented: &Presented,
        refresh: &Refresh<'_>,
        lifetimes: Lifetimes,
    ) -> Result<ByRefresh<Refreshed>, StoreError> {
        let written = self.inner.refresh(presented, refresh, lifetimes).await;
        self.cache.forget_after_write();
        written
    }

    async fn delete(
        &self,
        presented: &Presented,
        grace: Duration,
    ) -> Result<ByRefresh<()>, StoreError> {
        let written = self.inner.delete(presented, grace).await;
        self.cache.forget_after_write();
        written
    }

    async fn delete_all_for_did(&self, did: &str) -> Result<u32, StoreError> {
        let written = self.inner.delete_all_for_did(did).await;
        self.cache.forget_after_write();
        written
    }

    async fn list_for_did(&self, did: &str) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.list_for_did(did).await
    }

    async fn revoke_in_did(&self, did: &str, sid: &str) -> Result<bool, StoreError> {
        let written = self.inner.revoke_in_did(did, sid).await;
        self.cache.forget_after_write();
        written
    }

    async fn revoke_others(
        &self,
        presented: &Presented,
        grace: Duration,
    ) -> Result<ByRefresh<u32>, StoreError> {
        let written = self.inner.revoke_others(presented, grace).await;
        self.cache.forget_after_write();
        written
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_000_000_000;

    fn answer(n: u8, expires_in_ms: i64) -> (String, Found) {
        let hash = sha256_hex(&format!("token {n}"));
        let record = SessionRecord {
            sid: sha256_hex(&format!("sid {n}")),
            did: "did:plc:alice".into(),
            handle: "alice.test".into(),
            access_token_hash: hash.clone(),
            access_token_expires_at: NOW + expires_in_ms,
            created_at: NOW,
            refreshed_at: None,
            user_agent: String::new(),
            ip_address: String::new(),
            ..Default::default()
        };
        (
            hash,
            Found {
                record,
                now_ms: NOW,
            },
        )
    }

    fn live(capacity: usize) -> Arc<ValidationCache> {
        let cache = ValidationCache::new(capacity, Arc::new(Metrics::new()));
        cache.go_live();
        cache
    }

    fn put(cache: &ValidationCache, hash: &str, found: &Found) {
        let generation = cache.generation().expect("live");
        cache.insert(hash, found, generation, Instant::now());
    }

    #[test]
    fn holds_at_most_its_capacity() {
        let cache = live(2);
        for n in 0..5 {
            let (hash, found) = answer(n, 60_000);
            put(&cache, &hash, &found);
            assert!(cache.get(&hash).is_some(), "the newest is kept");
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.state().by_sid.len() <= 2, "the sid index shrinks too");
    }

    #[test]
    fn answers_only_while_live_and_drops_everything_on_a_break() {
        let cache = ValidationCache::new(4, Arc::new(Metrics::new()));
        assert_eq!(cache.generation(), None, "not live: nothing is cached");
        cache.go_live();
        let (hash, found) = answer(1, 60_000);
        put(&cache, &hash, &found);
        assert!(cache.get(&hash).is_some());
        cache.reset(false);
        assert!(cache.get(&hash).is_none());
        assert!(cache.is_empty());
        assert_eq!(cache.generation(), None);
    }

    #[test]
    fn an_invalidation_between_read_and_insert_wins() {
        let cache = live(4);
        let (hash, found) = answer(1, 60_000);
        let generation = cache.generation().expect("live");
        cache.invalidate_keys("p:", [b"p:did:unrelated".as_slice()]);
        cache.insert(&hash, &found, generation, Instant::now());
        assert!(
            cache.is_empty(),
            "any invalidation since the read bars the insert"
        );
    }

    #[test]
    fn a_data_invalidation_drops_every_token_of_the_session() {
        let cache = live(4);
        let (hash, found) = answer(1, 60_000);
        put(&cache, &hash, &found);
        let key = format!("p:data:{}", found.record.sid);
        cache.invalidate_keys("p:", [key.as_bytes()]);
        assert!(cache.get(&hash).is_none());
        assert!(cache.state().by_sid.is_empty());
    }

    #[test]
    fn expired_or_invalid_answers_are_not_served() {
        let cache = live(4);
        let (hash, found) = answer(1, 0);
        put(&cache, &hash, &found);
        assert!(
            cache.is_empty(),
            "an answer that does not validate is not cached"
        );
        let (hash, found) = answer(2, 1);
        put(&cache, &hash, &found);
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            cache.get(&hash).is_none(),
            "never past accessTokenExpiresAt"
        );
    }
}
