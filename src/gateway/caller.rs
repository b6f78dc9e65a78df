//! Who is asking on the HTTP listener: the gateway, not the user. The user's access token
//! travels in the request the gateway forwards (`Authorization: Bearer`, or a cookie), so
//! on forward auth the gateway cannot put its own service key in `Authorization` as gRPC
//! callers do. It proves itself by its client certificate (mTLS), or by its service key in
//! [`GATEWAY_KEY_HEADER`]; introspection, where the token is in the body, also takes the
//! key as `Authorization: Bearer <key>` or as HTTP Basic's password (RFC 7662 asks callers
//! to authenticate as OAuth clients do, and API gateways send Basic). The policy then
//! decides as for gRPC: the right to `Check` covers both endpoints.

use super::Gateway;
use crate::authz::{AuthorizationHeader, Denial, certificate_identities, presented_key};
use crate::rpc::Rpc;
use axum::http::HeaderMap;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// The header a gateway sends its service key in. Its name reads as one of ours
/// ([`crate::api::headers::reads_as_ours`]), so gateway configurations that clear every
/// `X-Barazo-*` header before the upstream clear it too.
pub const GATEWAY_KEY_HEADER: &str = "x-barazo-gateway-key";

/// The identities of a connection's client certificate, put in each request's extensions
/// by [`super::listener`] (empty without TLS or without a certificate).
#[derive(Debug, Clone, Default)]
pub(crate) struct CallerCertificate(pub(crate) Arc<[String]>);

impl CallerCertificate {
    /// The identities of the leaf of `chain`, if any.
    pub(crate) fn of(
        chain: Option<&[tokio_rustls::rustls::pki_types::CertificateDer<'_>]>,
    ) -> Self {
        let identities = chain
            .and_then(|certs| certs.first())
            .map(|leaf| certificate_identities(leaf))
            .unwrap_or_default();
        Self(identities.into())
    }
}

/// Where a caller's service key may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyIn {
    /// [`GATEWAY_KEY_HEADER`] only: forward auth, whose `Authorization` is the user's.
    GatewayHeader,
    /// [`GATEWAY_KEY_HEADER`], or `Authorization` as `Bearer <key>` or Basic with the key
    /// as password and the caller's policy name as user: introspection.
    AnyHeader,
}

/// A refusal of the caller, before its call starts.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) denial: Denial,
    /// Whether the caller presented HTTP Basic credentials (introspection answers in kind).
    pub(crate) basic: bool,
}

impl<S> Gateway<S> {
    /// Admits a call of `rpc` by the caller the request's credentials name (its
    /// certificate, its key where `key_in` says), holding a slot of its budget until
    /// dropped; counts a refusal in the RPC metrics.
    pub(crate) fn admit(
        &self,
        rpc: Rpc,
        request: &axum::http::request::Parts,
        key_in: KeyIn,
    ) -> Result<Option<OwnedSemaphorePermit>, Refused> {
        let identities: &[String] = request
            .extensions
            .get::<CallerCertificate>()
            .map_or(&[], |certificate| &certificate.0);
        let presented = presented(&request.headers, key_in);
        let header = match &presented {
            CallerKey::Nothing => AuthorizationHeader::Nothing,
            CallerKey::Key(key) => AuthorizationHeader::Key(key),
            CallerKey::Basic { key, .. } => AuthorizationHeader::Key(key),
            CallerKey::NotAKey => AuthorizationHeader::NotAKey,
        };
        let verdict = self
            .authz
            .admit(rpc, identities, header)
            .and_then(|admitted| match (&presented, admitted.caller) {
                // The Basic user names the caller the key belongs to, as an OAuth
                // client_id names its client: a key under another name is somebody's
                // mistake or somebody else's key.
                (CallerKey::Basic { user, .. }, Some(caller)) if *user != caller => {
                    Err(Denial::Unauthenticated(format!(
                        "{}: the Basic user is not the caller the key belongs to",
                        rpc.method()
                    )))
                }
                _ => Ok(admitted.permit),
            });
        verdict.map_err(|denial| {
            tracing::debug!(rpc.method = rpc.method(), denial = %denial, "call refused by the authorization policy");
            let code = tonic::Status::from(denial.clone()).code();
            self.metrics
                .rpc(&rpc.labels(code), std::time::Duration::ZERO);
            Refused {
                denial,
                basic: matches!(presented, CallerKey::Basic { .. }),
            }
        })
    }
}

/// What a request presents as the caller's service key.
#[derive(Clone, PartialEq, Eq)]
enum CallerKey<'a> {
    Nothing,
    Key(&'a str),
    Basic {
        user: String,
        key: String,
    },
    /// A credential that is not one service key: refused whatever the certificate says,
    /// as on gRPC, since a caller that sends a credential means it to count.
    NotAKey,
}

