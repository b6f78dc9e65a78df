//! Envoy's external authorization (`envoy.service.auth.v3.Authorization/Check`), so that a
//! gateway can put user authentication in front of plugin services without code of its own.
//!
//! The header contract (docs/gateways.md, "Envoy ext_authz"):
//! - The user's `authorization: Bearer <access token>` (scheme in any case) is read from the
//!   request Envoy describes: `attributes.request.http.headers` (lower-case keys), or
//!   `header_map` when Envoy sends raw headers (`encode_raw_headers: true`).
//! - A token valid by [`AccessTokens::validate`] (the path `ValidateAccessToken` takes) →
//!   `OK`, and the upstream request carries `x-barazo-did`, `x-barazo-handle` and
//!   `x-barazo-session-key`, overwriting whatever the client sent under those names; every
//!   other `x-barazo-*` header the client sent is removed, so no `x-barazo-*` header reaching
//!   a plugin comes from the client.
//! - No token, a malformed header, or a token that is not valid → denied, HTTP 401 with
//!   `www-authenticate: Bearer`.
//! - The store failing (or the call timing out, or the service shedding load) → a gRPC
//!   error, never a denial, so that Envoy applies `failure_mode_allow: false` and answers
//!   `status_on_error` (503) instead of logging the user out with a 401.

use crate::api::call::{Calls, SpanFacts};
use crate::api::error::RequestError;
use crate::api::headers::{DID_HEADER, SET_HEADERS, identity_of, reads_as_ours};
use crate::api::validation::AccessTokens;
use crate::domain::view::SessionView;
use crate::rpc::Rpc;
use crate::store::SessionStore;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, HttpStatusCode,
    OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use std::sync::Arc;
use tonic::{Code, Request, Response, Status};

/// Largest `CheckRequest` accepted. It carries every header of the user's request (Envoy
/// accepts 60 KiB of headers by default, `max_request_headers_kb`) and no body
/// (`with_request_body` off), so 128 KiB leaves room without accepting anything unbounded.
pub const MAX_CHECK_REQUEST_BYTES: usize = 128 * 1024;

/// The `Authorization` service over any [`SessionStore`].
pub struct ExtAuthz<S> {
    /// The validation path shared with `ValidateAccessToken`.
    tokens: Arc<AccessTokens<S>>,
    /// The per-call layer shared with the session service.
    calls: Arc<Calls>,
}

impl<S: SessionStore> ExtAuthz<S> {
    /// Validates users' tokens with `tokens`, running each call through `calls`.
    pub fn new(tokens: Arc<AccessTokens<S>>, calls: Arc<Calls>) -> Self {
        Self { tokens, calls }
    }

    /// The tonic service, accepting requests up to [`MAX_CHECK_REQUEST_BYTES`].
    pub fn into_server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self).max_decoding_message_size(MAX_CHECK_REQUEST_BYTES)
    }

    async fn decide(&self, request: CheckRequest) -> Result<CheckResponse, RequestError> {
        let token = match credential(&request) {
            Credential::Bearer(token) => token,
            Credential::Missing => return Ok(denied(Refusal::Missing)),
            Credential::Malformed => return Ok(denied(Refusal::Malformed)),
        };
        match self.tokens.validate(Rpc::Check, token).await? {
            Some(session) => Ok(allowed(&session, forged_headers(&request))),
            None => Ok(denied(Refusal::Invalid)),
        }
    }
}

#[tonic::async_trait]
impl<S: SessionStore> Authorization for ExtAuthz<S> {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        self.calls
            .serve(Rpc::Check, &metadata, self.decide(body))
            .await
    }
}

/// The headers of the user's request as Envoy describes them: the `headers` map, and the
/// raw `header_map` (values as UTF-8 when they are; `None` when not).
fn request_headers(request: &CheckRequest) -> impl Iterator<Item = (&str, Option<&str>)> {
    let http = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let map = http
        .into_iter()
        .flat_map(|h| &h.headers)
        .map(|(key, value)| (key.as_str(), Some(value.as_str())));
    let raw = http
        .and_then(|h| h.header_map.as_ref())
        .into_iter()
        .flat_map(|m| &m.headers)
        .map(|h| {
            // Envoy fills `raw_value` here; `value` is accepted too from other proxies.
            let value = if h.value.is_empty() {
                std::str::from_utf8(&h.raw_value).ok()
            } else {
                Some(h.value.as_str())
            };
            (h.key.as_str(), value)
        });
    map.chain(raw)
}

/// What the user's `authorization` header presents.
#[derive(Debug, PartialEq, Eq)]
enum Credential<'a> {
    /// No `authorization` header.
    Missing,
    /// Not a `Bearer` credential, not UTF-8, or more than one header: which one would
    /// count is a guess, so none does.
    Malformed,
    /// The token of `Bearer <token>`.
    Bearer(&'a str),
}

