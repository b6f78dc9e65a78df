//! `session-bench floor`: a storeless server answering `ValidateAccessToken` and
//! `ValidateAccessTokens` with a fixed valid answer, the floor the real server's hot path
//! is measured against (issue 20: a cached validation must cost no more than this).
//!
//! It does what any tonic server must do for the call (HTTP/2, gRPC framing, decoding the
//! request, encoding the answer) and nothing of ours: no store, cache, policy, metrics,
//! span or log. The answer has the shape and size of the real server's answer for the
//! sessions `session-bench` creates (its DID, its handle, every timestamp, a session key,
//! an empty `client`), so both put the same bytes on the wire.

use barazo_session::proto::{
    ClientInfo, Session, ValidateAccessTokenRequest, ValidateAccessTokenResponse,
    ValidateAccessTokensRequest, ValidateAccessTokensResponse,
};
use barazo_session::rpc::Rpc;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::{Request, Response, Status};

/// The real server's limit on one batch, so the floor refuses what it refuses.
const MAX_TOKENS: usize = barazo_session::api::sessions::MAX_TOKENS_PER_BATCH;

/// The storeless service: one fixed answer, shared by every call.
#[derive(Clone)]
pub(crate) struct Floor {
    answer: Arc<ValidateAccessTokenResponse>,
}

impl tonic::server::NamedService for Floor {
    const NAME: &'static str = barazo_session::proto::session_service_server::SERVICE_NAME;
}

impl Floor {
    pub(crate) fn new() -> Self {
        Self {
            answer: Arc::new(fixed_answer()),
        }
    }
}

/// A valid answer as the real server gives it for a `session-bench` session: a DID of a
/// run's own namespace (as long as the tool's), its handle, the four timestamps (to the
/// millisecond), a 64-character session key and the empty device facts of a session
/// created without them.
fn fixed_answer() -> ValidateAccessTokenResponse {
    // Milliseconds, as the store's clock gives them (a nanos field on the wire).
    let at = |seconds| prost_types::Timestamp {
        seconds,
        nanos: 381_000_000,
    };
    ValidateAccessTokenResponse {
        valid: true,
        session: Some(Session {
            did: format!(
                "{}run-1765000000-0a1b2c:0:123",
                crate::namespace::DID_PREFIX
            ),
            handle: crate::namespace::HANDLE.to_owned(),
            created_at: Some(at(1_765_000_000)),
            access_token_expires_at: Some(at(1_765_000_900)),
            session_key: "5e".repeat(32),
            refreshed_at: Some(at(1_765_000_000)),
            expires_at: Some(at(1_765_604_800)),
            client: Some(ClientInfo::default()),
        }),
    }
}

/// `ValidateAccessToken`: the fixed answer, whatever the token.
struct One(Arc<ValidateAccessTokenResponse>);

impl tonic::server::UnaryService<ValidateAccessTokenRequest> for One {
    type Response = ValidateAccessTokenResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, _request: Request<ValidateAccessTokenRequest>) -> Self::Future {
        // A clone, as the real server builds each answer's strings anew.
        let answer = (*self.0).clone();
        Box::pin(async move { Ok(Response::new(answer)) })
    }
}

/// `ValidateAccessTokens`: the fixed answer once per token, the limit as the real server's.
struct Many(Arc<ValidateAccessTokenResponse>);

impl tonic::server::UnaryService<ValidateAccessTokensRequest> for Many {
    type Response = ValidateAccessTokensResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<ValidateAccessTokensRequest>) -> Self::Future {
        let tokens = request.into_inner().access_tokens.len();
        let answer = self.0.clone();
        Box::pin(async move {
            if tokens > MAX_TOKENS {
                return Err(Status::invalid_argument(format!(
                    "at most {MAX_TOKENS} access tokens per call"
                )));
            }
            Ok(Response::new(ValidateAccessTokensResponse {
                results: vec![(*answer).clone(); tokens],
            }))
        })
    }
}

impl<B> Service<http::Request<B>> for Floor
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let answer = self.answer.clone();
        Box::pin(async move {
            // The paths it answers; every other is `UNIMPLEMENTED`.
            let path = request.uri().path();
            Ok(match Rpc::from_path(path) {
                Some(Rpc::ValidateAccessToken) => {
                    let codec = tonic_prost::ProstCodec::<
                        ValidateAccessTokenResponse,
                        ValidateAccessTokenRequest,
                    >::default();
                    tonic::server::Grpc::new(codec)
                        .unary(One(answer), request)
                        .await
                }
                Some(Rpc::ValidateAccessTokens) => {
                    let codec = tonic_prost::ProstCodec::<
                        ValidateAccessTokensResponse,
                        ValidateAccessTokensRequest,
                    >::default();
                    tonic::server::Grpc::new(codec)
                        .unary(Many(answer), request)
                        .await
                }
                _ => Status::unimplemented(format!(
                    "the floor answers only ValidateAccessToken(s), not {path}"
                ))
                .into_http(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// The answer is as large as the real server's for a session of the tool's (h2load's
    /// DATA bytes from a release server on Valkey: 216 per answer, 5 of them gRPC's
    /// frame header), so both send the same bytes.
    #[test]
    fn the_fixed_answer_is_as_large_as_the_real_servers() {
        assert_eq!(fixed_answer().encoded_len(), 211);
    }
}
