//! Who may call what: caller identities (mTLS certificate SANs, or service keys sent as
//! `authorization: Bearer <key>`, scheme in any case), and the policy file that maps them to RPCs.
//!
//! The policy only ever holds SHA-256 digests of service keys. When a policy is configured,
//! everything it does not allow is denied: no credentials → `UNAUTHENTICATED`, a caller not
//! allowed the RPC → `PERMISSION_DENIED`. Health checks stay open to everyone.

use crate::connections::Peer;
use crate::metrics::{Metrics, RpcLabels};
use crate::proto::session_service_server::SERVICE_NAME;
use crate::rpc::{EXT_AUTHZ_SERVICE, REFLECTION, REFLECTION_SERVICE, Rpc, metric_name};
use crate::session::sha256_hex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::codegen::{Service, http};
use tonic::transport::server::TlsConnectInfo;

/// Why a policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read the authorization policy {path}")]
    Read {
        /// The configured path.
        path: String,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("the authorization policy is not valid: {0}")]
    Parse(String),
    /// A value in the file is wrong; the message says which.
    #[error("the authorization policy is not valid: {0}")]
    Invalid(String),
}

/// One caller as written in the policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerEntry {
    /// Certificate identities: SAN URIs (e.g. SPIFFE ids) or DNS names.
    #[serde(default)]
    identities: Vec<String>,
    /// Lowercase hex SHA-256 digests of the caller's service keys (never the keys).
    #[serde(default)]
    keys_sha256: Vec<String>,
    /// RPC names this caller may call, `ServerReflection`, or `*` for everything.
    allow: Vec<String>,
    /// Calls this caller may have in progress at once (default: half of
    /// `--max-concurrent-requests`), so that one caller's flood leaves room for the others.
    #[serde(default)]
    max_concurrent: Option<usize>,
}

/// The policy file: `[callers.<name>]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    callers: BTreeMap<String, CallerEntry>,
}

/// One caller of the policy.
#[derive(Debug)]
struct Caller {
    name: String,
    identities: Vec<String>,
    key_digests: Vec<[u8; 32]>,
    allow_all: bool,
    allow: Vec<String>,
    max_concurrent: Option<usize>,
}

impl Caller {
    fn may_call(&self, method: &str) -> bool {
        self.allow_all
            || self.allow.iter().any(|m| {
                m == method
                    // A batch reveals nothing its tokens' single validations would not, and
                    // the TypeScript client batches by default: the single right covers it.
                    || (m == Rpc::ValidateAccessToken.method()
                        && method == Rpc::ValidateAccessTokens.method())
            })
    }
}

/// Who may call what. Built once from the policy file.
#[derive(Debug)]
pub struct Policy {
    callers: Vec<Caller>,
}

/// Why a call was refused. Its `Display` is the log's wording; the caller's `Status` comes
/// from [`crate::error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No credential, or one nobody in the policy holds.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A known caller with all of its concurrency budget in use.
    #[error("{caller} is at its concurrency limit ({method})")]
    OverBudget {
        /// The caller's name in the policy.
        caller: String,
        /// The RPC refused.
        method: String,
    },
    /// A known caller without the right to this RPC.
    #[error("{caller} may not call {method}")]
    PermissionDenied {
        /// The caller's name in the policy.
        caller: String,
        /// The RPC refused.
        method: String,
    },
}

fn parse_digest(hex_digest: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_digest).ok()?;
    bytes.try_into().ok()
}

