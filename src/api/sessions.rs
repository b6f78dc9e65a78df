//! The gRPC handlers of `barazo.session.v1.SessionService`.
//!
//! Each handler checks its input, mints or hashes tokens, and makes at most one store
//! call. What surrounds every call (limits, span, metrics, the one log line of a failure)
//! is [`crate::api::call`]'s; failures become a `Status` in [`crate::api::error`].

use crate::api::call::{Calls, SpanFacts};
use crate::api::error::RequestError;
use crate::api::revocations::{EventStream, Revocations};
use crate::api::validation::{AccessTokens, within_lifetime};
use crate::domain::Lifetimes;
use crate::domain::rotation::{self, Candidate, Presented};
use crate::domain::view::SessionView;
use crate::domain::{
    ClientFacts, SessionRecord, SyntaxError, Token, is_well_formed_token, log_prefix, now_ms,
    sha256_hex, validate_did, validate_handle, validate_session_key,
};
use crate::observe::metrics::{Metrics, Revocation};
use crate::observe::telemetry;
use crate::proto::session_service_server::SessionService;
use crate::proto::{
    AccountStatus, ClientInfo, CreateSessionRequest, CreateSessionResponse,
    DeleteAllSessionsForDidRequest, DeleteAllSessionsForDidResponse, DeleteSessionRequest,
    DeleteSessionResponse, ListSessionsRequest, ListSessionsResponse, RefreshSessionRequest,
    RefreshSessionResponse, RevokeOtherSessionsRequest, RevokeOtherSessionsResponse,
    RevokeSessionRequest, RevokeSessionResponse, Session, UpdateHandleRequest,
    UpdateHandleResponse, ValidateAccessTokenRequest, ValidateAccessTokenResponse,
    ValidateAccessTokensRequest, ValidateAccessTokensResponse, WatchRevocationsRequest,
};
use crate::rpc::Rpc;
use crate::store::{ByRefresh, Refresh, SessionStore};

/// Most tokens one `ValidateAccessTokens` call may carry: a caller coalescing one event
/// loop turn's validations stays far below it, and one call's store round trip stays short.
pub const MAX_TOKENS_PER_BATCH: usize = 1000;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The `SessionService` implementation over any [`SessionStore`].
pub struct SessionApi<S> {
    store: Arc<S>,
    /// The validation path `ValidateAccessToken` shares with ext_authz `Check`.
    tokens: Arc<AccessTokens<S>>,
    lifetimes: Lifetimes,
    metrics: Arc<Metrics>,
    /// Load shedding, time limits, spans, metrics and the log line around each call
    /// (shared with ext_authz, so that the concurrency limit is one for the listener).
    calls: Arc<Calls>,
    /// The `WatchRevocations` streams.
    revocations: Revocations,
}

impl<S: SessionStore> SessionApi<S> {
    /// Serves sessions from `store`, validating access tokens with `tokens`, minting
    /// access tokens and sessions that live as long as `lifetimes` says, counting what it
    /// does in `metrics`, and running each call through `calls`; `WatchRevocations`
    /// streams come from `revocations`.
    pub fn new(
        store: Arc<S>,
        tokens: Arc<AccessTokens<S>>,
        lifetimes: Lifetimes,
        metrics: Arc<Metrics>,
        calls: Arc<Calls>,
        revocations: Revocations,
    ) -> Self {
        Self {
            store,
            tokens,
            lifetimes,
            metrics,
            calls,
            revocations,
        }
    }

