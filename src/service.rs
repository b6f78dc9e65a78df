//! The gRPC handlers of `barazo.session.v1.SessionService`.
//!
//! Each handler checks its input, mints or hashes tokens, and makes at most one store
//! call. What surrounds every call (limits, span, metrics, the one log line of a failure)
//! is [`crate::call`]'s; failures become a `Status` in [`crate::error`].

use crate::call::{CallLimits, Calls, SpanFacts};
use crate::error::RequestError;
use crate::metrics::{Metrics, Revocation};
use crate::proto::session_service_server::SessionService;
use crate::proto::{
    ClientInfo, CreateSessionRequest, CreateSessionResponse, DeleteAllSessionsForDidRequest,
    DeleteAllSessionsForDidResponse, DeleteSessionRequest, DeleteSessionResponse,
    ListSessionsRequest, ListSessionsResponse, RefreshSessionRequest, RefreshSessionResponse,
    RevokeOtherSessionsRequest, RevokeOtherSessionsResponse, RevokeSessionRequest,
    RevokeSessionResponse, Session, ValidateAccessTokenRequest, ValidateAccessTokenResponse,
    WatchRevocationsRequest,
};
use crate::revocations::{EventStream, Revocations};
use crate::rpc::Rpc;
use crate::session::{
    ClientFacts, SessionRecord, Token, is_well_formed_token, log_prefix, now_ms, sha256_hex,
    validate_did, validate_handle, validate_session_key,
};
use crate::store::{Lifetimes, Refreshed, SessionStore, StoreError};
use crate::telemetry;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The `SessionService` implementation over any [`SessionStore`].
pub struct SessionApi<S> {
    store: Arc<S>,
    lifetimes: Lifetimes,
    metrics: Arc<Metrics>,
    /// Load shedding, time limits, spans, metrics and the log line around each call.
    calls: Calls,
    /// The `WatchRevocations` streams.
    revocations: Revocations,
}

impl<S: SessionStore> SessionApi<S> {
    /// Serves sessions from `store`, minting access tokens and sessions that live as long
    /// as `lifetimes` says, counting what it does in `metrics`, and handling at most
    /// `limits.max_in_progress` calls at once, each for at most `limits.time_limit`;
    /// `WatchRevocations` streams come from `revocations`.
    pub fn new(
        store: Arc<S>,
        lifetimes: Lifetimes,
        metrics: Arc<Metrics>,
        limits: CallLimits,
        revocations: Revocations,
    ) -> Self {
        Self {
            store,
            lifetimes,
            calls: Calls::new(limits, metrics.clone()),
            metrics,
            revocations,
        }
    }