/// Compares two digests without an early exit.
fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Policy {
    /// Reads and checks a policy file; every problem names the caller and the value.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses policy TOML.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        let mut callers = Vec::new();
        let mut seen_identities = std::collections::BTreeSet::new();
        let mut seen_digests = std::collections::BTreeSet::new();
        for (name, entry) in file.callers {
            for identity in &entry.identities {
                if !seen_identities.insert(identity.clone()) {
                    return Err(PolicyError::Invalid(format!(
                        "identity {identity:?} is listed for more than one caller (at {name})"
                    )));
                }
            }
            for digest in &entry.keys_sha256 {
                if !seen_digests.insert(digest.to_ascii_lowercase()) {
                    return Err(PolicyError::Invalid(format!(
                        "a service key digest is listed for more than one caller (at {name})"
                    )));
                }
            }
            if entry.identities.is_empty() && entry.keys_sha256.is_empty() {
                return Err(PolicyError::Invalid(format!(
                    "caller {name} has neither identities nor keys_sha256"
                )));
            }
            let mut key_digests = Vec::new();
            for digest in &entry.keys_sha256 {
                let parsed = parse_digest(digest).ok_or_else(|| {
                    PolicyError::Invalid(format!(
                        "caller {name}: keys_sha256 entries must be 64 hex characters (a SHA-256 digest, not the key)"
                    ))
                })?;
                key_digests.push(parsed);
            }
            for method in &entry.allow {
                if method != "*" && method != REFLECTION && Rpc::from_method(method).is_none() {
                    let known: Vec<&str> = Rpc::ALL.iter().map(|rpc| rpc.method()).collect();
                    return Err(PolicyError::Invalid(format!(
                        "caller {name}: unknown RPC {method:?} in allow (known: {}, {REFLECTION}, *)",
                        known.join(", ")
                    )));
                }
            }
            if entry.max_concurrent == Some(0) {
                return Err(PolicyError::Invalid(format!(
                    "caller {name}: max_concurrent must be at least 1"
                )));
            }
            callers.push(Caller {
                name,
                identities: entry.identities,
                key_digests,
                allow_all: entry.allow.iter().any(|m| m == "*"),
                allow: entry.allow,
                max_concurrent: entry.max_concurrent,
            });
        }
        Ok(Self { callers })
    }

    /// Each caller's concurrency budget: its `max_concurrent`, or by default half of
    /// `global` (at least 1), so that a flood by one caller leaves the other half for the
    /// others.
    pub fn budgets(&self, global: usize) -> BTreeMap<String, Arc<Semaphore>> {
        let share = (global / 2).max(1);
        self.callers
            .iter()
            .map(|caller| {
                let budget = caller.max_concurrent.unwrap_or(share);
                (caller.name.clone(), Arc::new(Semaphore::new(budget)))
            })
            .collect()
    }

    /// The caller holding this service key, comparing against every digest in full so
    /// the time taken does not reveal which digest (or how much of one) matched.
    fn caller_by_key(&self, key: &str) -> Option<&Caller> {
        let digest = parse_digest(&sha256_hex(key))?;
        let mut found = None;
        for caller in &self.callers {
            for known in &caller.key_digests {
                if digest_eq(known, &digest) && found.is_none() {
                    found = Some(caller);
                }
            }
        }
        found
    }

    /// The one caller a certificate speaks for. A certificate whose identities belong to
    /// two callers is ambiguous and speaks for nobody: no caller is picked by file order.
    fn caller_by_identity(&self, identities: &[String]) -> Result<Option<&Caller>, Ambiguous> {
        let mut matching = self
            .callers
            .iter()
            .filter(|c| c.identities.iter().any(|i| identities.contains(i)));
        let first = matching.next();
        match matching.next() {
            Some(_) => Err(Ambiguous),
            None => Ok(first),
        }
    }

    /// Decides one call. An `authorization` header, when sent, must carry a valid service
    /// key (a wrong key, or a credential of another scheme, is never overridden by a
    /// certificate); otherwise the certificate identities decide.
    pub fn authorize(
        &self,
        method: &str,
        identities: &[String],
        presented: Presented<'_>,
    ) -> Result<String, Denial> {
        let caller = match presented {
            Presented::Key(key) => self
                .caller_by_key(key)
                .ok_or_else(|| Denial::Unauthenticated(format!("{method}: unknown service key")))?,
            Presented::NotAKey => {
                return Err(Denial::Unauthenticated(format!(
                    "{method}: the authorization header is not a service key (Bearer <key>)"
                )));
            }
            Presented::Nothing if identities.is_empty() => {
                return Err(Denial::Unauthenticated(format!(
                    "{method} needs a client certificate or a service key"
                )));
            }
            // A certificate the TLS layer verified is a credential; an identity the policy
            // does not list is known but not allowed anything.
            Presented::Nothing => self
                .caller_by_identity(identities)
                .map_err(|Ambiguous| {
                    Denial::Unauthenticated(format!(
                        "{method}: the client certificate names more than one caller of the policy"
                    ))
                })?
                .ok_or_else(|| Denial::PermissionDenied {
                    caller: "an unlisted certificate identity".into(),
                    method: method.to_owned(),
                })?,
        };
        if caller.may_call(method) {
            Ok(caller.name.clone())
        } else {
            Err(Denial::PermissionDenied {
                caller: caller.name.clone(),
                method: method.to_owned(),
            })
        }
    }
}