    /// The record it builds is `session_json.lua`'s `new_record`.
    async fn create(
        &self,
        req: CreateSessionRequest,
    ) -> Result<CreateSessionResponse, RequestError> {
        validate_did(&req.did)?;
        validate_handle(&req.handle)?;
        let client = client_facts(req.client.as_ref())?.unwrap_or_default();
        let sid = Token::generate().map_err(RequestError::Entropy)?;
        let access = Token::generate().map_err(RequestError::Entropy)?;
        // With rotation on the refresh token is not the sid but the first of a family, known
        // to the store only by digests; without, it is the sid (the TypeScript layout).
        let first_refresh = if self.lifetimes.tokens.rotation {
            Some(rotation::first_token().map_err(RequestError::Entropy)?)
        } else {
            None
        };
        let now = now_ms();
        // Neither the data nor the first token outlives the absolute lifetime.
        let lifetimes = self
            .lifetimes
            .max
            .map_or(self.lifetimes, |max| self.lifetimes.capped(max));
        let access_ttl_ms = i64::try_from(lifetimes.access_token.as_millis()).unwrap_or(i64::MAX);
        let record = SessionRecord {
            sid: sid.expose().to_owned(),
            did: req.did,
            handle: req.handle,
            access_token_hash: sha256_hex(access.expose()),
            access_token_expires_at: now.saturating_add(access_ttl_ms),
            created_at: now,
            refreshed_at: Some(now),
            user_agent: client.user_agent,
            ip_address: client.ip_address,
            access_tokens: Vec::new(),
            refresh_family: first_refresh.as_deref().map(rotation::family_hash),
            refresh_token_hash: first_refresh.as_deref().map(sha256_hex),
            ..Default::default()
        };
        // The store stamps the times on its own clock (Valkey's); answer what it stored.
        let created = self.store.create(&record, lifetimes).await?;
        self.metrics.sessions("created", 1);
        if created.revoked > 0 {
            self.revoked(Revocation::Cap, created.revoked);
        }
        let record = created.record;
        Ok(CreateSessionResponse {
            session: Some(self.to_proto(&record)),
            access_token: access.into_string(),
            refresh_token: first_refresh.unwrap_or_else(|| sid.into_string()),
        })
    }

    /// The shared validation path ([`AccessTokens`], also behind ext_authz `Check`).
    async fn validate(
        &self,
        req: ValidateAccessTokenRequest,
    ) -> Result<ValidateAccessTokenResponse, RequestError> {
        let found = self
            .tokens
            .validate(Rpc::ValidateAccessToken, &req.access_token)
            .await?;
        Ok(ValidateAccessTokenResponse {
            valid: found.is_some(),
            session: found.as_deref().map(session_message),
        })
    }

    /// [`AccessTokens::validate_many`]: the tokens of one call judged as
    /// `ValidateAccessToken` judges each, their misses in one store call.
    async fn validate_many(
        &self,
        req: ValidateAccessTokensRequest,
    ) -> Result<ValidateAccessTokensResponse, RequestError> {
        let count = req.access_tokens.len();
        if count > MAX_TOKENS_PER_BATCH {
            return Err(RequestError::TooManyTokens {
                count,
                limit: MAX_TOKENS_PER_BATCH,
            });
        }
        let found = self
            .tokens
            .validate_many(Rpc::ValidateAccessTokens, &req.access_tokens)
            .await?;
        Ok(ValidateAccessTokensResponse {
            results: found
                .iter()
                .map(|found| ValidateAccessTokenResponse {
                    valid: found.is_some(),
                    session: found.as_deref().map(session_message),
                })
                .collect(),
        })
    }

