//! `/v1/forward-auth`: a gateway (nginx `auth_request`, Caddy `forward_auth`, Traefik
//! `ForwardAuth`) forwards the headers of the user's request, with any method, and lets the
//! request through on a 2xx, copying the identity headers of the answer onto it.
//!
//! - A token valid by [`crate::api::validation::AccessTokens::validate`] (the path
//!   `ValidateAccessToken` and `Check` take, cache included) → `200` with `X-Barazo-Did`,
//!   `X-Barazo-Handle`, `X-Barazo-Session-Key`.
//! - No token, or one that is not valid → `401` with `WWW-Authenticate: Bearer` (RFC 6750:
//!   `error="invalid_token"` when a token was sent).
//! - The store failing, the call timing out or the service shedding load → `503` with
//!   `Retry-After`, never 401 (which would log the user out) nor 200.
//! - A request carrying any header that would pass for ours upstream
//!   ([`crate::api::headers::reads_as_ours`]) other than the gateway's key → `403`. Envoy's
//!   `Check` can remove such headers from the upstream request; an HTTP answer cannot, so
//!   a request that tries to bring its own identity does not get through at all, whatever
//!   the gateway's configuration forgets.
//! - The gateway refused by the policy → `403` (never 401: the user's token is not at fault).
//!
//! The user's token is `Authorization: Bearer <token>` (scheme in any case), or the cookie
//! `--forward-auth-cookie` names when no bearer header is sent.

use super::Gateway;
use super::caller::{GATEWAY_KEY_HEADER, KeyIn};
use crate::api::call::SpanFacts;
use crate::api::headers::{identity_of, reads_as_ours};
use crate::authz::{Denial, bearer_credential};
use crate::domain::view::SessionView;
use crate::rpc::Rpc;
use crate::store::SessionStore;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Answers one forward-auth request.
pub(crate) async fn handle<S: SessionStore>(
    State(gateway): State<Arc<Gateway<S>>>,
    request: Request,
) -> Response {
    let (parts, _body) = request.into_parts();
    let _permit = match gateway.admit(Rpc::ForwardAuth, &parts, KeyIn::GatewayHeader) {
        Ok(permit) => permit,
        Err(refused) => return gateway_refused(&refused.denial),
    };
    let decide = async {
        if smuggles_identity(&parts.headers) {
            return Ok(Verdict::Smuggled);
        }
        let token = match token(&parts.headers, gateway.cookie.as_deref()) {
            UserToken::Found(token) => token,
            UserToken::Missing => return Ok(Verdict::Missing),
            UserToken::Malformed => return Ok(Verdict::Invalid),
        };
        Ok(
            match gateway.tokens.validate(Rpc::ForwardAuth, token).await? {
                Some(session) => Verdict::Allowed(session),
                None => Verdict::Invalid,
            },
        )
    };
    let served = gateway
        .calls
        .serve(
            Rpc::ForwardAuth,
            &super::trace_context(&parts.headers),
            decide,
        )
        .await;
    match served {
        Ok(verdict) => verdict.into_inner().into_response(),
        Err(status) => super::unavailable(&status),
    }
}

/// What forward auth decided about the user's request.
#[derive(Debug)]
enum Verdict {
    Allowed(Arc<SessionView>),
    Missing,
    Invalid,
    Smuggled,
}

impl IntoResponse for Verdict {
    fn into_response(self) -> Response {
        let (status, mut headers) = match self {
            Verdict::Allowed(session) => {
                let mut headers = HeaderMap::with_capacity(4);
                for (name, value) in identity_of(&session) {
                    // DIDs, handles and hex keys are checked ASCII when a session is made,
                    // so this never fails; were it to, the request must not pass half-named.
                    let Ok(value) = HeaderValue::try_from(value) else {
                        return super::unavailable(&tonic::Status::internal(
                            "session data cannot be sent as a header",
                        ));
                    };
                    headers.insert(HeaderName::from_static(name), value);
                }
                (StatusCode::OK, headers)
            }
            Verdict::Missing => (StatusCode::UNAUTHORIZED, challenge("Bearer")),
            Verdict::Invalid => (
                StatusCode::UNAUTHORIZED,
                challenge("Bearer error=\"invalid_token\""),
            ),
            Verdict::Smuggled => {
                let body =
                    "the request carries X-Barazo-* headers, which only the gateway may set\n";
                return (StatusCode::FORBIDDEN, super::no_store(), body).into_response();
            }
        };
        headers.extend(super::no_store());
        (status, headers).into_response()
    }
}

impl SpanFacts for Verdict {
    fn span_facts(&self) -> Vec<opentelemetry::KeyValue> {
        use opentelemetry::KeyValue;
        match self {
            Verdict::Allowed(session) => vec![
                KeyValue::new("session.valid", true),
                KeyValue::new("user.id", session.did().to_owned()),
            ],
            Verdict::Missing => vec![
                KeyValue::new("session.valid", false),
                KeyValue::new("authz.denial", "no bearer token"),
            ],
            Verdict::Invalid => vec![
                KeyValue::new("session.valid", false),
                KeyValue::new("authz.denial", "invalid or expired token"),
            ],
            Verdict::Smuggled => vec![
                KeyValue::new("session.valid", false),
                KeyValue::new("authz.denial", "client-sent x-barazo header"),
            ],
        }
    }
}