fn credential(request: &CheckRequest) -> Credential<'_> {
    let mut values = request_headers(request)
        .filter(|(key, _)| key.eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value);
    let Some(value) = values.next() else {
        return Credential::Missing;
    };
    if values.next().is_some() {
        return Credential::Malformed;
    }
    match value.and_then(crate::authz::bearer_credential) {
        Some(token) => Credential::Bearer(token),
        None => Credential::Malformed,
    }
}

/// The `x-barazo-*` headers the client sent that the answer does not overwrite, lower-case
/// and each once: they are removed before the request goes upstream (any spelling that
/// would pass for ours, [`reads_as_ours`]). Envoy sets headers before it removes them, so
/// the three it sets must not be listed here.
fn forged_headers(request: &CheckRequest) -> Vec<String> {
    let mut names: Vec<String> = request_headers(request)
        .map(|(key, _)| key.to_ascii_lowercase())
        .filter(|key| reads_as_ours(key) && !SET_HEADERS.contains(&key.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// A header the answer sets, replacing any value the request had. `append_action` says so
/// to Envoys that read it; older ones ignore it and, with the deprecated `append` unset,
/// overwrite too (ext_authz's default).
fn overwrite(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..HeaderValueOption::default()
    }
}

fn grpc_status(code: Code, message: &str) -> Option<rpc::Status> {
    Some(rpc::Status {
        code: code.into(),
        message: message.to_owned(),
        details: Vec::new(),
    })
}

fn allowed(session: &SessionView, forged: Vec<String>) -> CheckResponse {
    CheckResponse {
        status: grpc_status(Code::Ok, ""),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: identity_of(session)
                .into_iter()
                .map(|(name, value)| overwrite(name, value))
                .collect(),
            headers_to_remove: forged,
            ..OkHttpResponse::default()
        })),
        ..CheckResponse::default()
    }
}

/// Why a request was denied: the `status.message` of the answer (Envoy logs it at trace
/// level; the user sees only the 401) and the `authz.denial` span attribute.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Missing,
    Malformed,
    Invalid,
}

impl Refusal {
    const fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "no bearer token",
            Refusal::Malformed => "the authorization header is not one Bearer credential",
            Refusal::Invalid => "invalid or expired token",
        }
    }
}

fn denied(denial: Refusal) -> CheckResponse {
    CheckResponse {
        status: grpc_status(Code::Unauthenticated, denial.reason()),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: HttpStatusCode::Unauthorized.into(),
            }),
            headers: vec![overwrite("www-authenticate", "Bearer".to_owned())],
            body: String::new(),
        })),
        ..CheckResponse::default()
    }
}

