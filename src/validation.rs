//! The one path that decides whether an access token is valid, shared by
//! `ValidateAccessToken` ([`crate::service`]) and the ext_authz `Check`
//! ([`crate::ext_authz`]): a token is checked the same way whichever door it came in by,
//! and answered from this replica's validation cache ([`crate::cache`]) when it holds the
//! answer.

use crate::cache::{InsertHook, ValidationCache};
use crate::error::RequestError;
use crate::metrics::Metrics;
use crate::rpc::Rpc;
use crate::session::{SessionRecord, is_well_formed_token, log_prefix, lower_hex};
use crate::session_view::SessionView;
use crate::store::{Lifetimes, SessionStore, StoreError};
use crate::telemetry;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Validates access tokens against one store.
pub struct AccessTokens<S> {
    store: Arc<S>,
    lifetimes: Lifetimes,
    metrics: Arc<Metrics>,
    cache: Option<Arc<ValidationCache>>,
    hook: Option<InsertHook>,
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
            hook: None,
        }
    }

    /// The same, answering from `cache` while it is live and filling it with valid answers.
    pub fn with_cache(mut self, cache: Arc<ValidationCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The same, awaiting `hook` between each store answer and its insertion into the
    /// cache (tests: the stale-read race, forced).
    pub fn with_insert_hook(mut self, hook: InsertHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The session `token` belongs to, if the token is valid now; `None` for a token that
    /// is malformed, unknown, expired, superseded or past its session's absolute lifetime.
    /// A store failure is an error, never `None`: a caller must not log a user out, nor a
    /// gateway let a request through, because Valkey blinked. `rpc` names the caller's RPC
    /// in the log line of unreadable session data. Valid and invalid answers are counted
    /// here; failures are counted by the call layer ([`crate::call`]).
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

    async fn lookup(
        &self,
        rpc: Rpc,
        token: &str,
    ) -> Result<Option<Arc<SessionView>>, RequestError> {
        // Not exactly 64 lowercase hex characters: no store call.
        if !is_well_formed_token(token) {
            return Ok(None);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let generation = match &self.cache {
            Some(cache) => {
                if let Some(view) = cache.get(&digest) {
                    self.metrics.cache_hit();
                    telemetry::record("barazo.cache", || "hit");
                    return Ok(Some(view));
                }
                let generation = cache.generation();
                self.metrics.cache_miss();
                telemetry::record("barazo.cache", || {
                    if generation.is_some() {
                        "miss"
                    } else {
                        "bypass"
                    }
                });
                generation
            }
            None => None,
        };
        let hash = lower_hex(&digest);
        let read_at = Instant::now();
        match self.store.find_by_access_hash(&hash).await {
            // Expiry is judged on the store's clock, the same for every replica.
            Ok(Some(found))
                if found.record.accepts_access_hash(&hash, found.now_ms)
                    && within_lifetime(&self.lifetimes, &found.record, found.now_ms) =>
            {
                let token_expires_at = token_expiry(&found.record, &hash);
                let view = Arc::new(
                    SessionView::of(&found.record, &self.lifetimes).for_token(token_expires_at),
                );
                if let (Some(cache), Some(generation)) = (&self.cache, generation) {
                    // Good until the token expires or the session reaches its deadline,
                    // counted from when the store was asked (an earlier instant only
                    // shortens the entry's life).
                    // (The view's `expires_at` is the session's sliding expiry or its
                    // absolute deadline, whichever comes first.)
                    let until = token_expires_at.min(view.expires_at());
                    let left = u64::try_from(until.saturating_sub(found.now_ms)).unwrap_or(0);
                    if let Some(hook) = &self.hook {
                        hook().await;
                    }
                    cache.insert(
                        &digest,
                        view.clone(),
                        generation,
                        read_at + Duration::from_millis(left),
                    );
                }
                Ok(Some(view))
            }
            Ok(_) => Ok(None),
            Err(err @ StoreError::CorruptSession { .. }) => {
                // Fail closed: the token is refused, and an operator hears about the data.
                tracing::error!(
                    rpc.method = rpc.method(),
                    access.key_prefix = log_prefix(&hash),
                    error = %err,
                    "refusing a token whose session data is unreadable"
                );
                Ok(None)
            }
            Err(err) => Err(err.into()),
        }
    }
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
