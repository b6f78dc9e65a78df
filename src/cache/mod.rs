//! The coherent validation cache: the answers of valid access tokens kept in this replica's
//! memory, kept exactly as fresh as Valkey by Valkey's own invalidation pushes (`feed.rs`),
//! and the revocation events the same pushes feed to `WatchRevocations`.
//!
//! Guarantees (docs/sessions.md, "Validation cache"):
//! - Only answers that validate are cached (an unknown or random token never takes memory),
//!   at most `--validation-cache-entries` of them, none past its token's expiry or its
//!   session's absolute deadline.
//! - It answers only while the invalidation feed is connected and subscribed ("live");
//!   every break drops everything, and calls go to the store until the feed is back.
//! - A read that was in flight when an invalidation arrived never inserts: a generation
//!   taken before the store call must be unchanged when its answer is inserted.
//! - This replica's own writes drop the answers of the sessions they touched at once
//!   ([`OwnWrites`]), before Valkey's invalidation for them arrives on the feed.
//!
//! The parts: `table.rs` holds the answers (an answer is one shared [`SessionView`], no
//! session id, no token hashes: BENCHMARKS.md, "Validation cache"); `feed.rs` is the
//! invalidation feed, whose two subscribers are this cache and `events.rs` (what
//! `WatchRevocations` streams); `own_writes.rs` shows this replica's writes at once.

pub mod events;
pub mod feed;
mod own_writes;
mod table;

pub use events::{EVENT_BUFFER, FeedEvents, Invalidation};
pub use own_writes::OwnWrites;

use crate::domain::constant_time_eq;
use crate::domain::view::SessionView;
use crate::observe::metrics::Metrics;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use table::{Entry, State, session_slot, token_key};

/// A test-only pause between a store answer and its insertion into the cache (the
/// stale-read race, forced deterministically).
#[cfg(feature = "test-hooks")]
pub type InsertHook =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// The cache of one replica, shared by the validation path
/// ([`crate::api::validation::AccessTokens`]), the store wrapper that reports this replica's
/// own writes ([`OwnWrites`]) and the feed task.
pub struct ValidationCache {
    state: Mutex<State>,
    capacity: usize,
    metrics: Arc<Metrics>,
    #[cfg(feature = "test-hooks")]
    hook: std::sync::OnceLock<InsertHook>,
}

/// What a miss needs to cache the store's answer: the generation, taken before the store
/// was asked (an invalidation since bars the insert), and when it was taken (the answer's
/// life is counted from then: an earlier instant only shortens it).
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    generation: u64,
    taken_at: Instant,
}

impl ValidationCache {
    /// An empty, not yet live cache of at most `capacity` answers.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            capacity,
            metrics,
            #[cfg(feature = "test-hooks")]
            hook: std::sync::OnceLock::new(),
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

    /// A miss's ticket, taken before the store is asked; `None` while not live (the answer
    /// will not be cached).
    pub fn ticket(&self) -> Option<Ticket> {
        self.generation().map(|generation| Ticket {
            generation,
            taken_at: Instant::now(),
        })
    }

    /// Caches `view` for the token whose SHA-256 is `hash` for `left` after `ticket` was
    /// taken, if nothing was invalidated since.
    pub async fn remember(
        &self,
        hash: &[u8; 32],
        view: Arc<SessionView>,
        ticket: Ticket,
        left: std::time::Duration,
    ) {
        #[cfg(feature = "test-hooks")]
        if let Some(hook) = self.hook.get() {
            hook().await;
        }
        self.insert(hash, view, ticket.generation, ticket.taken_at + left);
    }

    /// Awaits `hook` between each store answer and its insertion (tests: the stale-read
    /// race, forced). Set once.
    #[cfg(feature = "test-hooks")]
    pub fn set_insert_hook(&self, hook: InsertHook) {
        let _ = self.hook.set(hook);
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
    }

    /// Drops the answers of session `sid` after this replica wrote it: its own caller must
    /// see the write at once (a revocation answered here must not validate here a moment
    /// later), before Valkey's invalidation for it arrives on the feed. The generation
    /// moves on, so a read in flight does not cache what it saw before the write.
    pub(crate) fn forget_session(&self, sid: &str) {
        let slot = session_slot(&Sha256::digest(sid.as_bytes()).into());
        let mut state = self.state();
        state.generation = state.generation.wrapping_add(1);
        state.remove_session(slot);
        self.metrics.set_cache_entries(state.entries.len());
    }

    /// Drops every answer after a write of this replica's whose sessions are not known
    /// here (a revocation of all or other sessions, the cap, a failed write that may have
    /// happened): rare next to refreshes, logouts and validations.
    pub(crate) fn forget_all(&self) {
        let mut state = self.state();
        state.clear();
        self.metrics.set_cache_entries(0);
    }

    /// Valkey says the keys behind `invalidations` changed: their answers go, and the
    /// generation moves on so that no read in flight inserts what it saw before.
    pub fn invalidate(&self, invalidations: &[Invalidation]) {
        let mut state = self.state();
        state.generation = state.generation.wrapping_add(1);
        for invalidation in invalidations {
            // A name that is not a hex SHA-256 was never cached under.
            let mut bytes = [0u8; 32];
            match invalidation {
                Invalidation::AccessHash(hash) => {
                    if hex::decode_to_slice(hash, &mut bytes).is_ok() {
                        let key = token_key(&bytes);
                        if state.entries.get(&key).is_some_and(|e| e.token == bytes) {
                            state.remove_key(key);
                        }
                    }
                }
                Invalidation::SessionKey(session_key) => {
                    if hex::decode_to_slice(session_key, &mut bytes).is_ok() {
                        state.remove_session(session_slot(&bytes));
                    }
                }
                Invalidation::Reset | Invalidation::Broken => {}
            }
        }
        self.metrics.set_cache_entries(state.entries.len());
    }
}

#[cfg(test)]
mod tests {
    use super::feed::invalidations;
    use super::*;
    use crate::domain::rotation::Presented;
    use crate::domain::{Lifetimes, Revocation, SessionRecord, sha256_hex};
    use crate::store::KeyLayout;
    use crate::store::{
        ByRefresh, Created, Found, FoundByHash, Refresh, Refreshed, SessionStore, StoreError,
    };
    use std::time::Duration;

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
        cache.invalidate(&invalidations(
            &KeyLayout::new("p:"),
            [b"p:did:unrelated".as_slice()],
        ));
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
        cache.invalidate(&invalidations(&KeyLayout::new("p:"), [key.as_bytes()]));
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
            cache.invalidate(&invalidations(&KeyLayout::new("p:"), [key.as_bytes()]));
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
        async fn delete_all_for_did(&self, _: &str, _: Revocation) -> Result<u32, StoreError> {
            std::future::pending().await
        }
        async fn ended(&self, _: &Presented) -> Result<Option<Revocation>, StoreError> {
            std::future::pending().await
        }
        async fn list_for_did(&self, _: &str) -> Result<Vec<SessionRecord>, StoreError> {
            std::future::pending().await
        }
        async fn update_handle(&self, _: &str, _: &str) -> Result<u32, StoreError> {
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
        let store = OwnWrites::new(Stuck, cache.clone());
        drop(store.delete_all_for_did("did:plc:alice", Revocation::AllForDid));
        assert_eq!(cache.len(), 1, "a write never polled did not start");
        let write = store.delete_all_for_did("did:plc:alice", Revocation::AllForDid);
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