    async fn create(
        &self,
        req: CreateSessionRequest,
    ) -> Result<CreateSessionResponse, RequestError> {
        validate_did(&req.did)?;
        validate_handle(&req.handle)?;
        let client = client_facts(req.client.as_ref())?.unwrap_or_default();
        let sid = Token::generate().map_err(RequestError::Entropy)?;
        let access = Token::generate().map_err(RequestError::Entropy)?;
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
            refresh_token: sid.into_string(),
        })
    }

    async fn validate(
        &self,
        req: ValidateAccessTokenRequest,
    ) -> Result<ValidateAccessTokenResponse, RequestError> {
        let answer = self.check_access_token(req).await?;
        // Failures (errors, timeouts, cancellations) are counted by the call layer.
        self.metrics
            .validation(if answer.valid { "valid" } else { "invalid" });
        Ok(answer)
    }

    async fn check_access_token(
        &self,
        req: ValidateAccessTokenRequest,
    ) -> Result<ValidateAccessTokenResponse, RequestError> {
        const INVALID: ValidateAccessTokenResponse = ValidateAccessTokenResponse {
            valid: false,
            session: None,
        };
        if !is_well_formed_token(&req.access_token) {
            return Ok(INVALID);
        }
        let hash = sha256_hex(&req.access_token);
        match self.store.find_by_access_hash(&hash).await {
            // Expiry is judged on the store's clock, the same for every replica.
            Ok(Some(found))
                if found.record.accepts_access_hash(&hash, found.now_ms)
                    && self.within_lifetime(&found.record, found.now_ms) =>
            {
                Ok(ValidateAccessTokenResponse {
                    valid: true,
                    session: Some(self.to_proto(&found.record)),
                })
            }
            Ok(_) => Ok(INVALID),
            Err(err @ StoreError::CorruptSession { .. }) => {
                // Fail closed: the token is refused, and an operator hears about the data.
                tracing::error!(
                    rpc.method = Rpc::ValidateAccessToken.method(),
                    access.key_prefix = log_prefix(&hash),
                    error = %err,
                    "refusing a token whose session data is unreadable"
                );
                Ok(INVALID)
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn refresh(
        &self,
        req: RefreshSessionRequest,
    ) -> Result<RefreshSessionResponse, RequestError> {
        let sid = req.refresh_token;
        let client = client_facts(req.client.as_ref())?;
        if !is_well_formed_token(&sid) {
            return Err(RequestError::SessionNotFound);
        }
        let access = Token::generate().map_err(RequestError::Entropy)?;
        // The new token's expiry is the store's clock plus its TTL.
        let record = match self
            .store
            .refresh(
                &sid,
                &sha256_hex(access.expose()),
                client.as_ref(),
                self.lifetimes,
            )
            .await?
        {
            Refreshed::Session(record) => record,
            Refreshed::Missing => return Err(RequestError::SessionNotFound),
            Refreshed::PastLifetime => {
                self.revoked(Revocation::Lifetime, 1);
                return Err(RequestError::SessionNotFound);
            }
        };
        self.metrics.sessions("refreshed", 1);
        Ok(RefreshSessionResponse {
            session: Some(self.to_proto(&record)),
            access_token: access.into_string(),
        })
    }

    async fn delete(
        &self,
        req: DeleteSessionRequest,
    ) -> Result<DeleteSessionResponse, RequestError> {
        let sid = req.refresh_token;
        // Logout is idempotent: a token that cannot name a session deletes nothing.
        let deleted = is_well_formed_token(&sid) && self.store.delete(&sid).await?;
        self.revoked(Revocation::Logout, u32::from(deleted));
        Ok(DeleteSessionResponse { deleted })
    }

    async fn delete_all(
        &self,
        req: DeleteAllSessionsForDidRequest,
    ) -> Result<DeleteAllSessionsForDidResponse, RequestError> {
        validate_did(&req.did)?;
        record_did(&req.did);
        let deleted_count = self.store.delete_all_for_did(&req.did).await?;
        self.revoked(Revocation::AllForDid, deleted_count);
        Ok(DeleteAllSessionsForDidResponse { deleted_count })
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
        let sid = req.refresh_token;
        if !is_well_formed_token(&sid) {
            return Err(RequestError::SessionNotFound);
        }
        let revoked_count = self
            .store
            .revoke_others(&sid)
            .await?
            .ok_or(RequestError::SessionNotFound)?;
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
    /// Sessions the TypeScript AppView refreshes keep sliding in Valkey; this check ends
    /// them all the same.
    fn within_lifetime(&self, record: &SessionRecord, now_ms: i64) -> bool {
        self.lifetimes
            .deadline_ms(record.created_at)
            .is_none_or(|deadline| now_ms < deadline)
    }

    /// The public view of a stored session: no credential, the sid only as its hash.
    fn to_proto(&self, record: &SessionRecord) -> Session {
        let session_ttl_ms = i64::try_from(self.lifetimes.session.as_millis()).unwrap_or(i64::MAX);
        let sliding = record.last_refreshed().saturating_add(session_ttl_ms);
        let expires_at = self
            .lifetimes
            .deadline_ms(record.created_at)
            .map_or(sliding, |deadline| sliding.min(deadline));
        let client = record.client();
        Session {
            did: record.did.clone(),
            handle: record.handle.clone(),
            created_at: Some(timestamp(record.created_at)),
            access_token_expires_at: Some(timestamp(record.access_token_expires_at)),
            session_key: sha256_hex(&record.sid),
            refreshed_at: Some(timestamp(record.last_refreshed())),
            // The earlier of the sliding expiry and the absolute deadline.
            expires_at: Some(timestamp(expires_at)),
            client: Some(ClientInfo {
                user_agent: client.user_agent,
                ip_address: client.ip_address,
            }),
        }
    }
}

/// The device facts of a request, checked: `None` when the caller sent none.
fn client_facts(client: Option<&ClientInfo>) -> Result<Option<ClientFacts>, RequestError> {
    client
        .map(|c| ClientFacts::new(&c.user_agent, &c.ip_address))
        .transpose()
        .map_err(RequestError::from)
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

fn timestamp(epoch_ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: epoch_ms.div_euclid(1000),
        // rem_euclid(1000) is in 0..1000, so the product fits an i32.
        nanos: i32::try_from(epoch_ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

#[tonic::async_trait]
impl<S: SessionStore> SessionService for SessionApi<S> {
    async fn create_session(
        &self,
        request: Request<CreateSessionRequest>,
    ) -> Result<Response<CreateSessionResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        self.calls
            .serve(Rpc::CreateSession, &metadata, self.create(body))
            .await
    }

    async fn validate_access_token(
        &self,
        request: Request<ValidateAccessTokenRequest>,
    ) -> Result<Response<ValidateAccessTokenResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        self.calls
            .serve(Rpc::ValidateAccessToken, &metadata, self.validate(body))
            .await
    }

    async fn refresh_session(
        &self,
        request: Request<RefreshSessionRequest>,
    ) -> Result<Response<RefreshSessionResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        self.calls
            .serve(Rpc::RefreshSession, &metadata, self.refresh(body))
            .await
    }

    async fn delete_session(
        &self,
        request: Request<DeleteSessionRequest>,
    ) -> Result<Response<DeleteSessionResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        self.calls
            .serve(Rpc::DeleteSession, &metadata, self.delete(body))
            .await
    }

    async fn delete_all_sessions_for_did(
        &self,
        request: Request<DeleteAllSessionsForDidRequest>,
    ) -> Result<Response<DeleteAllSessionsForDidResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        self.calls
            .serve(
                Rpc::DeleteAllSessionsForDid,
                &metadata,
                self.delete_all(body),
            )
            .await
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        self.calls
            .serve(Rpc::ListSessions, &metadata, self.list(body))
            .await
    }

    async fn revoke_session(
        &self,
        request: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokeSessionResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        self.calls
            .serve(Rpc::RevokeSession, &metadata, self.revoke(body))
            .await
    }

    async fn revoke_other_sessions(
        &self,
        request: Request<RevokeOtherSessionsRequest>,
    ) -> Result<Response<RevokeOtherSessionsResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        self.calls
            .serve(
                Rpc::RevokeOtherSessions,
                &metadata,
                self.revoke_others(body),
            )
            .await
    }

    type WatchRevocationsStream = EventStream;

    /// Not through [`Calls::serve`]: a stream outlives any call time limit and holds no
    /// concurrency permit; streams have their own cap (`--max-revocation-streams`).
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
