//! The gRPC handlers of `barazo.session.v1.SessionService`.
//!
//! Each handler checks its input, mints or hashes tokens, and makes at most one store
//! call. Failures are logged once, here at the boundary, and turned into a `Status` by
//! [`crate::error`].

use crate::error::RequestError;
use crate::metrics::{Metrics, RpcLabels};
use crate::proto::session_service_server::SERVICE_NAME;
use crate::proto::session_service_server::SessionService;
use crate::proto::{
    CreateSessionRequest, CreateSessionResponse, DeleteAllSessionsForDidRequest,
    DeleteAllSessionsForDidResponse, DeleteSessionRequest, DeleteSessionResponse,
    RefreshSessionRequest, RefreshSessionResponse, Session, ValidateAccessTokenRequest,
    ValidateAccessTokenResponse,
};
use crate::session::{
    SessionRecord, Token, is_well_formed_token, log_prefix, now_ms, sha256_hex, validate_did,
    validate_handle,
};
use crate::store::{Lifetimes, SessionStore, StoreError};
use crate::telemetry;
use opentelemetry::context::FutureExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tonic::{Code, Request, Response, Status};

/// Abuse limits of the session service.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// Calls handled at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_in_progress: usize,
    /// Longest a call may run.
    pub time_limit: Duration,
}

/// The `SessionService` implementation over any [`SessionStore`].
pub struct SessionApi<S> {
    store: Arc<S>,
    lifetimes: Lifetimes,
    metrics: Arc<Metrics>,
    /// Permits for calls in progress; none left means shed the call (RESOURCE_EXHAUSTED).
    in_progress: Semaphore,
    /// The longest a call may run (`DEADLINE_EXCEEDED` after it).
    time_limit: Duration,
}

impl<S: SessionStore> SessionApi<S> {
    /// Serves sessions from `store`, minting access tokens and sessions that live as long
    /// as `lifetimes` says, counting what it does in `metrics`, and handling at most
    /// `limits.max_in_progress` calls at once, each for at most `limits.time_limit`.
    pub fn new(
        store: Arc<S>,
        lifetimes: Lifetimes,
        metrics: Arc<Metrics>,
        limits: CallLimits,
    ) -> Self {
        Self {
            store,
            lifetimes,
            metrics,
            in_progress: Semaphore::new(limits.max_in_progress),
            time_limit: limits.time_limit,
        }
    }

    /// Runs one RPC within the service's limits and telemetry.
    async fn serve<T: SpanFacts>(
        &self,
        rpc: &Rpc,
        metadata: &tonic::metadata::MetadataMap,
        handler: impl Future<Output = Result<T, RequestError>>,
    ) -> Result<Response<T>, Status> {
        serve(
            rpc,
            &self.metrics,
            &self.in_progress,
            self.time_limit,
            metadata,
            handler,
        )
        .await
    }

    fn access_ttl_ms(&self) -> i64 {
        i64::try_from(self.lifetimes.access_token.as_millis()).unwrap_or(i64::MAX)
    }

    async fn create(
        &self,
        req: CreateSessionRequest,
    ) -> Result<CreateSessionResponse, RequestError> {
        validate_did(&req.did)?;
        validate_handle(&req.handle)?;
        let sid = Token::generate().map_err(RequestError::Entropy)?;
        let access = Token::generate().map_err(RequestError::Entropy)?;
        let now = now_ms();
        let record = SessionRecord {
            sid: sid.expose().to_owned(),
            did: req.did,
            handle: req.handle,
            access_token_hash: sha256_hex(access.expose()),
            access_token_expires_at: now.saturating_add(self.access_ttl_ms()),
            created_at: now,
        };
        // The store stamps the times on its own clock (Valkey's); answer what it stored.
        let record = self.store.create(&record, self.lifetimes).await?;
        self.metrics.sessions("created", 1);
        Ok(CreateSessionResponse {
            session: Some(to_proto(&record)),
            access_token: access.into_string(),
            refresh_token: sid.into_string(),
        })
    }

