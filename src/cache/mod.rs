//! The coherent validation cache: the answers of valid access tokens kept in this replica's
//! memory, kept exactly as fresh as Valkey by Valkey's own invalidation pushes (`feed.rs`),
//! and the revocation events the same pushes feed to `WatchRevocations`.
//!
//! Guarantees (README, "Validation cache"):
//! - Only answers that validate are cached (an unknown or random token never takes memory),
//!   at most `--validation-cache-entries` of them, none past its token's expiry or its
//!   session's absolute deadline.
//! - It answers only while the invalidation feed is connected and subscribed ("live");
//!   every break drops everything, and calls go to the store until the feed is back.
//! - A read that was in flight when an invalidation arrived never inserts: a generation
//!   taken before the store call must be unchanged when its answer is inserted.
//! - This replica's own writes drop the answers of the sessions they touched at once
//!   ([`Cached`]), before Valkey's invalidation for them arrives on the feed.
//!
//! Layout, for memory (BENCHMARKS.md, "Validation cache"): an answer is one shared
//! [`SessionView`] (no session id, no token hashes), an entry is one 64-byte allocation
//! keyed by 8 bytes of its token's hash (the whole hash is compared on a hit), and the
//! entries of one session are chained through the entries themselves, so that finding a
//! session's tokens costs one 8-byte index slot per session.

pub mod feed;

use crate::domain::Lifetimes;
use crate::domain::rotation::{Lookup, Presented};
use crate::domain::view::SessionView;
use crate::domain::{SessionRecord, constant_time_eq};
use crate::observe::metrics::Metrics;
use crate::store::{
    ByRefresh, Created, Found, FoundByHash, Refresh, Refreshed, SessionStore, StoreError,
};
use sha2::{Digest, Sha256};
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

/// The map key of a token hash: its first 8 bytes, never 0 (0 ends a session's chain).
/// Two tokens may share one; the whole hash decides a hit.
fn token_key(hash: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(first) | 1
}

/// The index slot of a session: the first 8 bytes of its session key. Sessions that share
/// one share a chain, so dropping one session's answers may drop another's: never the
/// other way round.
fn session_slot(session_key: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&session_key[..8]);
    u64::from_le_bytes(first)
}

/// One cached answer.
struct Entry {
    /// The token's whole hash.
    token: [u8; 32],
    view: Arc<SessionView>,
    /// When the answer stops holding (the token's expiry or the session's deadline,
    /// whichever is first), on this replica's monotonic clock.
    expires: Instant,
    /// The key of the next cached token of the same session slot; 0 ends the chain.
    next: u64,
}

#[derive(Default)]
struct State {
    live: bool,
    generation: u64,
    /// Boxed: the table's slots stay 16 bytes, so its spare capacity (up to half of it
    /// right after it grows) costs little.
    entries: HashMap<u64, Box<Entry>>,
    /// Session slot → the key of the first entry of its chain.
    sessions: HashMap<u64, u64>,
}

impl State {
    /// Removes the entry under `key`, unlinking it from its session's chain.
    fn remove_key(&mut self, key: u64) -> bool {
        let Some(entry) = self.entries.remove(&key) else {
            return false;
        };
        let slot = session_slot(entry.view.session_key_bytes());
        match self.sessions.get(&slot).copied() {
            Some(head) if head == key => {
                if entry.next == 0 {
                    self.sessions.remove(&slot);
                } else {
                    self.sessions.insert(slot, entry.next);
                }
            }
            Some(mut at) => {
                // Chains are a session's live tabs: a handful at most.
                while let Some(before) = self.entries.get_mut(&at) {
                    if before.next == key {
                        before.next = entry.next;
                        break;
                    }
                    at = before.next;
                }
            }
            None => {}
        }
        true
    }

    /// Removes every entry chained under `slot`.
    fn remove_session(&mut self, slot: u64) {
        let mut at = self.sessions.remove(&slot).unwrap_or(0);
        while at != 0 {
            at = self.entries.remove(&at).map_or(0, |entry| entry.next);
        }
    }