    async fn refresh(
        &self,
        req: RefreshSessionRequest,
    ) -> Result<RefreshSessionResponse, RequestError> {
        let client = client_facts(req.client.as_ref())?;
        let presented =
            Presented::parse(&req.refresh_token).ok_or(RequestError::SessionNotFound)?;
        let access = Token::generate().map_err(RequestError::Entropy)?;
        // The tab's own token, when it sent one: revoked if it is a live token of this
        // session; anything else is ignored, never an error.
        let previous = is_well_formed_token(&req.previous_access_token)
            .then(|| sha256_hex(&req.previous_access_token));
        let candidate = if self.lifetimes.tokens.rotation {
            Some(Candidate::new(&req.refresh_token).map_err(RequestError::Entropy)?)
        } else {
            None
        };
        let new_access_hash = sha256_hex(access.expose());
        let refresh = Refresh {
            new_access_hash: &new_access_hash,
            previous_access_hash: previous.as_deref(),
            client: client.as_ref(),
            rotation: candidate.as_ref(),
        };
        // The new token's expiry is the store's clock plus its TTL.
        let outcome = self
            .store
            .refresh(&presented, &refresh, self.lifetimes)
            .await?;
        if let ByRefresh::NotFound = outcome {
            return Err(self.why_gone(&presented).await);
        }
        let refreshed = self.found(outcome, Rpc::RefreshSession)?;
        // The successor the session now has for this token (rotated now, or by a
        // concurrent refresh within the grace): derived, never stored.
        let refresh_token = match refreshed.record.successor_path(&presented.token_hash) {
            Some(nonces) => {
                let successor = rotation::successor_along(&req.refresh_token, &nonces);
                if refreshed.record.refresh_token_hash.as_deref() != Some(&sha256_hex(&successor)) {
                    // By construction the presented token's successor along the nonces the
                    // record names is the session's current token; only a foreign writer
                    // changing the rotation fields breaks that. Hand out no cookie that
                    // would not work (the token just added expires unused).
                    return Err(RequestError::SessionNotFound);
                }
                successor
            }
            None => String::new(),
        };
        self.metrics.sessions("refreshed", 1);
        Ok(RefreshSessionResponse {
            session: Some(self.to_proto(&refreshed.record)),
            access_token: access.into_string(),
            refresh_token,
        })
    }

    /// Why the session a refresh token named is gone: the revocation the store still
    /// remembers, else unknown (expired, never issued, or revoked longer ago than it would
    /// have lived). Asked only on this path, one read. A failed read loses only the
    /// explanation: the answer is NOT_FOUND either way.
    async fn why_gone(&self, presented: &Presented) -> RequestError {
        match self.store.ended(presented).await {
            Ok(Some(Revocation::Lifetime)) => RequestError::SessionLifetimeReached,
            Ok(Some(reason)) => RequestError::SessionRevoked { reason },
            Ok(None) => RequestError::SessionNotFound,
            Err(err) => {
                tracing::debug!(error = %err, "why a session is gone could not be read");
                RequestError::SessionNotFound
            }
        }
    }

    /// The value of a call that named its session by a refresh token; reuse of an old
    /// refresh token (the store revoked the session) is counted, logged at warn level and
    /// answered NOT_FOUND, like an unknown token.
    fn found<T>(&self, outcome: ByRefresh<T>, rpc: Rpc) -> Result<T, RequestError> {
        match outcome {
            ByRefresh::Found(value) => Ok(value),
            ByRefresh::NotFound => Err(RequestError::SessionNotFound),
            ByRefresh::Reused { sid, did } => {
                self.metrics.sessions("refresh_token_reused", 1);
                tracing::warn!(
                    rpc.method = rpc.method(),
                    session.key_prefix = log_prefix(&sha256_hex(&sid)),
                    "an old refresh token was presented again: the session is revoked"
                );
                self.revoked(Revocation::Reuse, 1);
                Err(RequestError::RefreshTokenReused { did })
            }
            ByRefresh::PastLifetime => {
                self.revoked(Revocation::Lifetime, 1);
                Err(RequestError::SessionLifetimeReached)
            }
        }
    }

    async fn delete(
        &self,
        req: DeleteSessionRequest,
    ) -> Result<DeleteSessionResponse, RequestError> {
        // Logout is idempotent: a token that cannot name a session deletes nothing.
        let Some(presented) = Presented::parse(&req.refresh_token) else {
            return Ok(DeleteSessionResponse { deleted: false });
        };
        let outcome = self
            .store
            .delete(&presented, self.lifetimes.tokens.reuse_grace)
            .await?;
        // Reuse revoked the session too; it is counted and logged, and answered as "no
        // session of yours".
        let deleted = self.found(outcome, Rpc::DeleteSession).is_ok();
        self.revoked(Revocation::Logout, u32::from(deleted));
        Ok(DeleteSessionResponse { deleted })
    }