    async fn validate(
        &self,
        req: ValidateAccessTokenRequest,
    ) -> Result<ValidateAccessTokenResponse, RequestError> {
        let answer = self.check_access_token(req).await?;
        // Failures (errors, timeouts, cancellations) are counted by `serve`'s CallRecord.
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
            Ok(Some(found)) if found.record.accepts_access_hash(&hash, found.now_ms) => {
                Ok(ValidateAccessTokenResponse {
                    valid: true,
                    session: Some(to_proto(&found.record)),
                })
            }
            Ok(_) => Ok(INVALID),
            Err(err @ StoreError::CorruptSession { .. }) => {
                // Fail closed: the token is refused, and an operator hears about the data.
                tracing::error!(
                    rpc.method = "ValidateAccessToken",
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
        if !is_well_formed_token(&sid) {
            return Err(RequestError::SessionNotFound);
        }
        let access = Token::generate().map_err(RequestError::Entropy)?;
        // The new token's expiry is the store's clock plus its TTL.
        let record = self
            .store
            .refresh(&sid, &sha256_hex(access.expose()), self.lifetimes)
            .await?
            .ok_or(RequestError::SessionNotFound)?;
        self.metrics.sessions("refreshed", 1);
        Ok(RefreshSessionResponse {
            session: Some(to_proto(&record)),
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
        self.metrics.sessions("deleted", u64::from(deleted));
        Ok(DeleteSessionResponse { deleted })
    }

    async fn delete_all(
        &self,
        req: DeleteAllSessionsForDidRequest,
    ) -> Result<DeleteAllSessionsForDidResponse, RequestError> {
        validate_did(&req.did)?;
        record_did(&req.did);
        let deleted_count = self.store.delete_all_for_did(&req.did).await?;
        self.metrics.sessions("deleted", u64::from(deleted_count));
        Ok(DeleteAllSessionsForDidResponse { deleted_count })
    }
}

/// Puts the user's DID on the current RPC span: public in the AT Protocol, and what an
/// operator searches traces by. (Responses that carry a session add it when the span ends,
/// see [`SpanFacts`]; this is for the others.)
fn record_did(did: &str) {
    telemetry::record("user.id", || did.to_owned());
}

/// What a successful answer adds to its RPC's span when the span ends, all at once: the
/// user's DID (`user.id`) and, for validation, `session.valid`.
trait SpanFacts {
    fn span_facts(&self) -> Vec<opentelemetry::KeyValue>;
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

/// The public view of a stored session: no credential, the sid only as its hash.
fn to_proto(record: &SessionRecord) -> Session {
    Session {
        did: record.did.clone(),
        handle: record.handle.clone(),
        created_at: Some(timestamp(record.created_at)),
        access_token_expires_at: Some(timestamp(record.access_token_expires_at)),
        session_key: sha256_hex(&record.sid),
    }
}

fn timestamp(epoch_ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: epoch_ms.div_euclid(1000),
        // rem_euclid(1000) is in 0..1000, so the product fits an i32.
        nanos: i32::try_from(epoch_ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// Names of one RPC, for its span and log lines.
struct Rpc {
    /// The method, e.g. `ValidateAccessToken` (`rpc.method`).
    method: &'static str,
    /// The span name, `barazo.session.v1.SessionService/<method>`.
    span_name: &'static str,
}

macro_rules! rpc {
    ($method:literal) => {
        Rpc {
            method: $method,
            span_name: concat!("barazo.session.v1.SessionService/", $method),
        }
    };
}

impl Rpc {
    /// The metric labels of this RPC ending with `code`.
    fn labels(&self, code: Code) -> RpcLabels {
        RpcLabels {
            rpc_system: "grpc",
            rpc_service: SERVICE_NAME,
            rpc_method: self.method,
            rpc_grpc_status_code: code as i32,
        }
    }
}

const CREATE: Rpc = rpc!("CreateSession");
const VALIDATE: Rpc = rpc!("ValidateAccessToken");
const REFRESH: Rpc = rpc!("RefreshSession");
const DELETE: Rpc = rpc!("DeleteSession");
const DELETE_ALL: Rpc = rpc!("DeleteAllSessionsForDid");

/// Whether a code means the service failed (span status error), as opposed to the caller's
/// mistake or an ordinary outcome such as an unknown session.
fn is_server_side(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::DataLoss
            | Code::Unimplemented
    )
}

/// What one call leaves behind whichever way it ends: its duration metric, the validation
/// outcome when it was a failed validation, and its span's end. Dropped before `finish`,
/// the call was cancelled (the caller went away or its deadline passed in tonic).
struct CallRecord<'a> {
    rpc: &'a Rpc,
    metrics: &'a Metrics,
    started: Instant,
    trace: Option<opentelemetry::Context>,
    finished: bool,
}

impl CallRecord<'_> {
    fn record(&self, code: Code, facts: impl FnOnce() -> Vec<opentelemetry::KeyValue>) {
        self.metrics
            .rpc(&self.rpc.labels(code), self.started.elapsed());
        if code != Code::Ok && self.rpc.method == VALIDATE.method {
            // No answer at all: counted apart from valid and invalid tokens.
            self.metrics.validation("error");
        }
        if let Some(cx) = &self.trace {
            telemetry::end_rpc_span(cx, code, is_server_side(code), facts());
        }
    }

    fn finish(mut self, code: Code, facts: impl FnOnce() -> Vec<opentelemetry::KeyValue>) {
        self.finished = true;
        self.record(code, facts);
    }
}

impl Drop for CallRecord<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.record(Code::Cancelled, Vec::new);
            tracing::debug!(
                rpc.method = self.rpc.method,
                "rpc cancelled before it finished"
            );
        }
    }
}

/// How much earlier than the caller's own deadline the service gives up, so that it (and
/// not tonic's timer for the same deadline) answers, with DEADLINE_EXCEEDED.
const DEADLINE_MARGIN: Duration = Duration::from_millis(2);

/// The caller's `grpc-timeout` (`<digits><H|M|S|m|u|n>`), if it sent one.
fn caller_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Runs one RPC inside its SERVER span (a child of the caller's span when the request
/// carries `traceparent`), within the concurrency limit and the time limit (the server's
/// cap or the caller's shorter deadline), logs a failure once with its cause chain, and
/// converts the result for tonic.
async fn serve<T: SpanFacts>(
    rpc: &Rpc,
    metrics: &Metrics,
    in_progress: &Semaphore,
    time_limit: Duration,
    metadata: &tonic::metadata::MetadataMap,
    handler: impl Future<Output = Result<T, RequestError>>,
) -> Result<Response<T>, Status> {
    let call = CallRecord {
        rpc,
        metrics,
        started: Instant::now(),
        trace: telemetry::start_rpc_span(rpc.span_name, SERVICE_NAME, rpc.method, metadata),
        finished: false,
    };
    // Load shedding: a saturated server refuses at once rather than queueing callers who
    // are waiting on a user's HTTP request; they retry elsewhere or later.
    let Ok(_permit) = in_progress.try_acquire() else {
        tracing::debug!(
            rpc.method = rpc.method,
            "rpc shed: concurrency limit reached"
        );
        call.finish(Code::ResourceExhausted, Vec::new);
        return Err(Status::resource_exhausted(
            "the session service is at its concurrency limit; retry shortly",
        ));
    };
    let limit = caller_timeout(metadata).map_or(time_limit, |t| {
        t.saturating_sub(DEADLINE_MARGIN).min(time_limit)
    });
    let limited = async {
        tokio::time::timeout(limit, handler)
            .await
            .unwrap_or(Err(RequestError::TimedOut))
    };
    let result = match &call.trace {
        Some(cx) => limited.with_context(cx.clone()).await,
        None => limited.await,
    };
    let code = result.as_ref().err().map_or(Code::Ok, RequestError::code);
    // The failure's log line is written inside the span, so it carries the trace ids.
    let attached = call.trace.clone().map(opentelemetry::Context::attach);
    let response = match result {
        Ok(body) => Ok(Response::new(body)),
        Err(err) => {
            if err.is_server_fault() {
                tracing::error!(rpc.method = rpc.method, rpc.grpc.status_code = ?code, error = %err.chain(), "rpc failed");
            } else {
                tracing::debug!(rpc.method = rpc.method, rpc.grpc.status_code = ?code, error = %err.chain(), "rpc refused");
            }
            Err(err.into())
        }
    };
    drop(attached);
    call.finish(code, || match &response {
        Ok(body) => body.get_ref().span_facts(),
        Err(_) => Vec::new(),
    });
    response
}

#[tonic::async_trait]
impl<S: SessionStore> SessionService for SessionApi<S> {
    async fn create_session(
        &self,
        request: Request<CreateSessionRequest>,
    ) -> Result<Response<CreateSessionResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        self.serve(&CREATE, &metadata, self.create(body)).await
    }

    async fn validate_access_token(
        &self,
        request: Request<ValidateAccessTokenRequest>,
    ) -> Result<Response<ValidateAccessTokenResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        self.serve(&VALIDATE, &metadata, self.validate(body)).await
    }

