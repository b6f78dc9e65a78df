//! The one path that decides whether an access token is valid, shared by
//! `ValidateAccessToken` ([`crate::service`]) and the ext_authz `Check`
//! ([`crate::ext_authz`]): a token is checked the same way whichever door it came in by, and
//! anything added here later (a validation cache) applies to both.

use crate::error::RequestError;
use crate::metrics::Metrics;
use crate::rpc::Rpc;
use crate::session::{SessionRecord, is_well_formed_token, log_prefix, sha256_hex};
use crate::store::{Lifetimes, SessionStore, StoreError};
use std::sync::Arc;

/// Validates access tokens against one store.
pub struct AccessTokens<S> {
    store: Arc<S>,
    lifetimes: Lifetimes,
    metrics: Arc<Metrics>,
}

impl<S: SessionStore> AccessTokens<S> {
    /// Validates against `store`, ending sessions at `lifetimes`' absolute deadline, and
    /// counts each answer in `metrics` (`barazo_session_validations_total`).
    pub fn new(store: Arc<S>, lifetimes: Lifetimes, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            lifetimes,
            metrics,
        }
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
    ) -> Result<Option<SessionRecord>, RequestError> {
        let answer = self.lookup(rpc, token).await?;
        self.metrics
            .validation(if answer.is_some() { "valid" } else { "invalid" });
        Ok(answer)
    }

    async fn lookup(&self, rpc: Rpc, token: &str) -> Result<Option<SessionRecord>, RequestError> {
        // Not exactly 64 lowercase hex characters: no store call.
        if !is_well_formed_token(token) {
            return Ok(None);
        }
        let hash = sha256_hex(token);
        match self.store.find_by_access_hash(&hash).await {
            // Expiry is judged on the store's clock, the same for every replica.
            Ok(Some(found))
                if found.record.accepts_access_hash(&hash, found.now_ms)
                    && within_lifetime(&self.lifetimes, &found.record, found.now_ms) =>
            {
                Ok(Some(found.record))
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

/// Whether `record` is before its absolute deadline at `now_ms` (always, without one).
/// Sessions the TypeScript AppView refreshes keep sliding in Valkey; this check ends them
/// all the same.
pub fn within_lifetime(lifetimes: &Lifetimes, record: &SessionRecord, now_ms: i64) -> bool {
    lifetimes
        .deadline_ms(record.created_at)
        .is_none_or(|deadline| now_ms < deadline)
}
