//! `/v1/introspect`: OAuth 2.0 Token Introspection (RFC 7662) for API gateways (Kong,
//! APISIX, Tyk, oauth2-proxy). `POST`, `application/x-www-form-urlencoded`, `token=<access
//! token>` (`token_type_hint` is read as a hint only: every token is judged as an access
//! token, so a refresh token is inactive).
//!
//! - Active → `{"active":true,"sub":<DID>,"username":<handle>,"exp":<s>,"iat":<s>,
//!   "token_type":"access_token","sid":<session key>}`: `exp` is when this token stops
//!   validating, `iat` when its session began (a token's own issue time is not stored; RFC
//!   7662 makes `iat` informational).
//! - Anything else → `{"active":false}` and nothing more (§2.2: an inactive token reveals
//!   nothing).
//! - The caller must authenticate (§2.1), see [`super::caller`]: refused → `401
//!   {"error":"invalid_client"}` (RFC 6749 §5.2), not allowed → `403`.
//! - No `token`, or a body that is not a form → `400 {"error":"invalid_request"}`; a body
//!   over 16 KiB → `413`; the store failing → `503` with `Retry-After`.

use super::Gateway;
use super::caller::KeyIn;
use crate::api::call::SpanFacts;
use crate::api::error::RequestError;
use crate::authz::Denial;
use crate::domain::view::SessionView;
use crate::rpc::Rpc;
use crate::store::SessionStore;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Largest request body read: a form with one 64-character token needs well under 1 KiB.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// Answers one introspection request. Everything after the caller's admission runs
/// inside the call layer: reading the body is bounded by the call's time limit, and every
/// answer, a refused form included, is counted and traced.
pub(crate) async fn handle<S: SessionStore>(
    State(gateway): State<Arc<Gateway<S>>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let _permit = match gateway.admit(Rpc::Introspect, &parts, KeyIn::AnyHeader) {
        Ok(permit) => permit,
        Err(refused) => return client_refused(&refused.denial, refused.basic),
    };
    let tokens = &gateway.tokens;
    let decide = async {
        let token = read_token(&parts.headers, body).await?;
        Ok(Introspection(
            tokens.validate(Rpc::Introspect, &token).await?,
        ))
    };
    match gateway
        .calls
        .serve(
            Rpc::Introspect,
            &super::trace_context(&parts.headers),
            decide,
        )
        .await
    {
        Ok(answer) => answer.into_inner().into_response(),
        Err(status) => call_failed(&status),
    }
}

/// The one `token` of the request's form, read to at most [`MAX_BODY_BYTES`]: a declared
/// length over it is refused before anything is read.
async fn read_token(headers: &HeaderMap, body: axum::body::Body) -> Result<String, RequestError> {
    const TOO_LARGE: RequestError = RequestError::TooLarge {
        limit: MAX_BODY_BYTES,
    };
    if !is_form(headers) {
        return Err(RequestError::InvalidForm(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(TOO_LARGE);
    }
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|err| {
            if err.into_inner().is::<http_body_util::LengthLimitError>() {
                TOO_LARGE
            } else {
                RequestError::InvalidForm("the body could not be read")
            }
        })?;
    the_token(&body).ok_or(RequestError::InvalidForm(
        "the form must carry exactly one token",
    ))
}

/// A call that ended without an introspection: the caller's malformed form (400), a body
/// over the limit (413), or the service unable to decide (503).
fn call_failed(status: &tonic::Status) -> Response {
    match status.code() {
        tonic::Code::InvalidArgument => invalid_request(status.message()),
        tonic::Code::OutOfRange => (
            StatusCode::PAYLOAD_TOO_LARGE,
            super::no_store(),
            format!("the body is over {} KiB\n", MAX_BODY_BYTES / 1024),
        )
            .into_response(),
        _ => super::unavailable(status),
    }
}

/// The session a token belongs to, if it is active.
struct Introspection(Option<Arc<SessionView>>);

impl IntoResponse for Introspection {
    fn into_response(self) -> Response {
        let body = match &self.0 {
            None => serde_json::json!({ "active": false }),
            Some(session) => serde_json::json!({
                "active": true,
                "sub": session.did(),
                "username": session.handle(),
                "exp": session.access_token_expires_at().div_euclid(1000),
                "iat": session.created_at().div_euclid(1000),
                "token_type": "access_token",
                "sid": session.session_key(),
            }),
        };
        json(StatusCode::OK, &body, None)
    }
}

impl SpanFacts for Introspection {
    fn span_facts(&self) -> Vec<opentelemetry::KeyValue> {
        use opentelemetry::KeyValue;
        match &self.0 {
            Some(session) => vec![
                KeyValue::new("session.valid", true),
                KeyValue::new("user.id", session.did().to_owned()),
            ],
            None => vec![KeyValue::new("session.valid", false)],
        }
    }
}

/// Whether the body is declared a form (parameters such as `charset` aside).
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The one `token` parameter of the form, if there is exactly one.
fn the_token(body: &[u8]) -> Option<String> {
    let mut tokens = form_urlencoded::parse(body).filter(|(name, _)| name == "token");
    match (tokens.next(), tokens.next()) {
        (Some((_, token)), None) => Some(token.into_owned()),
        _ => None,
    }
}

fn json(status: StatusCode, body: &serde_json::Value, challenge: Option<&'static str>) -> Response {
    let mut headers = super::no_store();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(challenge) = challenge {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    (status, headers, body.to_string()).into_response()
}

fn invalid_request(why: &str) -> Response {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": "invalid_request", "error_description": why }),
        None,
    )
}

/// RFC 6749 §5.2: unauthenticated → 401 `invalid_client`, challenging in the scheme the
/// client used; a known client without the right → 403; a full budget → 429.
fn client_refused(denial: &Denial, basic: bool) -> Response {
    match denial {
        Denial::Unauthenticated(_) => json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({ "error": "invalid_client" }),
            Some(if basic {
                "Basic realm=\"barazo-session\""
            } else {
                "Bearer realm=\"barazo-session\""
            }),
        ),
        Denial::PermissionDenied { .. } => json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({ "error": "unauthorized_client" }),
            None,
        ),
        Denial::OverBudget { .. } => {
            let mut response = json(
                StatusCode::TOO_MANY_REQUESTS,
                &serde_json::json!({ "error": "temporarily_unavailable" }),
                None,
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_token_parameter() {
        assert_eq!(
            the_token(b"token=abc&token_type_hint=access_token").as_deref(),
            Some("abc")
        );
        assert_eq!(the_token(b"token=a%2Bb").as_deref(), Some("a+b"));
        assert_eq!(the_token(b"token=a&token=b"), None);
        assert_eq!(the_token(b"tokens=a"), None);
        assert_eq!(the_token(b""), None);
    }

    #[test]
    fn only_a_form_is_read() {
        let mut headers = HeaderMap::new();
        assert!(!is_form(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/X-WWW-Form-Urlencoded; charset=utf-8"),
        );
        assert!(is_form(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(!is_form(&headers));
    }
}