    async fn delete_all(
        &self,
        req: DeleteAllSessionsForDidRequest,
    ) -> Result<DeleteAllSessionsForDidResponse, RequestError> {
        validate_did(&req.did)?;
        let reason = account_status(req.reason)?;
        record_did(&req.did);
        let deleted_count = self.store.delete_all_for_did(&req.did, reason).await?;
        self.revoked(reason, deleted_count);
        // An account's end is an event an operator looks for; the DID only as its hash's
        // prefix, like every identifier in the log.
        tracing::info!(
            did.hash = log_prefix(&sha256_hex(&req.did)),
            reason = reason.as_str(),
            revoked = deleted_count,
            "every session of an account revoked"
        );
        Ok(DeleteAllSessionsForDidResponse { deleted_count })
    }

    async fn update_handle(
        &self,
        req: UpdateHandleRequest,
    ) -> Result<UpdateHandleResponse, RequestError> {
        validate_did(&req.did)?;
        validate_handle(&req.handle)?;
        record_did(&req.did);
        let updated_count = self.store.update_handle(&req.did, &req.handle).await?;
        Ok(UpdateHandleResponse { updated_count })
    }

    async fn list(&self, req: ListSessionsRequest) -> Result<ListSessionsResponse, RequestError> {
        validate_did(&req.did)?;
        record_did(&req.did);
        let now = now_ms();
        let mut records = self.store.list_for_did(&req.did).await?;
        // A session past its absolute deadline is over even if its data still slides.
        records.retain(|r| self.within_lifetime(r, now));
        // Most recently refreshed first; the newest login breaks a tie.
        records.sort_by_key(|r| std::cmp::Reverse((r.last_refreshed(), r.created_at)));
        Ok(ListSessionsResponse {
            sessions: records.iter().map(|r| self.to_proto(r)).collect(),
        })
    }

    /// "Log out that device": the session key is looked up among the DID's own sessions
    /// (the store holds sids, and Valkey's Lua has no SHA-256), then that sid is revoked
    /// only if it is still that DID's. Two store calls; a key of another user's session is
    /// never found, so it cannot be probed for.
    async fn revoke(
        &self,
        req: RevokeSessionRequest,
    ) -> Result<RevokeSessionResponse, RequestError> {
        validate_did(&req.did)?;
        validate_session_key(&req.session_key)?;
        record_did(&req.did);
        let sessions = self.store.list_for_did(&req.did).await?;
        let Some(record) = sessions
            .iter()
            .find(|r| sha256_hex(&r.sid) == req.session_key)
        else {
            self.revoked(Revocation::User, 0);
            return Ok(RevokeSessionResponse { revoked: false });
        };
        let revoked = self.store.revoke_in_did(&req.did, &record.sid).await?;
        self.revoked(Revocation::User, u32::from(revoked));
        Ok(RevokeSessionResponse { revoked })
    }

    async fn revoke_others(
        &self,
        req: RevokeOtherSessionsRequest,
    ) -> Result<RevokeOtherSessionsResponse, RequestError> {
        let presented =
            Presented::parse(&req.refresh_token).ok_or(RequestError::SessionNotFound)?;
        let outcome = self
            .store
            .revoke_others(&presented, self.lifetimes.tokens.reuse_grace)
            .await?;
        if let ByRefresh::NotFound = outcome {
            return Err(self.why_gone(&presented).await);
        }
        let revoked_count = self.found(outcome, Rpc::RevokeOtherSessions)?;
        self.revoked(Revocation::Others, revoked_count);
        Ok(RevokeOtherSessionsResponse { revoked_count })
    }

    /// Counts sessions revoked for `reason` in the metrics and puts the reason and the
    /// count on the RPC's span (also when nothing was revoked: an operator sees that the
    /// call found nothing to end). Never a token or a sid.
    fn revoked(&self, reason: Revocation, count: u32) {
        self.metrics.revoked(reason, u64::from(count));
        telemetry::record("barazo.revocation_reason", || reason.as_str());
        telemetry::record("barazo.revoked_count", || i64::from(count));
    }

    /// Whether `record` is before its absolute deadline at `now_ms` (always, without one).
    fn within_lifetime(&self, record: &SessionRecord, now_ms: i64) -> bool {
        within_lifetime(&self.lifetimes, record, now_ms)
    }