/// A certificate whose identities belong to more than one caller.
struct Ambiguous;

/// What a request's `authorization` header presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// No `authorization` header: the certificate, if any, decides.
    Nothing,
    /// A `Bearer` credential: the service key, spaces around it removed.
    Key(&'a str),
    /// A header that is not a `Bearer` credential (another scheme, no scheme, bytes that are
    /// not visible ASCII, or several headers): refused, whatever the certificate says,
    /// since a caller that sends a credential means it to count.
    NotAKey,
}

/// The identities (SAN URIs and DNS names) of a DER client certificate. Parsed once per
/// connection (see [`caller_identities`]), not per call.
pub fn certificate_identities(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect()
}

/// What a request path asks for, as the policy names it: an RPC (a session RPC or ext_authz
/// `Check`), reflection, or `None` for something always open.
fn method_of(path: &str) -> Option<&str> {
    if let Some(rpc) = Rpc::from_path(path) {
        return Some(rpc.method());
    }
    let (service, _) = path.strip_prefix('/')?.split_once('/')?;
    match service {
        // A method the service does not have (the router answers UNIMPLEMENTED) goes by its
        // whole path, which no right names but `*`: `/barazo.session.v1.SessionService/Check`
        // is not the right `Check`.
        SERVICE_NAME | EXT_AUTHZ_SERVICE => Some(path),
        "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
            Some(REFLECTION)
        }
        // Health (and anything unknown, which the router answers UNIMPLEMENTED) stays open.
        _ => None,
    }
}

/// Tower layer enforcing a [`Policy`] before any gRPC service sees the request; without a
/// policy it lets everything through.
#[derive(Clone)]
pub struct AuthLayer {
    policy: Option<Arc<Policy>>,
    metrics: Arc<Metrics>,
    budgets: Arc<BTreeMap<String, Arc<Semaphore>>>,
}

impl AuthLayer {
    /// Enforces `policy`, or nothing when `None`; refusals are counted in `metrics`. Each
    /// caller's calls in progress are limited by its budget ([`Policy::budgets`] of
    /// `max_concurrent_requests`).
    pub fn new(
        policy: Option<Arc<Policy>>,
        metrics: Arc<Metrics>,
        max_concurrent_requests: usize,
    ) -> Self {
        let budgets = policy
            .as_ref()
            .map(|p| p.budgets(max_concurrent_requests))
            .unwrap_or_default();
        Self {
            policy,
            metrics,
            budgets: Arc::new(budgets),
        }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorized {
            inner,
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
            budgets: self.budgets.clone(),
        }
    }
}

/// A service behind an [`AuthLayer`].
#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    policy: Option<Arc<Policy>>,
    metrics: Arc<Metrics>,
    budgets: Arc<BTreeMap<String, Arc<Semaphore>>>,
}