impl SpanFacts for CheckResponse {
    fn span_facts(&self) -> Vec<opentelemetry::KeyValue> {
        use opentelemetry::KeyValue;
        match &self.http_response {
            Some(HttpResponse::OkResponse(ok)) => {
                let did = ok
                    .headers
                    .iter()
                    .filter_map(|h| h.header.as_ref())
                    .find(|h| h.key == DID_HEADER)
                    .map(|h| KeyValue::new("user.id", h.value.clone()));
                std::iter::once(KeyValue::new("session.valid", true))
                    .chain(did)
                    .collect()
            }
            _ => {
                let reason = self.status.as_ref().map_or("", |s| s.message.as_str());
                vec![
                    KeyValue::new("session.valid", false),
                    KeyValue::new("authz.denial", reason.to_owned()),
                ]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::headers::{HANDLE_HEADER, SESSION_KEY_HEADER};
    use crate::domain::Lifetimes;
    use crate::domain::{SessionRecord, sha256_hex};
    use envoy_types::pb::envoy::config::core::v3::HeaderMap;
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};

    fn with_http(http: HttpRequest) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(http),
                    ..Request::default()
                }),
                ..AttributeContext::default()
            }),
        }
    }

    fn with_headers(headers: &[(&str, &str)]) -> CheckRequest {
        with_http(HttpRequest {
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..HttpRequest::default()
        })
    }

    fn with_raw_headers(headers: &[(&str, &[u8])]) -> CheckRequest {
        with_http(HttpRequest {
            header_map: Some(HeaderMap {
                headers: headers
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: (*k).to_owned(),
                        value: String::new(),
                        raw_value: v.to_vec(),
                    })
                    .collect(),
            }),
            ..HttpRequest::default()
        })
    }

    #[test]
    fn the_token_is_the_bearer_credential_in_either_header_form() {
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let value = format!("{scheme} abc ");
            assert_eq!(
                credential(&with_headers(&[("authorization", &value)])),
                Credential::Bearer("abc")
            );
            assert_eq!(
                credential(&with_raw_headers(&[("authorization", value.as_bytes())])),
                Credential::Bearer("abc")
            );
        }
        assert_eq!(
            credential(&with_raw_headers(&[("Authorization", b"Bearer abc")])),
            Credential::Bearer("abc")
        );
    }

    #[test]
    fn anything_but_one_bearer_credential_is_missing_or_malformed() {
        assert_eq!(credential(&with_headers(&[])), Credential::Missing);
        assert_eq!(credential(&CheckRequest::default()), Credential::Missing);
        assert_eq!(
            credential(&with_headers(&[("x-other", "Bearer abc")])),
            Credential::Missing
        );
        for value in ["Basic YWxhZGRpbg==", "abc", "Bearer", "Bearerabc", ""] {
            assert_eq!(
                credential(&with_headers(&[("authorization", value)])),
                Credential::Malformed,
                "{value:?}"
            );
        }
        assert_eq!(
            credential(&with_raw_headers(&[("authorization", b"Bearer \xff")])),
            Credential::Malformed
        );
        assert_eq!(
            credential(&with_raw_headers(&[
                ("authorization", b"Bearer a"),
                ("authorization", b"Bearer b"),
            ])),
            Credential::Malformed
        );
    }

    #[test]
    fn client_sent_barazo_headers_are_removed_except_those_overwritten() {
        let request = with_headers(&[
            ("authorization", "Bearer abc"),
            ("x-barazo-did", "did:plc:forged"),
            ("x-barazo-admin", "true"),
            ("x-barazo-", "x"),
            ("x-barazoo", "kept"),
            ("accept", "*/*"),
        ]);
        assert_eq!(forged_headers(&request), ["x-barazo-", "x-barazo-admin"]);
        let raw = with_raw_headers(&[("X-Barazo-Role", b"admin"), ("x-barazo-role", b"x")]);
        assert_eq!(forged_headers(&raw), ["x-barazo-role"]);
    }

    #[test]
    fn underscores_read_as_dashes_so_no_spelling_of_ours_passes() {
        let request = with_headers(&[
            ("x_barazo_did", "did:plc:victim"),
            ("X_Barazo-Handle", "victim.test"),
            ("x-barazo_session-key", "k"),
            ("x-barazo.did", "did:plc:victim"),
            ("x_barazoo", "kept"),
            ("x-barazo-did", "did:plc:forged"),
        ]);
        assert_eq!(
            forged_headers(&request),
            [
                "x-barazo.did",
                "x-barazo_session-key",
                "x_barazo-handle",
                "x_barazo_did"
            ]
        );
    }

    #[test]
    fn answers_say_what_envoy_needs() {
        let record = SessionRecord {
            sid: "s".repeat(64),
            did: "did:plc:abc".into(),
            handle: "alice.test".into(),
            ..SessionRecord::default()
        };
        let lifetimes = Lifetimes::for_tests(std::time::Duration::from_secs(60), None);
        let ok = allowed(
            &SessionView::of(&record, &lifetimes),
            vec!["x-barazo-admin".into()],
        );
        assert_eq!(ok.status.as_ref().map(|s| s.code), Some(0));
        let Some(HttpResponse::OkResponse(http)) = &ok.http_response else {
            panic!("an ok response");
        };
        let set: Vec<(&str, &str, i32)> = http
            .headers
            .iter()
            .map(|h| {
                let header = h.header.as_ref().expect("a header");
                (header.key.as_str(), header.value.as_str(), h.append_action)
            })
            .collect();
        let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
        let key = sha256_hex(&record.sid);
        assert_eq!(
            set,
            [
                (DID_HEADER, "did:plc:abc", overwrite),
                (HANDLE_HEADER, "alice.test", overwrite),
                (SESSION_KEY_HEADER, key.as_str(), overwrite),
            ]
        );
        assert_eq!(http.headers_to_remove, ["x-barazo-admin"]);
        assert!(ok.span_facts().contains(&opentelemetry::KeyValue::new(
            "user.id",
            "did:plc:abc".to_owned()
        )));

        let no = denied(Refusal::Invalid);
        assert_eq!(
            no.status.as_ref().map(|s| s.code),
            Some(Code::Unauthenticated as i32)
        );
        let Some(HttpResponse::DeniedResponse(http)) = &no.http_response else {
            panic!("a denied response");
        };
        assert_eq!(http.status.as_ref().map(|s| s.code), Some(401));
        let header = http.headers[0].header.as_ref().expect("a header");
        assert_eq!(
            (header.key.as_str(), header.value.as_str()),
            ("www-authenticate", "Bearer")
        );
    }
}