/// The user's token as the request presents it.
#[derive(PartialEq, Eq)]
enum UserToken<'a> {
    Found(&'a str),
    Missing,
    /// Not one bearer credential (another scheme, bytes that are not text, several
    /// headers or cookies): which one would count is a guess, so none does.
    Malformed,
}

/// Never prints the token itself.
impl std::fmt::Debug for UserToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserToken::Found(_) => f.write_str("Found([redacted])"),
            UserToken::Missing => f.write_str("Missing"),
            UserToken::Malformed => f.write_str("Malformed"),
        }
    }
}

/// The bearer header, else the configured cookie.
fn token<'a>(headers: &'a HeaderMap, cookie: Option<&str>) -> UserToken<'a> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => {
            if let Some(token) = value.to_str().ok().and_then(bearer_credential) {
                return UserToken::Found(token);
            }
        }
        (Some(_), Some(_)) => return UserToken::Malformed,
        (None, _) => {}
    }
    let from_cookie = cookie.map_or(UserToken::Missing, |name| cookie_value(headers, name));
    match from_cookie {
        // An authorization header of another scheme, and no cookie to fall back on.
        UserToken::Missing if headers.contains_key(header::AUTHORIZATION) => UserToken::Malformed,
        other => other,
    }
}

/// The value of the cookie `name` across every `Cookie` header (HTTP/2 sends one per
/// cookie), quotes removed; malformed when it is there twice.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> UserToken<'a> {
    let mut found = UserToken::Missing;
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            let Some((key, value)) = pair.trim().split_once('=') else {
                continue;
            };
            if key != name {
                continue;
            }
            if found != UserToken::Missing {
                return UserToken::Malformed;
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            found = UserToken::Found(value);
        }
    }
    found
}

/// Whether the request carries a header that would pass for one of ours upstream, other
/// than the gateway's own key.
fn smuggles_identity(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|name| reads_as_ours(name.as_str()) && name.as_str() != GATEWAY_KEY_HEADER)
}

fn challenge(value: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
    headers
}

/// The gateway itself was refused: 403 whatever the denial (a 401 would read as the
/// user's token being bad), except a full budget, which is the service being busy.
fn gateway_refused(denial: &Denial) -> Response {
    match denial {
        // A fixed text: Caddy and Traefik pass the body to the user, who has no business
        // learning the gateway's name in the policy.
        Denial::OverBudget { .. } => super::unavailable(&tonic::Status::resource_exhausted(
            "the service is at its concurrency limit; retry shortly",
        )),
        _ => (
            StatusCode::FORBIDDEN,
            super::no_store(),
            "the gateway is not allowed to ask (policy)\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::tests::headers;

    #[test]
    fn the_bearer_header_first_then_the_cookie() {
        let bearer = headers(&[("authorization", "Bearer abc"), ("cookie", "t=def")]);
        assert_eq!(token(&bearer, Some("t")), UserToken::Found("abc"));
        let cookie = headers(&[("cookie", "a=1; t=\"def\"; b=2")]);
        assert_eq!(token(&cookie, Some("t")), UserToken::Found("def"));
        assert_eq!(token(&cookie, None), UserToken::Missing);
        let split = headers(&[("cookie", "a=1"), ("cookie", "t=ghi")]);
        assert_eq!(token(&split, Some("t")), UserToken::Found("ghi"));
        let basic_and_cookie = headers(&[("authorization", "Basic x"), ("cookie", "t=jkl")]);
        assert_eq!(token(&basic_and_cookie, Some("t")), UserToken::Found("jkl"));
    }

    #[test]
    fn anything_but_one_credential_is_missing_or_malformed() {
        assert_eq!(token(&HeaderMap::new(), Some("t")), UserToken::Missing);
        let two = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(token(&two, None), UserToken::Malformed);
        let basic = headers(&[("authorization", "Basic x")]);
        assert_eq!(token(&basic, None), UserToken::Malformed);
        let twice = headers(&[("cookie", "t=a; t=b")]);
        assert_eq!(token(&twice, Some("t")), UserToken::Malformed);
        let other = headers(&[("cookie", "tt=a; t2=b")]);
        assert_eq!(token(&other, Some("t")), UserToken::Missing);
    }

    #[test]
    fn any_identity_header_but_the_gateway_key_is_smuggled() {
        assert!(!smuggles_identity(&headers(&[
            ("x-barazo-gateway-key", "k"),
            ("x-barazoo", "x"),
            ("authorization", "Bearer a"),
        ])));
        for name in [
            "x-barazo-did",
            "x_barazo_did",
            "x-barazo-role",
            "x-barazo.handle",
        ] {
            let mut map = HeaderMap::new();
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("a valid name"),
                HeaderValue::from_static("did:plc:victim"),
            );
            assert!(smuggles_identity(&map), "{name}");
        }
    }
}