/// The identities of the client certificate of the connection a request came on; none
/// without TLS or without a client certificate. The certificate is parsed on the
/// connection's first call and kept with the connection ([`Peer`]): it cannot change
/// while the connection lasts.
fn caller_identities<B>(request: &http::Request<B>) -> &[String] {
    let Some(tls) = request.extensions().get::<TlsConnectInfo<Peer>>() else {
        return &[];
    };
    tls.get_ref().identities(|| {
        tls.peer_certs()
            .and_then(|certs| certs.first().map(|leaf| certificate_identities(leaf)))
            .unwrap_or_default()
    })
}

/// What a request's `authorization` header presents. The scheme is matched
/// case-insensitively (RFC 7235: `Bearer`, `bearer` and `BEARER` are one scheme), followed
/// by at least one space; spaces around the key are ignored.
pub fn presented_key(headers: &http::HeaderMap) -> Presented<'_> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Presented::Nothing;
    };
    if values.next().is_some() {
        // Two credentials: which one counts would be a guess.
        return Presented::NotAKey;
    }
    match value.to_str().ok().and_then(bearer_credential) {
        Some(key) => Presented::Key(key),
        None => Presented::NotAKey,
    }
}

/// The credential of an `authorization` header value, `Bearer <credential>`: the scheme in
/// any case (RFC 7235), at least one space after it, spaces around the credential removed.
/// `None` for another scheme or no scheme. The one parser of the header, for service keys
/// here and for users' access tokens in [`crate::ext_authz`].
pub fn bearer_credential(value: &str) -> Option<&str> {
    const SCHEME: &str = "bearer ";
    match value.split_at_checked(SCHEME.len()) {
        Some((scheme, credential)) if scheme.eq_ignore_ascii_case(SCHEME) => {
            Some(credential.trim())
        }
        _ => None,
    }
}

/// Decides one call: `Ok(None)` for calls outside the policy (health), `Ok(Some(permit))`
/// for an allowed call within its caller's budget (held until the call ends).
fn decide<B>(
    policy: &Policy,
    metrics: &Metrics,
    budgets: &BTreeMap<String, Arc<Semaphore>>,
    request: &http::Request<B>,
) -> Result<Option<OwnedSemaphorePermit>, Status> {
    let Some(method) = method_of(request.uri().path()) else {
        return Ok(None);
    };
    let identities = caller_identities(request);
    let verdict = policy
        .authorize(method, identities, presented_key(request.headers()))
        .and_then(|caller| match budgets.get(&caller) {
            // A full budget refuses at once, as the global limit does: no queue.
            Some(budget) => {
                budget
                    .clone()
                    .try_acquire_owned()
                    .map(Some)
                    .map_err(|_| Denial::OverBudget {
                        caller,
                        method: method.to_owned(),
                    })
            }
            None => Ok(None),
        });
    match verdict {
        Ok(permit) => Ok(permit),
        Err(denial) => {
            // Debug level: anyone who reaches the port can cause these, so they must not be
            // able to flood the log; the refusal counts are in the RPC metrics instead.
            // (Nothing secret is in a denial: the RPC and the caller's name in the policy.)
            tracing::debug!(rpc.method = method, denial = %denial, "call refused by the authorization policy");
            let status = Status::from(denial);
            let service = match Rpc::from_method(method) {
                Some(rpc) => rpc.service(),
                None if method == REFLECTION => REFLECTION_SERVICE,
                // A method neither service has, named by its path (see `method_of`).
                None if method
                    .strip_prefix('/')
                    .is_some_and(|p| p.starts_with(EXT_AUTHZ_SERVICE)) =>
                {
                    EXT_AUTHZ_SERVICE
                }
                None => SERVICE_NAME,
            };
            metrics.rpc(
                &RpcLabels::grpc(service, metric_name(method), status.code()),
                std::time::Duration::ZERO,
            );
            Err(status)
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future, or the refusal: no allocation on the allowed path.
    /// (Fields: `inner`, the service's future; `response`, the refusal until polled. The
    /// macro takes no doc comments on enum fields.)
    #[project = AuthFutureProj]
    #[allow(missing_docs)]
    pub enum AuthFuture<F> {
        /// The call was allowed; the caller's budget permit, if any, is held until it ends.
        Allowed { #[pin] inner: F, permit: Option<OwnedSemaphorePermit> },
        /// The call was refused; the response is taken once.
        Refused { response: Option<http::Response<tonic::body::Body>> },
    }
}

impl<F, E> Future for AuthFuture<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthFutureProj::Allowed { inner, permit } => {
                let polled = inner.poll(cx);
                if polled.is_ready() {
                    // The call is over: its budget slot frees at once.
                    permit.take();
                }
                polled
            }
            AuthFutureProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after completion: a caller bug; answer as tonic would.
                None => Poll::Ready(Ok(crate::error::polled_after_completion().into_http())),
            },
        }
    }
}