    /// The public view of a stored session: no credential, the sid only as its hash.
    fn to_proto(&self, record: &SessionRecord) -> Session {
        session_message(&SessionView::of(record, &self.lifetimes))
    }
}

/// The `Session` message of a view: every answer that carries a session is built here.
fn session_message(view: &SessionView) -> Session {
    Session {
        did: view.did().to_owned(),
        handle: view.handle().to_owned(),
        created_at: Some(timestamp(view.created_at())),
        access_token_expires_at: Some(timestamp(view.access_token_expires_at())),
        session_key: view.session_key(),
        refreshed_at: Some(timestamp(view.refreshed_at())),
        // The earlier of the sliding expiry and the absolute deadline.
        expires_at: Some(timestamp(view.expires_at())),
        client: Some(ClientInfo {
            user_agent: view.user_agent().to_owned(),
            ip_address: view.ip_address().to_owned(),
        }),
    }
}

/// The device facts of a request, checked: `None` when the caller sent none.
fn client_facts(client: Option<&ClientInfo>) -> Result<Option<ClientFacts>, RequestError> {
    client
        .map(|c| ClientFacts::new(&c.user_agent, &c.ip_address))
        .transpose()
        .map_err(RequestError::from)
}

/// What `DeleteAllSessionsForDid`'s `reason` counts as; a value this service does not know
/// is refused rather than counted as something it is not.
fn account_status(reason: i32) -> Result<Revocation, RequestError> {
    Ok(match AccountStatus::try_from(reason) {
        Ok(AccountStatus::Unspecified) => Revocation::AllForDid,
        Ok(AccountStatus::AccountDeleted) => Revocation::AccountDeleted,
        Ok(AccountStatus::AccountTakendown) => Revocation::AccountTakendown,
        Ok(AccountStatus::AccountDeactivated) => Revocation::AccountDeactivated,
        Ok(AccountStatus::AccountSuspended) => Revocation::AccountSuspended,
        Err(_) => {
            return Err(SyntaxError::UnknownValue {
                field: "reason",
                value: reason,
            }
            .into());
        }
    })
}

/// Puts the user's DID on the current RPC span: public in the AT Protocol, and what an
/// operator searches traces by. (Responses that carry a session add it when the span ends,
/// see [`SpanFacts`]; this is for the others.)
fn record_did(did: &str) {
    telemetry::record("user.id", || did.to_owned());
}

fn did_of(session: Option<&Session>) -> Option<opentelemetry::KeyValue> {
    session.map(|s| opentelemetry::KeyValue::new("user.id", s.did.clone()))
}

impl SpanFacts for CreateSessionResponse {
    fn span_facts(&self) -> Vec<opentelemetry::KeyValue> {
        did_of(self.session.as_ref()).into_iter().collect()
    }
}

impl SpanFacts for ValidateAccessTokenResponse {
    fn span_facts(&self) -> Vec<opentelemetry::KeyValue> {
        std::iter::once(opentelemetry::KeyValue::new("session.valid", self.valid))
            .chain(did_of(self.session.as_ref()))
            .collect()
    }
}

impl SpanFacts for ValidateAccessTokensResponse {
    fn span_facts(&self) -> Vec<opentelemetry::KeyValue> {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let valid = self.results.iter().filter(|r| r.valid).count();
        vec![
            opentelemetry::KeyValue::new("barazo.batch_size", count(self.results.len())),
            opentelemetry::KeyValue::new("session.valid_count", count(valid)),
        ]
    }
}

impl SpanFacts for RefreshSessionResponse {
    fn span_facts(&self) -> Vec<opentelemetry::KeyValue> {
        did_of(self.session.as_ref()).into_iter().collect()
    }
}

impl SpanFacts for DeleteSessionResponse {
    fn span_facts(&self) -> Vec<opentelemetry::KeyValue> {
        Vec::new()
    }
}

impl SpanFacts for DeleteAllSessionsForDidResponse {
    fn span_facts(&self) -> Vec<opentelemetry::KeyValue> {
        Vec::new()
    }
}