    async fn refresh_session(
        &self,
        request: Request<RefreshSessionRequest>,
    ) -> Result<Response<RefreshSessionResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        self.serve(&REFRESH, &metadata, self.refresh(body)).await
    }

    async fn delete_session(
        &self,
        request: Request<DeleteSessionRequest>,
    ) -> Result<Response<DeleteSessionResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        self.serve(&DELETE, &metadata, self.delete(body)).await
    }

    async fn delete_all_sessions_for_did(
        &self,
        request: Request<DeleteAllSessionsForDidRequest>,
    ) -> Result<Response<DeleteAllSessionsForDidResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        self.serve(&DELETE_ALL, &metadata, self.delete_all(body))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        let timeout = |v: &str| {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert("grpc-timeout", v.parse().expect("ascii"));
            caller_timeout(&metadata)
        };
        assert_eq!(timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "100", "100x", "123456789S", "-1S"] {
            assert_eq!(timeout(bad), None, "{bad}");
        }
        assert_eq!(caller_timeout(&tonic::metadata::MetadataMap::new()), None);
    }

    #[test]
    fn timestamps_keep_milliseconds() {
        let t = timestamp(1_764_358_000_123);
        assert_eq!((t.seconds, t.nanos), (1_764_358_000, 123_000_000));
        let t = timestamp(-1);
        assert_eq!((t.seconds, t.nanos), (-1, 999_000_000));
    }
}