impl<S, B> Service<http::Request<B>> for Authorized<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let verdict = match &self.policy {
            Some(policy) => decide(policy, &self.metrics, &self.budgets, &request),
            None => Ok(None),
        };
        match verdict {
            Ok(permit) => AuthFuture::Allowed {
                inner: self.inner.call(request),
                permit,
            },
            Err(status) => AuthFuture::Refused {
                response: Some(status.into_http()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::parse(&format!(
            r#"
            [callers.appview-auth]
            identities = ["spiffe://barazo/appview-auth"]
            keys_sha256 = ["{}"]
            allow = ["CreateSession", "RefreshSession", "DeleteSession", "DeleteAllSessionsForDid", "ValidateAccessToken"]

            [callers.plugins]
            keys_sha256 = ["{}"]
            allow = ["ValidateAccessToken"]

            [callers.operator]
            identities = ["ops.barazo.internal"]
            allow = ["*"]
            "#,
            sha256_hex("auth-key"),
            sha256_hex("plugin-key")
        ))
        .expect("valid policy")
    }

    #[test]
    fn callers_get_what_the_policy_allows() {
        let p = policy();
        let auth = vec!["spiffe://barazo/appview-auth".to_owned()];
        assert_eq!(
            p.authorize("CreateSession", &auth, Presented::Nothing),
            Ok("appview-auth".into())
        );
        assert_eq!(
            p.authorize("CreateSession", &[], Presented::Key("auth-key")),
            Ok("appview-auth".into())
        );
        assert_eq!(
            p.authorize("ValidateAccessToken", &[], Presented::Key("plugin-key")),
            Ok("plugins".into())
        );
        let ops = vec!["ops.barazo.internal".to_owned()];
        assert_eq!(
            p.authorize(REFLECTION, &ops, Presented::Nothing),
            Ok("operator".into())
        );
    }

    #[test]
    fn the_single_validation_right_covers_the_batch_but_not_the_reverse() {
        let p = Policy::parse(&format!(
            "[callers.plugins]\nkeys_sha256 = [\"{}\"]\nallow = [\"ValidateAccessToken\"]\n\
             [callers.batcher]\nkeys_sha256 = [\"{}\"]\nallow = [\"ValidateAccessTokens\"]",
            sha256_hex("plugin-key"),
            sha256_hex("batch-key")
        ))
        .expect("valid policy");
        assert_eq!(
            p.authorize("ValidateAccessTokens", &[], Presented::Key("plugin-key")),
            Ok("plugins".into())
        );
        assert_eq!(
            p.authorize("ValidateAccessTokens", &[], Presented::Key("batch-key")),
            Ok("batcher".into())
        );
        assert!(matches!(
            p.authorize("ValidateAccessToken", &[], Presented::Key("batch-key")),
            Err(Denial::PermissionDenied { .. })
        ));
        assert!(matches!(
            p.authorize("Check", &[], Presented::Key("plugin-key")),
            Err(Denial::PermissionDenied { .. })
        ));
    }

    #[test]
    fn everything_else_is_denied() {
        let p = policy();
        assert_eq!(
            p.authorize("CreateSession", &[], Presented::Key("plugin-key")),
            Err(Denial::PermissionDenied {
                caller: "plugins".into(),
                method: "CreateSession".into()
            })
        );
        assert!(matches!(
            p.authorize("CreateSession", &[], Presented::Nothing),
            Err(Denial::Unauthenticated(_))
        ));
        assert!(matches!(
            p.authorize("CreateSession", &[], Presented::Key("wrong")),
            Err(Denial::Unauthenticated(_))
        ));
        // A wrong key is not rescued by a good certificate.
        let auth = vec!["spiffe://barazo/appview-auth".to_owned()];
        assert!(matches!(
            p.authorize("CreateSession", &auth, Presented::Key("wrong")),
            Err(Denial::Unauthenticated(_))
        ));
        let stranger = vec!["spiffe://elsewhere".to_owned()];
        assert!(matches!(
            p.authorize("ValidateAccessToken", &stranger, Presented::Nothing),
            Err(Denial::PermissionDenied { .. })
        ));
        assert!(matches!(
            p.authorize(REFLECTION, &[], Presented::Key("plugin-key")),
            Err(Denial::PermissionDenied { .. })
        ));
    }

    #[test]
    fn messages_name_the_rpc_not_the_secret() {
        let status = Status::from(
            policy()
                .authorize("CreateSession", &[], Presented::Key("plugin-key"))
                .expect_err("denied"),
        );
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            status.message(),
            "caller plugins may not call CreateSession"
        );
        let status = Status::from(
            policy()
                .authorize("CreateSession", &[], Presented::Key("s3cret"))
                .expect_err("x"),
        );
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "CreateSession: unknown service key");
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        for (text, needle) in [
            (
                "[callers.a]\nallow = [\"CreateSession\"]",
                "neither identities nor keys",
            ),
            (
                "[callers.a]\nkeys_sha256 = [\"plain-key\"]\nallow = [\"*\"]",
                "64 hex",
            ),
            (
                "[callers.a]\nidentities = [\"x\"]\nallow = [\"CreateSesion\"]",
                "unknown RPC",
            ),
            (
                "[callers.a]\nidentities = [\"x\"]\nallow = []\nextra = 1",
                "unknown field",
            ),
            ("not toml", ""),
            (
                "[callers.a]\nidentities = [\"x\"]\nallow = [\"*\"]\n[callers.b]\nidentities = [\"x\"]\nallow = [\"*\"]",
                "more than one caller",
            ),
        ] {
            let err = Policy::parse(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn the_service_key_is_the_bearer_credential_in_any_case() {
        let presented = |values: &[&[u8]]| {
            let mut headers = http::HeaderMap::new();
            for value in values {
                headers.append(
                    http::header::AUTHORIZATION,
                    http::HeaderValue::from_bytes(value).expect("a header value"),
                );
            }
            // Owned, since the headers go when the closure returns.
            match presented_key(&headers) {
                Presented::Key(key) => format!("key {key:?}"),
                other => format!("{other:?}"),
            }
        };
        let key = |k: &str| format!("key {k:?}");
        assert_eq!(presented(&[b"Bearer plugin-key"]), key("plugin-key"));
        assert_eq!(presented(&[b"bearer plugin-key"]), key("plugin-key"));
        assert_eq!(presented(&[b"BEARER plugin-key"]), key("plugin-key"));
        assert_eq!(presented(&[b"Bearer  plugin-key \t"]), key("plugin-key"));
        assert_eq!(presented(&[b"Bearer "]), key(""));
        for refused in [
            &b"Basic cGx1Z2lu"[..],
            b"plugin-key",
            b"Bearer",
            b"Bearerplugin-key",
            b"Bearer \xff",
            b"",
        ] {
            assert_eq!(presented(&[refused]), "NotAKey", "{refused:?}");
        }
        assert_eq!(
            presented(&[b"Bearer plugin-key", b"Bearer auth-key"]),
            "NotAKey"
        );
        assert_eq!(presented(&[]), "Nothing");
        // An empty key is a key, and nobody's.
        assert!(matches!(
            policy().authorize("ValidateAccessToken", &[], Presented::Key("")),
            Err(Denial::Unauthenticated(_))
        ));
    }

    #[test]
    fn a_credential_that_is_not_a_key_is_not_rescued_by_a_certificate() {
        let auth = vec!["spiffe://barazo/appview-auth".to_owned()];
        let denied = policy()
            .authorize("CreateSession", &auth, Presented::NotAKey)
            .expect_err("refused");
        assert!(matches!(denied, Denial::Unauthenticated(_)), "{denied:?}");
        assert!(denied.to_string().contains("not a service key"), "{denied}");
    }

    #[test]
    fn each_caller_has_a_budget_half_the_global_limit_by_default() {
        let p = Policy::parse(&format!(
            "[callers.a]\nidentities = [\"a\"]\nallow = [\"*\"]\nmax_concurrent = 7\n[callers.b]\nkeys_sha256 = [\"{}\"]\nallow = [\"*\"]",
            sha256_hex("k")
        ))
        .expect("valid");
        let budgets = p.budgets(1024);
        assert_eq!(budgets["a"].available_permits(), 7);
        assert_eq!(budgets["b"].available_permits(), 512);
        assert_eq!(p.budgets(1)["b"].available_permits(), 1);
        let err =
            Policy::parse("[callers.a]\nidentities = [\"a\"]\nallow = []\nmax_concurrent = 0")
                .expect_err("zero");
        assert!(err.to_string().contains("at least 1"), "{err}");
    }

    #[test]
    fn a_certificate_naming_two_callers_speaks_for_nobody() {
        let both = vec![
            "spiffe://barazo/appview-auth".to_owned(),
            "ops.barazo.internal".to_owned(),
        ];
        let denied = policy()
            .authorize("ValidateAccessToken", &both, Presented::Nothing)
            .expect_err("ambiguous");
        assert!(matches!(denied, Denial::Unauthenticated(_)), "{denied:?}");
        assert!(
            denied.to_string().contains("more than one caller"),
            "{denied}"
        );
    }

    #[test]
    fn a_certificate_names_its_san_uris_and_dns_names() {
        let mut params =
            rcgen::CertificateParams::new(vec!["ops.barazo.internal".to_owned()]).expect("params");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://barazo/appview-auth".try_into().expect("ascii"),
        ));
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("certificate");
        assert_eq!(
            certificate_identities(cert.der()),
            ["ops.barazo.internal", "spiffe://barazo/appview-auth"]
        );
        assert!(certificate_identities(b"not a certificate").is_empty());
    }

    #[test]
    fn paths_map_to_rpcs() {
        assert_eq!(
            method_of("/barazo.session.v1.SessionService/CreateSession"),
            Some("CreateSession")
        );
        assert_eq!(
            method_of("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Some(REFLECTION)
        );
        assert_eq!(
            method_of("/envoy.service.auth.v3.Authorization/Check"),
            Some("Check")
        );
        assert_eq!(method_of("/grpc.health.v1.Health/Check"), None);
        assert_eq!(method_of("garbage"), None);
        // Another service's method name is not that method's right.
        for unknown in [
            "/barazo.session.v1.SessionService/Check",
            "/envoy.service.auth.v3.Authorization/CreateSession",
        ] {
            assert_eq!(method_of(unknown), Some(unknown));
        }
    }
}