impl SpanFacts for ListSessionsResponse {
    fn span_facts(&self) -> Vec<opentelemetry::KeyValue> {
        let count = i64::try_from(self.sessions.len()).unwrap_or(i64::MAX);
        vec![opentelemetry::KeyValue::new("session.count", count)]
    }
}

impl SpanFacts for RevokeSessionResponse {
    fn span_facts(&self) -> Vec<opentelemetry::KeyValue> {
        vec![opentelemetry::KeyValue::new(
            "session.revoked",
            self.revoked,
        )]
    }
}

impl SpanFacts for RevokeOtherSessionsResponse {
    fn span_facts(&self) -> Vec<opentelemetry::KeyValue> {
        vec![opentelemetry::KeyValue::new(
            "session.revoked_count",
            i64::from(self.revoked_count),
        )]
    }
}

impl SpanFacts for UpdateHandleResponse {
    fn span_facts(&self) -> Vec<opentelemetry::KeyValue> {
        vec![opentelemetry::KeyValue::new(
            "session.updated_count",
            i64::from(self.updated_count),
        )]
    }
}

fn timestamp(epoch_ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: epoch_ms.div_euclid(1000),
        // rem_euclid(1000) is in 0..1000, so the product fits an i32.
        nanos: i32::try_from(epoch_ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// The `SessionService` trait: every unary RPC goes through [`Calls::serve_request`] (the
/// per-call layer) to its handler above. One row per RPC: the trait's method, its request
/// and response, its [`Rpc`], the handler.
macro_rules! session_service {
    ($($method:ident($request:ty) -> $response:ty: $rpc:ident => $handler:ident;)*) => {
        #[tonic::async_trait]
        impl<S: SessionStore> SessionService for SessionApi<S> {
            type WatchRevocationsStream = EventStream;

            $(
                async fn $method(
                    &self,
                    request: Request<$request>,
                ) -> Result<Response<$response>, Status> {
                    self.calls
                        .serve_request(Rpc::$rpc, request, |body| self.$handler(body))
                        .await
                }
            )*

            /// Not through [`Calls::serve`]: a stream outlives any call time limit and
            /// holds no concurrency permit; streams have their own cap
            /// (`--max-revocation-streams`).
            async fn watch_revocations(
                &self,
                _request: Request<WatchRevocationsRequest>,
            ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
                self.revocations
                    .open()
                    .map(Response::new)
                    .map_err(Status::from)
            }
        }
    };
}

session_service! {
    create_session(CreateSessionRequest) -> CreateSessionResponse: CreateSession => create;
    validate_access_token(ValidateAccessTokenRequest) -> ValidateAccessTokenResponse:
        ValidateAccessToken => validate;
    validate_access_tokens(ValidateAccessTokensRequest) -> ValidateAccessTokensResponse:
        ValidateAccessTokens => validate_many;
    refresh_session(RefreshSessionRequest) -> RefreshSessionResponse: RefreshSession => refresh;
    delete_session(DeleteSessionRequest) -> DeleteSessionResponse: DeleteSession => delete;
    delete_all_sessions_for_did(DeleteAllSessionsForDidRequest) -> DeleteAllSessionsForDidResponse:
        DeleteAllSessionsForDid => delete_all;
    list_sessions(ListSessionsRequest) -> ListSessionsResponse: ListSessions => list;
    revoke_session(RevokeSessionRequest) -> RevokeSessionResponse: RevokeSession => revoke;
    revoke_other_sessions(RevokeOtherSessionsRequest) -> RevokeOtherSessionsResponse:
        RevokeOtherSessions => revoke_others;
    update_handle(UpdateHandleRequest) -> UpdateHandleResponse: UpdateHandle => update_handle;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_milliseconds() {
        let t = timestamp(1_764_358_000_123);
        assert_eq!((t.seconds, t.nanos), (1_764_358_000, 123_000_000));
        let t = timestamp(-1);
        assert_eq!((t.seconds, t.nanos), (-1, 999_000_000));
    }
}
