//! The one path that decides whether an access token is valid, shared by
//! `ValidateAccessToken` ([`crate::api::sessions`]) and the ext_authz `Check`
//! ([`crate::api::ext_authz`]): a token is checked the same way whichever door it came in by,
//! and answered from this replica's validation cache ([`crate::cache`]) when it holds the
//! answer.

use crate::api::error::RequestError;
use crate::cache::{Ticket, ValidationCache};
use crate::domain::Lifetimes;
use crate::domain::view::SessionView;
use crate::domain::{SessionRecord, is_well_formed_token, log_prefix, lower_hex};
use crate::observe::metrics::Metrics;
use crate::observe::telemetry;
use crate::rpc::Rpc;
use crate::store::{Found, SessionStore, StoreError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

/// Validates access tokens against one store.
pub struct AccessTokens<S> {
    store: Arc<S>,
    lifetimes: Lifetimes,
    metrics: Arc<Metrics>,
    cache: Option<Arc<ValidationCache>>,
}

impl<S: SessionStore> AccessTokens<S> {
    /// Validates against `store`, ending sessions at `lifetimes`' absolute deadline, and
    /// counts each answer in `metrics` (`barazo_session_validations_total`).
    pub fn new(store: Arc<S>, lifetimes: Lifetimes, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            lifetimes,
            metrics,
            cache: None,
        }
    }

    /// The same, answering from `cache` while it is live and filling it with valid answers.
    pub fn with_cache(mut self, cache: Arc<ValidationCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The session `token` belongs to, if the token is valid now; `None` for a token that
    /// is malformed, unknown, expired, superseded or past its session's absolute lifetime.
    /// A store failure is an error, never `None`: a caller must not log a user out, nor a
    /// gateway let a request through, because Valkey blinked. `rpc` names the caller's RPC
    /// in the log line of unreadable session data. Valid and invalid answers are counted
    /// here; failures are counted by the call layer ([`crate::api::call`]).
    pub async fn validate(
        &self,
        rpc: Rpc,
        token: &str,
    ) -> Result<Option<Arc<SessionView>>, RequestError> {
        let answer = self.lookup(rpc, token).await?;
        self.metrics
            .validation(if answer.is_some() { "valid" } else { "invalid" });
        Ok(answer)
    }

    /// [`AccessTokens::validate`] for many tokens at once: one answer per token, in order.
    /// Cache hits answer here; the misses (each distinct hash once) take one store call
    /// together. A store failure fails them all: no token of the batch reads as invalid
    /// because the store could not answer.
    pub async fn validate_many(
        &self,
        rpc: Rpc,
        tokens: &[String],
    ) -> Result<Vec<Option<Arc<SessionView>>>, RequestError> {
        let mut answers = Vec::with_capacity(tokens.len());
        // Each distinct missed digest once, with the positions waiting for it.
        let mut misses: Vec<([u8; 32], Vec<usize>)> = Vec::new();
        let mut seen: HashMap<[u8; 32], usize> = HashMap::new();
        let mut ticket = None;
        for (index, token) in tokens.iter().enumerate() {
            answers.push(None);
            match self.probe(token) {
                Probe::Malformed => {}
                Probe::Hit(view) => answers[index] = Some(view),
                Probe::Miss(digest, taken) => {
                    // The first miss's ticket is the batch's: it is the oldest, so an
                    // invalidation after it bars every insertion of this batch.
                    ticket = ticket.or(Some(taken));
                    match seen.entry(digest) {
                        Entry::Occupied(miss) => misses[*miss.get()].1.push(index),
                        Entry::Vacant(slot) => {
                            slot.insert(misses.len());
                            misses.push((digest, vec![index]));
                        }
                    }
                }
            }
        }
        if !misses.is_empty() {
            let hashes: Vec<String> = misses.iter().map(|(d, _)| lower_hex(d)).collect();
            let found = self.store.find_by_access_hashes(&hashes).await?;
            for (((digest, waiting), hash), found) in misses.iter().zip(&hashes).zip(found) {
                let view = self
                    .judge(rpc, digest, hash, found, ticket.flatten())
                    .await?;
                for &index in waiting {
                    answers[index] = view.clone();
                }
            }
        }
        for answer in &answers {
            self.metrics
                .validation(if answer.is_some() { "valid" } else { "invalid" });
        }
        Ok(answers)
    }

    /// What can be told without the store: a malformed token, or the cache's answer.
    fn probe(&self, token: &str) -> Probe {
        // Not exactly 64 lowercase hex characters: no store call.
        if !is_well_formed_token(token) {
            return Probe::Malformed;
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let Some(cache) = &self.cache else {
            return Probe::Miss(digest, None);
        };
        if let Some(view) = cache.get(&digest) {
            self.metrics.cache_hit();
            return Probe::Hit(view);
        }
        // Taken before the store is asked, so an invalidation meanwhile bars the insert.
        let ticket = cache.ticket();
        self.metrics.cache_miss();
        Probe::Miss(digest, ticket)
    }

    async fn lookup(
        &self,
        rpc: Rpc,
        token: &str,
    ) -> Result<Option<Arc<SessionView>>, RequestError> {
        let (digest, ticket) = match self.probe(token) {
            Probe::Malformed => return Ok(None),
            Probe::Hit(view) => {
                telemetry::record("barazo.cache", || "hit");
                return Ok(Some(view));
            }
            Probe::Miss(digest, ticket) => (digest, ticket),
        };
        if self.cache.is_some() {
            telemetry::record("barazo.cache", || {
                if ticket.is_some() { "miss" } else { "bypass" }
            });
        }
        let hash = lower_hex(&digest);
        let found = self.store.find_by_access_hash(&hash).await;
        self.judge(rpc, &digest, &hash, found, ticket).await
    }

    /// Judges what the store found for the token hashed `digest` (`hash` in hex), read at
    /// with `ticket` taken before, and caches a valid answer unless the ticket is stale by then.
    async fn judge(
        &self,
        rpc: Rpc,
        digest: &[u8; 32],
        hash: &str,
        found: Result<Option<Found>, StoreError>,
        ticket: Option<Ticket>,
    ) -> Result<Option<Arc<SessionView>>, RequestError> {
        match found {
            // Expiry is judged on the store's clock, the same for every replica.
            Ok(Some(found))
                if found.record.accepts_access_hash(hash, found.now_ms)
                    && within_lifetime(&self.lifetimes, &found.record, found.now_ms) =>
            {
                // The token's own expiry, or its keys' when that comes first: the answer
                // says when it stops holding, and callers caching it stop then. (A key that
                // ends within a few milliseconds of the token is the token's own TTL read
                // in whole milliseconds: the record's figure stands.)
                let own = token_expiry(&found.record, hash);
                let token_expires_at = found
                    .keys_expire_at()
                    .filter(|&keys| keys.saturating_add(KEY_CLOCK_SLACK_MS) < own)
                    .unwrap_or(own);
                let view = Arc::new(
                    SessionView::of(&found.record, &self.lifetimes).for_token(token_expires_at),
                );
                if let (Some(cache), Some(ticket)) = (&self.cache, ticket) {
                    // Good until the token expires or the session reaches its deadline (the
                    // view's `expires_at`: its sliding expiry or its absolute deadline),
                    // on the store's clock as it read the session.
                    let until = token_expires_at.min(view.expires_at());
                    let left = u64::try_from(until.saturating_sub(found.now_ms)).unwrap_or(0);
                    cache
                        .remember(digest, view.clone(), ticket, Duration::from_millis(left))
                        .await;
                }
                Ok(Some(view))
            }
            Ok(_) => Ok(None),
            Err(err @ StoreError::CorruptSession { .. }) => {
                // Fail closed: the token is refused, and an operator hears about the data.
                tracing::error!(
                    rpc.method = rpc.method(),
                    access.key_prefix = log_prefix(hash),
                    error = %err,
                    "refusing a token whose session data is unreadable"
                );
                Ok(None)
            }
            Err(err) => Err(err.into()),
        }
    }
}

/// How much earlier than its token a key must end to cut the answer short (see `judge`).
const KEY_CLOCK_SLACK_MS: i64 = 5;

/// What a token's shape and the cache tell before any store call.
enum Probe {
    /// Not a token this service could have minted: invalid, no store call.
    Malformed,
    /// The cache's answer.
    Hit(Arc<SessionView>),
    /// The store must be asked: the token's digest, and the cache's ticket when the
    /// answer may be cached (`None`: no cache, or the feed is down).
    Miss([u8; 32], Option<Ticket>),
}

/// When the token hashed `hash` expires (epoch ms, store clock): its own expiry, which
/// for another tab's older token comes before the newest token's.
fn token_expiry(record: &SessionRecord, hash: &str) -> i64 {
    record
        .live_tokens()
        .filter(|(h, _)| *h == hash)
        .map(|(_, expires_at)| expires_at)
        .max()
        .unwrap_or(record.access_token_expires_at)
}

/// Whether `record` is before its absolute deadline at `now_ms` (always, without one).
/// Sessions the TypeScript AppView refreshes keep sliding in Valkey; this check ends them
/// all the same.
pub fn within_lifetime(lifetimes: &Lifetimes, record: &SessionRecord, now_ms: i64) -> bool {
    lifetimes
        .deadline_ms(record.created_at)
        .is_none_or(|deadline| now_ms < deadline)
}
