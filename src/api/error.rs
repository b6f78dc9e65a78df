//! Errors of the gRPC layer, and the one place where they become `tonic::Status`: a
//! handler's [`RequestError`] (load shedding included) and a policy's [`Denial`].
//!
//! Callers act on the code (see the error table in docs/sessions.md): `UNAVAILABLE` means "try again,
//! do not log the user out"; `NOT_FOUND` on refresh means "session expired, clear the
//! cookie"; `INVALID_ARGUMENT` is a bug in the caller. A refactor must not move a variant
//! between these, so a unit test pins each one, with its message.

use crate::authz::Denial;
use crate::domain::{Revocation, SyntaxError};
use crate::store::StoreError;
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Why an RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A request field is malformed; the message names the field.
    #[error(transparent)]
    InvalidArgument(#[from] SyntaxError),
    /// The session named by the refresh token does not exist (unknown, expired, revoked,
    /// malformed token, or unreadable stored data).
    #[error("session not found")]
    SessionNotFound,
    /// The session named by the refresh token reached its absolute lifetime
    /// (`--session-max-lifetime`) and is revoked now.
    #[error("session not found")]
    SessionLifetimeReached,
    /// The session named by the refresh token was revoked, for `reason` (while the store
    /// remembers it: as long as the session would have lived).
    #[error("session not found")]
    SessionRevoked {
        /// Why.
        reason: Revocation,
    },
    /// An older refresh token of the session was presented again (with rotation on): the
    /// whole session is revoked now, as theft.
    #[error("session not found")]
    RefreshTokenReused {
        /// The session's user, whom the caller may tell.
        did: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The operating system's random number generator failed; no token can be minted.
    #[error("could not generate a token")]
    Entropy(#[source] getrandom::Error),
    /// The call ran past the server's longest allowed time (`--request-timeout-ms`).
    #[error("the call took longer than the server allows")]
    TimedOut,
    /// The server already handles `--max-concurrent-requests` calls; this one was refused
    /// at once, not queued.
    #[error("the session service is at its concurrency limit; retry shortly")]
    Overloaded,
    /// The request could not be decoded (not protobuf, a wrong wire type, invalid UTF-8 in
    /// a string field, a compressed flag without `grpc-encoding`): the caller's mistake.
    #[error("the request could not be decoded")]
    Undecodable,
    /// An HTTP request that is not what its endpoint reads (introspection without a form,
    /// or a form without exactly one token); the text says which.
    #[error("{0}")]
    InvalidForm(&'static str),
    /// A `ValidateAccessTokens` call with more tokens than one call may carry.
    #[error("access_tokens holds {count} tokens: at most {limit} per call")]
    TooManyTokens {
        /// How many the call carried.
        count: usize,
        /// [`crate::api::sessions::MAX_TOKENS_PER_BATCH`].
        limit: usize,
    },
    /// The request message is larger than its RPC accepts ([`crate::rpc::Rpc::max_request_bytes`]).
    #[error("the request is larger than {limit} bytes")]
    TooLarge {
        /// The RPC's limit in bytes.
        limit: usize,
    },
    /// `--max-revocation-streams` `WatchRevocations` streams are open already.
    #[error("too many revocation streams are open; retry later")]
    TooManyStreams,
    /// This deployment has no revocation feed (memory store, Valkey Cluster): callers must
    /// not cache validation answers.
    #[error("no revocation feed with this store: do not cache validation answers")]
    NoRevocationFeed,
    /// The revocation feed is down (Valkey unreachable) or just broke; retry.
    #[error("the revocation feed is down; retry shortly")]
    FeedDown,
    /// The server is shutting down: a stream that would never end is ended.
    #[error("the service is shutting down; reconnect (to another replica)")]
    ShuttingDown,
}

impl RequestError {
    /// The gRPC code callers act on.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_)
            | Self::Undecodable
            | Self::InvalidForm(_)
            | Self::TooManyTokens { .. } => Code::InvalidArgument,
            Self::TooLarge { .. } => Code::OutOfRange,
            Self::SessionNotFound
            | Self::SessionRevoked { .. }
            | Self::SessionLifetimeReached
            | Self::RefreshTokenReused { .. } => Code::NotFound,
            // Unreadable stored data is treated as no session at all: fail closed.
            Self::Store(StoreError::CorruptSession { .. }) => Code::NotFound,
            Self::Store(StoreError::Unavailable(_)) => Code::Unavailable,
            Self::Store(StoreError::Protocol(_)) | Self::Entropy(_) => Code::Internal,
            Self::TimedOut => Code::DeadlineExceeded,
            Self::Overloaded | Self::TooManyStreams => Code::ResourceExhausted,
            Self::NoRevocationFeed => Code::FailedPrecondition,
            Self::FeedDown | Self::ShuttingDown => Code::Unavailable,
        }
    }

    /// Whether the failure is the service's (logged at error level) rather than the
    /// caller's or an ordinary outcome such as an expired session.
    pub fn is_server_fault(&self) -> bool {
        matches!(self, Self::Store(_) | Self::Entropy(_) | Self::TimedOut)
    }

    /// The whole `source()` chain, for the one log line at the boundary.
    pub fn chain(&self) -> String {
        chain(self)
    }
}

/// An error and all its causes on one line, `outer: inner: innermost`. A cause whose text
/// the line already ends with is left out: many libraries repeat their source's message in
/// their own (`Connection refused (os error 111): Connection refused (os error 111)`).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !cause_text.is_empty() && !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The domain of this service's `google.rpc.ErrorInfo` reasons.
pub const ERROR_DOMAIN: &str = "session.barazo.forum";

impl RequestError {
    /// Why a refresh token names no session, as `google.rpc.ErrorInfo` reason and metadata
    /// (`None` for every other error).
    fn ended(&self) -> Option<(&'static str, Vec<(String, String)>)> {
        match self {
            Self::SessionNotFound | Self::Store(StoreError::CorruptSession { .. }) => {
                Some(("SESSION_UNKNOWN", Vec::new()))
            }
            Self::SessionLifetimeReached => Some(("SESSION_LIFETIME_REACHED", Vec::new())),
            Self::SessionRevoked { reason } => Some((
                "SESSION_REVOKED",
                vec![("revocation".to_owned(), reason.as_str().to_owned())],
            )),
            Self::RefreshTokenReused { did } => Some((
                "REFRESH_TOKEN_REUSED",
                vec![("did".to_owned(), did.clone())],
            )),
            _ => None,
        }
    }
}

impl From<RequestError> for Status {
    fn from(err: RequestError) -> Self {
        // The client sees a short message without the cause chain: a Valkey error text may
        // name hosts or keys, which is for the operator's log, not for callers.
        let message = match &err {
            RequestError::Store(StoreError::CorruptSession { .. }) => {
                RequestError::SessionNotFound.to_string()
            }
            RequestError::Store(StoreError::Protocol(_)) => "session store error".to_owned(),
            other => other.to_string(),
        };
        // Why a session ended, machine-readable, in the standard rich error model
        // (`grpc-status-details-bin`); the code and message stay as they always were.
        match err.ended() {
            Some((reason, metadata)) => Status::with_error_details(
                err.code(),
                message,
                ErrorDetails::with_error_info(
                    reason,
                    ERROR_DOMAIN,
                    metadata.into_iter().collect::<HashMap<_, _>>(),
                ),
            ),
            None => Status::new(err.code(), message),
        }
    }
}

impl From<Denial> for Status {
    fn from(denial: Denial) -> Self {
        match denial {
            Denial::Unauthenticated(why) => Status::unauthenticated(why),
            Denial::PermissionDenied { caller, method } => {
                Status::permission_denied(format!("caller {caller} may not call {method}"))
            }
            Denial::OverBudget { caller, method } => Status::resource_exhausted(format!(
                "{method}: caller {caller} is at its concurrency limit; retry shortly"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error() -> redis::RedisError {
        redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ))
    }

    #[test]
    fn each_variant_keeps_its_code() {
        let cases = [
            (
                RequestError::InvalidArgument(SyntaxError::Did("x")),
                Code::InvalidArgument,
            ),
            (RequestError::SessionNotFound, Code::NotFound),
            (RequestError::SessionLifetimeReached, Code::NotFound),
            (
                RequestError::SessionRevoked {
                    reason: Revocation::User,
                },
                Code::NotFound,
            ),
            (
                RequestError::RefreshTokenReused {
                    did: "did:plc:alice".into(),
                },
                Code::NotFound,
            ),
            (RequestError::TimedOut, Code::DeadlineExceeded),
            (RequestError::Undecodable, Code::InvalidArgument),
            (RequestError::InvalidForm("no token"), Code::InvalidArgument),
            (
                RequestError::TooManyTokens {
                    count: 1001,
                    limit: 1000,
                },
                Code::InvalidArgument,
            ),
            (RequestError::TooLarge { limit: 16384 }, Code::OutOfRange),
            (RequestError::TooManyStreams, Code::ResourceExhausted),
            (RequestError::NoRevocationFeed, Code::FailedPrecondition),
            (RequestError::FeedDown, Code::Unavailable),
            (RequestError::ShuttingDown, Code::Unavailable),
            (
                RequestError::Store(StoreError::unavailable(io_error())),
                Code::Unavailable,
            ),
            (
                RequestError::Store(StoreError::Protocol("x".into())),
                Code::Internal,
            ),
            (
                RequestError::Store(StoreError::CorruptSession {
                    key_prefix: "abcd1234".into(),
                    reason: "x".into(),
                }),
                Code::NotFound,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
    }

    /// Why a session ended travels as `google.rpc.ErrorInfo`; the message stays the one
    /// callers have always seen, and no other error carries details.
    #[test]
    fn an_ended_session_says_why_in_error_info() {
        let reason_of = |err: RequestError| {
            let status = Status::from(err);
            assert_eq!(status.message(), "session not found");
            status
                .get_details_error_info()
                .map(|info| (info.reason, info.domain, info.metadata))
        };
        let did = "did:plc:alice".to_owned();
        assert_eq!(
            reason_of(RequestError::RefreshTokenReused { did: did.clone() }),
            Some((
                "REFRESH_TOKEN_REUSED".to_owned(),
                ERROR_DOMAIN.to_owned(),
                HashMap::from([("did".to_owned(), did)])
            ))
        );
        assert_eq!(
            reason_of(RequestError::SessionRevoked {
                reason: Revocation::AccountTakendown
            }),
            Some((
                "SESSION_REVOKED".to_owned(),
                ERROR_DOMAIN.to_owned(),
                HashMap::from([("revocation".to_owned(), "account-takendown".to_owned())])
            ))
        );
        for (err, reason) in [
            (RequestError::SessionNotFound, "SESSION_UNKNOWN"),
            (
                RequestError::Store(StoreError::CorruptSession {
                    key_prefix: "abcd1234".into(),
                    reason: "x".into(),
                }),
                "SESSION_UNKNOWN",
            ),
            (
                RequestError::SessionLifetimeReached,
                "SESSION_LIFETIME_REACHED",
            ),
        ] {
            assert_eq!(
                reason_of(err).map(|(reason, _, metadata)| (reason, metadata.len())),
                Some((reason.to_owned(), 0))
            );
        }
        assert!(
            Status::from(RequestError::TimedOut)
                .get_details_error_info()
                .is_none()
        );
    }

    #[test]
    fn every_status_the_server_makes_keeps_its_code_and_message() {
        let cases = [
            (
                Status::from(RequestError::Overloaded),
                Code::ResourceExhausted,
                "the session service is at its concurrency limit; retry shortly",
            ),
            (
                Status::from(RequestError::TimedOut),
                Code::DeadlineExceeded,
                "the call took longer than the server allows",
            ),
            (
                Status::from(RequestError::SessionNotFound),
                Code::NotFound,
                "session not found",
            ),
            (
                Status::from(RequestError::TooManyTokens {
                    count: 1001,
                    limit: 1000,
                }),
                Code::InvalidArgument,
                "access_tokens holds 1001 tokens: at most 1000 per call",
            ),
            (
                Status::from(RequestError::Store(StoreError::CorruptSession {
                    key_prefix: "abcd1234".into(),
                    reason: "x".into(),
                })),
                Code::NotFound,
                "session not found",
            ),
            (
                Status::from(RequestError::Store(StoreError::Protocol("x".into()))),
                Code::Internal,
                "session store error",
            ),
            (
                Status::from(Denial::Unauthenticated(
                    "CreateSession: unknown service key".into(),
                )),
                Code::Unauthenticated,
                "CreateSession: unknown service key",
            ),
            (
                Status::from(Denial::PermissionDenied {
                    caller: "plugins".into(),
                    method: "CreateSession".into(),
                }),
                Code::PermissionDenied,
                "caller plugins may not call CreateSession",
            ),
            (
                Status::from(RequestError::Undecodable),
                Code::InvalidArgument,
                "the request could not be decoded",
            ),
            (
                Status::from(Denial::OverBudget {
                    caller: "plugins".into(),
                    method: "ValidateAccessToken".into(),
                }),
                Code::ResourceExhausted,
                "ValidateAccessToken: caller plugins is at its concurrency limit; retry shortly",
            ),
            (
                crate::rpc::polled_after_completion(),
                Code::Internal,
                "polled after completion",
            ),
        ];
        for (status, code, message) in cases {
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }

    #[test]
    fn only_the_servers_own_failures_are_faults() {
        assert!(RequestError::TimedOut.is_server_fault());
        assert!(RequestError::Store(StoreError::unavailable(io_error())).is_server_fault());
        // Shedding is the server working as configured, and the caller's cue to retry.
        assert!(!RequestError::Overloaded.is_server_fault());
        assert!(!RequestError::SessionNotFound.is_server_fault());
        assert!(!RequestError::Undecodable.is_server_fault());
    }

    #[test]
    fn messages_are_short_and_name_the_field() {
        let status = Status::from(RequestError::InvalidArgument(SyntaxError::Handle("bad")));
        assert_eq!(status.message(), "handle is not a valid handle: bad");
        let status = Status::from(RequestError::Store(StoreError::unavailable(io_error())));
        assert_eq!(status.message(), "session store unavailable");
    }

    #[test]
    fn the_log_chain_carries_the_cause() {
        let err = RequestError::Store(StoreError::unavailable(io_error()));
        assert!(err.chain().starts_with("session store unavailable: "));
        assert!(err.chain().contains("refused"), "{}", err.chain());
    }

    #[test]
    fn a_cause_chain_never_repeats_itself() {
        /// An error that prints its source's text as its own, as redis-rs's does.
        #[derive(Debug)]
        struct Echo(std::io::Error);
        impl std::fmt::Display for Echo {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "connecting: {}", self.0)
            }
        }
        impl std::error::Error for Echo {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(chain(&Echo(refused())), "connecting: refused");
        let outer = RequestError::Store(StoreError::unavailable(io_error()));
        let text = chain(&outer);
        assert_eq!(text.matches("refused").count(), 1, "{text}");
    }
}