/// Never prints a key.
impl std::fmt::Debug for CallerKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallerKey::Nothing => f.write_str("Nothing"),
            CallerKey::Key(_) => f.write_str("Key([redacted])"),
            CallerKey::Basic { user, .. } => {
                write!(f, "Basic {{ user: {user:?}, key: [redacted] }}")
            }
            CallerKey::NotAKey => f.write_str("NotAKey"),
        }
    }
}

fn presented(headers: &HeaderMap, key_in: KeyIn) -> CallerKey<'_> {
    let mut keys = headers.get_all(GATEWAY_KEY_HEADER).iter();
    match (keys.next(), keys.next()) {
        (None, _) => {}
        (Some(key), None) => {
            return match key.to_str().map(str::trim) {
                Ok(key) if !key.is_empty() => CallerKey::Key(key),
                _ => CallerKey::NotAKey,
            };
        }
        (Some(_), Some(_)) => return CallerKey::NotAKey,
    }
    if key_in == KeyIn::GatewayHeader {
        return CallerKey::Nothing;
    }
    // The gRPC listener's reading of `Authorization`, and HTTP Basic besides.
    match presented_key(headers) {
        AuthorizationHeader::Nothing => CallerKey::Nothing,
        AuthorizationHeader::Key(key) => CallerKey::Key(key),
        AuthorizationHeader::NotAKey => headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(basic_credentials)
            .filter(|_| {
                headers
                    .get_all(axum::http::header::AUTHORIZATION)
                    .iter()
                    .count()
                    == 1
            })
            .map_or(CallerKey::NotAKey, |(user, key)| CallerKey::Basic {
                user,
                key,
            }),
    }
}

/// The user and password of `Basic <base64(user:password)>` (RFC 7617), scheme in any
/// case; `None` for another scheme, bad base64, text that is not UTF-8, or no `:`.
fn basic_credentials(value: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    const SCHEME: &str = "basic ";
    let (scheme, encoded) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((form_decoded(user)?, form_decoded(password)?))
}

/// RFC 6749 §2.3.1: a client's id and secret are form-urlencoded before they are joined
/// for Basic, so `+` is a space and `%XX` a byte; `None` when that is not UTF-8.
fn form_decoded(part: &str) -> Option<String> {
    let spaced = part.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::tests::headers;

    #[test]
    fn forward_auth_reads_the_key_from_its_own_header_only() {
        let user_token = headers(&[("authorization", "Bearer the-users-token")]);
        assert_eq!(
            presented(&user_token, KeyIn::GatewayHeader),
            CallerKey::Nothing
        );
        let both = headers(&[
            ("authorization", "Bearer the-users-token"),
            ("x-barazo-gateway-key", " k1 "),
        ]);
        assert_eq!(presented(&both, KeyIn::GatewayHeader), CallerKey::Key("k1"));
        let twice = headers(&[
            ("x-barazo-gateway-key", "k1"),
            ("x-barazo-gateway-key", "k2"),
        ]);
        assert_eq!(presented(&twice, KeyIn::GatewayHeader), CallerKey::NotAKey);
        let empty = headers(&[("x-barazo-gateway-key", "")]);
        assert_eq!(presented(&empty, KeyIn::GatewayHeader), CallerKey::NotAKey);
    }

    #[test]
    fn introspection_takes_bearer_basic_or_the_gateway_header() {
        let bearer = headers(&[("authorization", "bearer k1")]);
        assert_eq!(presented(&bearer, KeyIn::AnyHeader), CallerKey::Key("k1"));
        // base64("edge:k1")
        let basic = headers(&[("authorization", "Basic ZWRnZTprMQ==")]);
        assert_eq!(
            presented(&basic, KeyIn::AnyHeader),
            CallerKey::Basic {
                user: "edge".into(),
                key: "k1".into()
            }
        );
        // base64("ed%2Bge:k+1"): form-urlencoded before base64 (RFC 6749 §2.3.1).
        let encoded = headers(&[("authorization", "Basic ZWQlMkJnZTprKzE=")]);
        assert_eq!(
            presented(&encoded, KeyIn::AnyHeader),
            CallerKey::Basic {
                user: "ed+ge".into(),
                key: "k 1".into()
            }
        );
        for junk in ["Basic !!!", "Basic ZWRnZQ==", "Digest x", "k1"] {
            let map = headers(&[("authorization", junk)]);
            assert_eq!(
                presented(&map, KeyIn::AnyHeader),
                CallerKey::NotAKey,
                "{junk}"
            );
        }
        assert_eq!(
            presented(&HeaderMap::new(), KeyIn::AnyHeader),
            CallerKey::Nothing
        );
    }
}