    fn clear(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.entries.clear();
        self.sessions.clear();
        // An emptied cache gives its tables' memory back too.
        self.entries.shrink_to_fit();
        self.sessions.shrink_to_fit();
    }
}

/// A test-only pause between a store answer and its insertion into the cache (the
/// stale-read race, forced deterministically).
pub type InsertHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The cache and the event channel of one replica, shared by the validation path
/// ([`crate::api::validation::AccessTokens`]), the store wrapper that reports this replica's
/// own writes ([`Cached`]) and the feed task.
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
        // A panic while holding the lock may have left a session's chain half unlinked, and
        // an entry off its chain would outlive its session's `data:` invalidation: the
        // cache starts over empty (nothing inside the lock is known to panic).
        self.state.lock().unwrap_or_else(|poisoned| {
            let mut state = poisoned.into_inner();
            state.clear();
            self.state.clear_poison();
            state
        })
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

    /// The cached answer for the token whose SHA-256 is `hash`; `None` when not live, not
    /// cached, or past its expiry.
    pub fn get(&self, hash: &[u8; 32]) -> Option<Arc<SessionView>> {
        let key = token_key(hash);
        let mut state = self.state();
        if !state.live {
            return None;
        }
        let entry = state.entries.get(&key)?;
        if !constant_time_eq(&entry.token, hash) {
            return None;
        }
        if Instant::now() >= entry.expires {
            state.remove_key(key);
            self.metrics.set_cache_entries(state.entries.len());
            return None;
        }
        Some(entry.view.clone())
    }

    /// The generation to pass to [`ValidationCache::insert`], taken before the store is
    /// asked; `None` while not live (the answer will not be cached).
    pub fn generation(&self) -> Option<u64> {
        let state = self.state();
        state.live.then_some(state.generation)
    }

    /// Caches `view` for the token whose SHA-256 is `hash` until `expires`, if nothing was
    /// invalidated since `generation` was taken.
    pub fn insert(
        &self,
        hash: &[u8; 32],
        view: Arc<SessionView>,
        generation: u64,
        expires: Instant,
    ) {
        if expires <= Instant::now() {
            return;
        }
        let key = token_key(hash);
        let slot = session_slot(view.session_key_bytes());
        let mut state = self.state();
        if !state.live || state.generation != generation {
            return;
        }
        // The same key (this token again, or another sharing its 8 bytes): replaced.
        state.remove_key(key);
        // Full: evict the entry in the first occupied slot of the table (slots are ordered
        // by a keyed hash, so which answer goes is arbitrary, not least recently used, and
        // the table is at least half full, so the scan is short). Expired entries
        // need no sweep: Valkey expires their access key at the same moment and pushes its
        // invalidation, and a read past the expiry drops the entry anyway.
        if state.entries.len() >= self.capacity
            && let Some(victim) = state.entries.keys().next().copied()
        {
            state.remove_key(victim);
        }
        if self.capacity == 0 {
            return;
        }
        let next = state.sessions.insert(slot, key).unwrap_or(0);
        state.entries.insert(
            key,
            Box::new(Entry {
                token: *hash,
                view,
                expires,
                next,
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

    /// Counts a check that could not show the feed and the store's commands on one server.
    pub fn count_unverified(&self) {
        self.metrics.cache_unverified();
    }

    /// Drops everything: the feed broke, or with `still_live` the feed is intact but Valkey
    /// was flushed (`FLUSHALL`'s null invalidation).
    pub fn reset(&self, still_live: bool) {
        let mut state = self.state();
        let was_live = state.live;
        state.clear();
        // A flush notice that arrives after the feed broke (from the old connection) must
        // not make the cache answer with no feed behind it.
        state.live = was_live && still_live;
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

    /// Drops the answers of session `sid` after this replica wrote it: its own caller must
    /// see the write at once (a revocation answered here must not validate here a moment
    /// later), before Valkey's invalidation for it arrives on the feed. The generation
    /// moves on, so a read in flight does not cache what it saw before the write.
    fn forget_session(&self, sid: &str) {
        let slot = session_slot(&Sha256::digest(sid.as_bytes()).into());
        let mut state = self.state();
        state.generation = state.generation.wrapping_add(1);
        state.remove_session(slot);
        self.metrics.set_cache_entries(state.entries.len());
    }

    /// Drops every answer after a write of this replica's whose sessions are not known
    /// here (a revocation of all or other sessions, the cap, a failed write that may have
    /// happened): rare next to refreshes, logouts and validations.
    fn forget_all(&self) {
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
                // A key that is not a hex SHA-256 was never cached under.
                let mut bytes = [0u8; 32];
                if hex::decode_to_slice(hash, &mut bytes).is_ok() {
                    let key = token_key(&bytes);
                    if state.entries.get(&key).is_some_and(|e| e.token == bytes) {
                        state.remove_key(key);
                    }
                }
                events.push(Invalidation::AccessHash(hash.to_owned()));
            } else if let Some(sid) = key.strip_prefix(data.as_str()) {
                let session_key: [u8; 32] = Sha256::digest(sid.as_bytes()).into();
                state.remove_session(session_slot(&session_key));
                events.push(Invalidation::SessionKey(crate::domain::lower_hex(
                    &session_key,
                )));
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

/// A store that tells a [`ValidationCache`] about this replica's own writes, so they show
/// in this replica's validations at once rather than when Valkey's invalidation for them
/// arrives. Every operation goes straight to the inner store; validations are answered
/// from the cache by [`crate::api::validation::AccessTokens`].
pub struct Cached<S> {
    inner: S,
    cache: Arc<ValidationCache>,
}

impl<S> Cached<S> {
    /// `inner`, reporting its writes to `cache`.
    pub fn new(inner: S, cache: Arc<ValidationCache>) -> Self {
        Self { inner, cache }
    }

    /// Drops what a write answered by `written` may have changed: the sessions `touched`
    /// names, everything when it failed (it may have happened all the same) or `touched`
    /// cannot name them.
    fn forget<'a, T>(
        &self,
        written: &'a Result<T, StoreError>,
        touched: impl FnOnce(&'a T) -> Touched<'a>,
    ) {
        match written.as_ref().map(touched) {
            Ok(Touched::Nothing) => {}
            Ok(Touched::Session(sid)) => self.cache.forget_session(sid),
            Ok(Touched::Unknown) | Err(_) => self.cache.forget_all(),
        }
    }
}

/// Armed while a write is in flight: dropped armed (the call cancelled by its deadline or
/// its caller mid-write), it drops every answer, since the write may have landed in Valkey
/// and which sessions it touched is not known.
struct InFlight<'a>(Option<&'a ValidationCache>);

impl InFlight<'_> {
    /// The write answered: [`Cached::forget`] takes it from here.
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(cache) = self.0 {
            cache.forget_all();
        }
    }
}

/// Which cached sessions a write of this replica's changed.
enum Touched<'a> {
    /// None (e.g. a refresh token that found no session).
    Nothing,
    /// The session with this id.
    Session(&'a str),
    /// Some not known here.
    Unknown,
}

/// The session a presented refresh token names by itself, when it does (a session id
/// does; a rotated token names a family, which only the store resolves).
fn named_session<'a>(presented: &'a Presented) -> Touched<'a> {
    match &presented.lookup {
        Lookup::Sid(sid) => Touched::Session(sid),
        _ => Touched::Unknown,
    }
}

impl<S: SessionStore> SessionStore for Cached<S> {
    async fn create(
        &self,
        record: &SessionRecord,
        lifetimes: Lifetimes,
    ) -> Result<Created, StoreError> {
        let in_flight = InFlight(Some(&self.cache));
        let written = self.inner.create(record, lifetimes).await;
        in_flight.answered();
        // A new session has no cached answers; only sessions revoked for the cap matter.
        self.forget(&written, |created| {
            if created.revoked == 0 {
                Touched::Nothing
            } else {
                Touched::Unknown
            }
        });
        written
    }

    async fn find_by_access_hash(&self, access_hash: &str) -> Result<Option<Found>, StoreError> {
        self.inner.find_by_access_hash(access_hash).await
    }

    async fn find_by_access_hashes(
        &self,
        access_hashes: &[String],
    ) -> Result<Vec<FoundByHash>, StoreError> {
        self.inner.find_by_access_hashes(access_hashes).await
    }

    async fn refresh(
        &self,
        presented: &Presented,
        refresh: &Refresh<'_>,
        lifetimes: Lifetimes,
    ) -> Result<ByRefresh<Refreshed>, StoreError> {
        let in_flight = InFlight(Some(&self.cache));
        let written = self.inner.refresh(presented, refresh, lifetimes).await;
        in_flight.answered();
        self.forget(&written, |answer| match answer {
            ByRefresh::Found(refreshed) => Touched::Session(&refreshed.record.sid),
            ByRefresh::Reused { sid } => Touched::Session(sid),
            ByRefresh::NotFound => Touched::Nothing,
            ByRefresh::PastLifetime => named_session(presented),
        });
        written
    }

    async fn delete(
        &self,
        presented: &Presented,
        grace: Duration,
    ) -> Result<ByRefresh<String>, StoreError> {
        let in_flight = InFlight(Some(&self.cache));
        let written = self.inner.delete(presented, grace).await;
        in_flight.answered();
        self.forget(&written, |answer| match answer {
            ByRefresh::NotFound => Touched::Nothing,
            ByRefresh::Found(sid) | ByRefresh::Reused { sid } => Touched::Session(sid),
            ByRefresh::PastLifetime => named_session(presented),
        });
        written
    }

    async fn delete_all_for_did(&self, did: &str) -> Result<u32, StoreError> {
        let in_flight = InFlight(Some(&self.cache));
        let written = self.inner.delete_all_for_did(did).await;
        in_flight.answered();
        self.forget(&written, |&count| {
            if count == 0 {
                Touched::Nothing
            } else {
                Touched::Unknown
            }
        });
        written
    }

    async fn list_for_did(&self, did: &str) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.list_for_did(did).await
    }

    async fn revoke_in_did(&self, did: &str, sid: &str) -> Result<bool, StoreError> {
        let in_flight = InFlight(Some(&self.cache));
        let written = self.inner.revoke_in_did(did, sid).await;
        in_flight.answered();
        self.forget(&written, |_| Touched::Session(sid));
        written
    }

    async fn revoke_others(
        &self,
        presented: &Presented,
        grace: Duration,
    ) -> Result<ByRefresh<u32>, StoreError> {
        let in_flight = InFlight(Some(&self.cache));
        let written = self.inner.revoke_others(presented, grace).await;
        in_flight.answered();
        self.forget(&written, |answer| match answer {
            ByRefresh::Found(0) | ByRefresh::NotFound => Touched::Nothing,
            ByRefresh::Reused { sid } => Touched::Session(sid),
            _ => Touched::Unknown,
        });
        written
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::sha256_hex;

    const NOW: i64 = 1_764_000_000_000;

    /// The hash of token `n` of session `session`, and that session's answer.
    fn answer(session: u8, n: u8) -> ([u8; 32], Arc<SessionView>, String) {
        let sid = sha256_hex(&format!("sid {session}"));
        let record = SessionRecord {
            sid: sid.clone(),
            did: "did:plc:alice".into(),
            handle: "alice.test".into(),
            access_token_hash: sha256_hex(&format!("token {session} {n}")),
            access_token_expires_at: NOW + 60_000,
            created_at: NOW,
            ..Default::default()
        };
        let hash = Sha256::digest(format!("token {session} {n}").as_bytes()).into();
        (
            hash,
            Arc::new(SessionView::of(
                &record,
                &Lifetimes::for_tests(Duration::from_secs(3600), None),
            )),
            sid,
        )
    }

    fn live(capacity: usize) -> Arc<ValidationCache> {
        let cache = ValidationCache::new(capacity, Arc::new(Metrics::new()));
        cache.go_live();
        cache
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn put(cache: &ValidationCache, hash: &[u8; 32], view: &Arc<SessionView>) {
        let generation = cache.generation().expect("live");
        cache.insert(hash, view.clone(), generation, soon());
    }

    #[test]
    fn holds_at_most_its_capacity() {
        let cache = live(2);
        for n in 0..5 {
            let (hash, view, _) = answer(n, 0);
            put(&cache, &hash, &view);
            assert!(cache.get(&hash).is_some(), "the newest is kept");
        }
        assert_eq!(cache.len(), 2);
        assert!(
            cache.state().sessions.len() <= 2,
            "the session index shrinks too"
        );
    }

    #[test]
    fn a_hit_needs_the_whole_hash() {
        let cache = live(4);
        let (hash, view, _) = answer(1, 0);
        put(&cache, &hash, &view);
        let mut other = hash;
        other[31] ^= 1; // same map key, another token
        assert_eq!(token_key(&other), token_key(&hash));
        assert!(cache.get(&other).is_none());
        assert!(cache.get(&hash).is_some());
    }

    #[test]
    fn answers_only_while_live_and_drops_everything_on_a_break() {
        let cache = ValidationCache::new(4, Arc::new(Metrics::new()));
        assert_eq!(cache.generation(), None, "not live: nothing is cached");
        cache.go_live();
        let (hash, view, _) = answer(1, 0);
        put(&cache, &hash, &view);
        assert!(cache.get(&hash).is_some());
        cache.reset(false);
        assert!(cache.get(&hash).is_none());
        assert!(cache.is_empty());
        assert_eq!(cache.generation(), None);
    }

    #[test]
    fn an_invalidation_between_read_and_insert_wins() {
        let cache = live(4);
        let (hash, view, _) = answer(1, 0);
        let generation = cache.generation().expect("live");
        cache.invalidate_keys("p:", [b"p:did:unrelated".as_slice()]);
        cache.insert(&hash, view, generation, soon());
        assert!(
            cache.is_empty(),
            "any invalidation since the read bars the insert"
        );
    }

    #[test]
    fn a_data_invalidation_drops_every_token_of_the_session_and_only_those() {
        let cache = live(8);
        let tabs: Vec<_> = (0..3).map(|n| answer(1, n)).collect();
        for (hash, view, _) in &tabs {
            put(&cache, hash, view);
        }
        let (other, other_view, _) = answer(2, 0);
        put(&cache, &other, &other_view);
        let key = format!("p:data:{}", tabs[0].2);
        cache.invalidate_keys("p:", [key.as_bytes()]);
        for (hash, _, _) in &tabs {
            assert!(cache.get(hash).is_none());
        }
        assert!(
            cache.get(&other).is_some(),
            "another session's answer stays"
        );
        assert_eq!(cache.state().sessions.len(), 1);
    }

    #[test]
    fn an_access_invalidation_drops_one_tab_and_keeps_the_chain() {
        let cache = live(8);
        let tabs: Vec<_> = (0..3).map(|n| answer(1, n)).collect();
        for (hash, view, _) in &tabs {
            put(&cache, hash, view);
        }
        // The middle of the chain (inserted second), then its head (inserted last).
        for gone in [1, 2] {
            let key = format!("p:access:{}", lower_hex_of(&tabs[gone].0));
            cache.invalidate_keys("p:", [key.as_bytes()]);
            assert!(cache.get(&tabs[gone].0).is_none());
        }
        assert!(cache.get(&tabs[0].0).is_some());
        // The session's chain still reaches the one left.
        cache.forget_session(&tabs[0].2);
        assert!(cache.is_empty());
        assert!(cache.state().sessions.is_empty());
    }

    #[test]
    fn an_own_write_forgets_its_session_and_bars_reads_in_flight() {
        let cache = live(8);
        let (hash, view, sid) = answer(1, 0);
        put(&cache, &hash, &view);
        let (other, other_view, _) = answer(2, 0);
        let generation = cache.generation().expect("live");
        cache.forget_session(&sid);
        assert!(cache.get(&hash).is_none());
        cache.insert(&other, other_view, generation, soon());
        assert!(
            cache.is_empty(),
            "a read from before the write is not cached"
        );
    }

    #[test]
    fn expired_answers_are_not_served() {
        let cache = live(4);
        let (hash, view, _) = answer(1, 0);
        let generation = cache.generation().expect("live");
        cache.insert(&hash, view.clone(), generation, Instant::now());
        assert!(cache.is_empty(), "an answer already expired is not cached");
        cache.insert(
            &hash,
            view,
            generation,
            Instant::now() + Duration::from_millis(1),
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(cache.get(&hash).is_none(), "never past its expiry");
        assert!(cache.is_empty());
    }

    #[test]
    fn a_flush_notice_after_the_feed_broke_does_not_revive_the_cache() {
        let cache = live(4);
        cache.reset(false);
        cache.reset(true);
        assert!(
            !cache.is_live(),
            "only the feed's subscription makes it live"
        );
        assert_eq!(cache.generation(), None);
    }

    /// A store whose every call waits forever: a write that never answers.
    struct Stuck;

    impl SessionStore for Stuck {
        async fn create(&self, _: &SessionRecord, _: Lifetimes) -> Result<Created, StoreError> {
            std::future::pending().await
        }
        async fn find_by_access_hash(&self, _: &str) -> Result<Option<Found>, StoreError> {
            std::future::pending().await
        }
        async fn find_by_access_hashes(
            &self,
            _: &[String],
        ) -> Result<Vec<FoundByHash>, StoreError> {
            std::future::pending().await
        }
        async fn refresh(
            &self,
            _: &Presented,
            _: &Refresh<'_>,
            _: Lifetimes,
        ) -> Result<ByRefresh<Refreshed>, StoreError> {
            std::future::pending().await
        }
        async fn delete(
            &self,
            _: &Presented,
            _: Duration,
        ) -> Result<ByRefresh<String>, StoreError> {
            std::future::pending().await
        }
        async fn delete_all_for_did(&self, _: &str) -> Result<u32, StoreError> {
            std::future::pending().await
        }
        async fn list_for_did(&self, _: &str) -> Result<Vec<SessionRecord>, StoreError> {
            std::future::pending().await
        }
        async fn revoke_in_did(&self, _: &str, _: &str) -> Result<bool, StoreError> {
            std::future::pending().await
        }
        async fn revoke_others(
            &self,
            _: &Presented,
            _: Duration,
        ) -> Result<ByRefresh<u32>, StoreError> {
            std::future::pending().await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            std::future::pending().await
        }
    }

    /// A write cancelled mid-flight (the caller's deadline) may still land in Valkey, so
    /// every answer goes; one that was never started changes nothing.
    #[tokio::test]
    async fn a_cancelled_write_drops_every_answer() {
        let cache = live(4);
        let (hash, view, _) = answer(1, 0);
        put(&cache, &hash, &view);
        let store = Cached::new(Stuck, cache.clone());
        drop(store.delete_all_for_did("did:plc:alice"));
        assert_eq!(cache.len(), 1, "a write never polled did not start");
        let write = store.delete_all_for_did("did:plc:alice");
        tokio::select! {
            biased;
            _ = write => panic!("the stuck store answered"),
            () = async {} => {}
        }
        assert!(cache.is_empty(), "the cancelled write dropped the cache");
    }

    fn lower_hex_of(hash: &[u8; 32]) -> String {
        crate::domain::lower_hex(hash)
    }
}
