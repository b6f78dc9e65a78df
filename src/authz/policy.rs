//! The policy file (TOML `[callers.<name>]` tables) and its decisions: which caller a
//! certificate or a service key's digest names, and whether it may call an RPC.

use super::credentials::AuthorizationHeader;
use crate::domain::sha256_hex;
use crate::proto::session_service_server::SERVICE_NAME;
use crate::rpc::{EXT_AUTHZ_SERVICE, REFLECTION, Rpc};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Semaphore;

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
/// from [`crate::api::error`].
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
                    let known: Vec<&str> = Rpc::ALL
                        .iter()
                        .filter(|rpc| !rpc.is_http())
                        .map(|rpc| rpc.method())
                        .collect();
                    let http = Rpc::ALL
                        .iter()
                        .any(|rpc| rpc.is_http() && rpc.method() == method);
                    let hint = if http {
                        " (the HTTP listener's endpoints are allowed by Check)"
                    } else {
                        ""
                    };
                    return Err(PolicyError::Invalid(format!(
                        "caller {name}: unknown RPC {method:?} in allow{hint} (known: {}, {REFLECTION}, *)",
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
        presented: AuthorizationHeader<'_>,
    ) -> Result<String, Denial> {
        let caller = match presented {
            AuthorizationHeader::Key(key) => self
                .caller_by_key(key)
                .ok_or_else(|| Denial::Unauthenticated(format!("{method}: unknown service key")))?,
            AuthorizationHeader::NotAKey => {
                return Err(Denial::Unauthenticated(format!(
                    "{method}: the authorization header is not a service key (Bearer <key>)"
                )));
            }
            AuthorizationHeader::Nothing if identities.is_empty() => {
                return Err(Denial::Unauthenticated(format!(
                    "{method} needs a client certificate or a service key"
                )));
            }
            // A certificate the TLS layer verified is a credential; an identity the policy
            // does not list is known but not allowed anything.
            AuthorizationHeader::Nothing => self
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

/// What a request path asks for, as the policy names it: an RPC (a session RPC or ext_authz
/// `Check`), reflection, or `None` for something always open.
pub(super) fn method_of(path: &str) -> Option<&str> {
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
