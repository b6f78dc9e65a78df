//! OpenTelemetry traces, received by a real OTLP/gRPC collector endpoint run by the test:
//! the binary joins the caller's trace, names and annotates its spans after the RPC and
//! database conventions, and never exports a credential.

use crate::cli::{command, start};
use crate::support::{Valkey, sha256_hex, unique_did};
use barazo_session::proto::{
    CreateSessionRequest, DeleteAllSessionsForDidRequest, DeleteSessionRequest,
    RefreshSessionRequest, RevokeOtherSessionsRequest, RevokeSessionRequest,
    ValidateAccessTokenRequest, ValidateAccessTokensRequest,
};
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use std::sync::{Arc, Mutex};
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

/// Everything exported to the collector.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    service_names: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        for resource_spans in request.into_inner().resource_spans {
            if let Some(resource) = resource_spans.resource
                && let Some(name) = attribute(&resource.attributes, "service.name")
            {
                self.service_names.lock().expect("lock").push(name);
            }
            for scope in resource_spans.scope_spans {
                self.spans.lock().expect("lock").extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An attribute's value as text (strings as they are, numbers and booleans printed).
fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

/// A caller's W3C trace context: trace id, span id, and the `traceparent` header.
struct Caller {
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

impl Caller {
    fn new(n: u8) -> Self {
        Self {
            trace_id: [n; 16],
            span_id: [n.wrapping_add(100); 8],
        }
    }

    fn request<T>(&self, body: T) -> Request<T> {
        let mut request = Request::new(body);
        let traceparent = format!("00-{}-{}-01", hex(&self.trace_id), hex(&self.span_id));
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().expect("ascii"));
        request
            .metadata_mut()
            .insert("tracestate", "barazo=test".parse().expect("ascii"));
        request
    }
}

/// An ext_authz request as Envoy sends it, with the user's `authorization` header.
fn envoy_check_request(authorization: &str) -> CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    headers: [("authorization".to_owned(), authorization.to_owned())].into(),
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_spans_join_the_callers_trace_with_valkey_children() {
    let collector = Collector::default();
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let collector_addr = incoming.local_addr().expect("addr");
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(incoming),
    );

    let mut valkey = Valkey::start();
    let mut cmd = command();
    cmd.env(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://{collector_addr}"),
    )
    .args(["--valkey-url", &valkey.url()]);
    let running = start(cmd).await;
    let mut client = running.client().await;
    let did = unique_did();

    let created = client
        .create_session(Caller::new(1).request(CreateSessionRequest {
            did: did.clone(),
            handle: "alice.test".into(),
            ..Default::default()
        }))
        .await
        .expect("create")
        .into_inner();
    client
        .validate_access_token(Caller::new(2).request(ValidateAccessTokenRequest {
            access_token: created.access_token.clone(),
        }))
        .await
        .expect("validate");
    let refreshed = client
        .refresh_session(Caller::new(3).request(RefreshSessionRequest {
            refresh_token: created.refresh_token.clone(),
            ..Default::default()
        }))
        .await
        .expect("refresh")
        .into_inner();
    // A gateway's ext_authz check of the refreshed token: its own span, the same path below.
    let bearer = format!("Bearer {}", refreshed.access_token);
    let check = envoy_check_request(&bearer);
    let mut gateway = AuthorizationClient::connect(format!("http://{}", running.addr))
        .await
        .expect("connect");
    let checked = gateway
        .check(Caller::new(8).request(check))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(checked.status.map(|s| s.code), Some(0), "allowed");
    let batch = client
        .validate_access_tokens(Caller::new(9).request(ValidateAccessTokensRequest {
            access_tokens: vec![
                refreshed.access_token.clone(),
                "0".repeat(64),
                created.access_token.clone(),
            ],
        }))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(batch.results.len(), 3);
    client
        .delete_session(Caller::new(4).request(DeleteSessionRequest {
            refresh_token: created.refresh_token.clone(),
        }))
        .await
        .expect("delete");
    client
        .delete_all_sessions_for_did(Caller::new(5).request(DeleteAllSessionsForDidRequest {
            did: did.clone(),
            ..Default::default()
        }))
        .await
        .expect("delete all");
    let not_found = client
        .refresh_session(Caller::new(6).request(RefreshSessionRequest {
            refresh_token: created.refresh_token.clone(),
            ..Default::default()
        }))
        .await
        .expect_err("deleted");
    assert_eq!(not_found.code(), Code::NotFound);
    valkey.kill();
    let unavailable = client
        .validate_access_token(Caller::new(7).request(ValidateAccessTokenRequest {
            access_token: refreshed.access_token.clone(),
        }))
        .await
        .expect_err("valkey is down");
    assert_eq!(unavailable.code(), Code::Unavailable);

    // Spans are flushed on graceful shutdown.
    let (code, log) = running.terminate().await;
    assert_eq!(code, Some(0));
    serving.abort();
    let spans = collector.spans.lock().expect("lock").clone();
    assert!(
        collector
            .service_names
            .lock()
            .expect("lock")
            .iter()
            .all(|n| n == "barazo-session"),
        "default service.name"
    );

    let cases = [
        (1, "CreateSession", 0),
        (2, "ValidateAccessToken", 0),
        (3, "RefreshSession", 0),
        (4, "DeleteSession", 0),
        (5, "DeleteAllSessionsForDid", 0),
        (6, "RefreshSession", 5),
        (7, "ValidateAccessToken", 14),
        (8, "Check", 0),
        (9, "ValidateAccessTokens", 0),
    ];
    for (n, method, code) in cases {
        let caller = Caller::new(n);
        let service = if method == "Check" {
            "envoy.service.auth.v3.Authorization"
        } else {
            "barazo.session.v1.SessionService"
        };
        let name = format!("{service}/{method}");
        let server = spans
            .iter()
            .find(|s| s.trace_id == caller.trace_id && s.name == name)
            .unwrap_or_else(|| panic!("no {name} span in trace {n}: {spans:#?}"));
        assert_eq!(
            server.parent_span_id, caller.span_id,
            "{name}: child of the caller"
        );
        assert_eq!(server.kind, SpanKind::Server as i32, "{name}");
        assert_eq!(server.trace_state, "barazo=test", "{name}: tracestate kept");
        let attr = |key| attribute(&server.attributes, key);
        assert_eq!(attr("rpc.system").as_deref(), Some("grpc"));
        assert_eq!(attr("rpc.service").as_deref(), Some(service));
        assert_eq!(attr("rpc.method").as_deref(), Some(method));
        assert_eq!(
            attr("rpc.grpc.status_code"),
            Some(code.to_string()),
            "{name}"
        );
        let status = server.status.as_ref().map_or(0, |s| s.code);
        if code == 14 {
            assert_eq!(
                status,
                StatusCode::Error as i32,
                "UNAVAILABLE is a server failure"
            );
        } else {
            assert_ne!(
                status,
                StatusCode::Error as i32,
                "{name} {code} is not a server failure"
            );
        }

        let children: Vec<_> = spans
            .iter()
            .filter(|s| s.trace_id == caller.trace_id && s.parent_span_id == server.span_id)
            .collect();
        // A refresh whose session is gone asks, in a second round trip, why it ended.
        let round_trips = if code == 5 { 2 } else { 1 };
        assert_eq!(children.len(), round_trips, "{name}: Valkey round trips");
        let valkey_span = children
            .iter()
            .find(|s| attribute(&s.attributes, "db.operation.name").as_deref() == Some("EVALSHA"))
            .unwrap_or_else(|| panic!("{name}: an EVALSHA span"));
        assert_eq!(valkey_span.kind, SpanKind::Client as i32);
        let attr = |key| attribute(&valkey_span.attributes, key);
        assert_eq!(attr("db.system.name").as_deref(), Some("valkey"));
        assert_eq!(attr("db.operation.name").as_deref(), Some("EVALSHA"));
        assert_eq!(attr("server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(attr("server.port"), Some(valkey.port().to_string()));
    }
    let validate = spans
        .iter()
        .find(|s| s.trace_id == [2; 16] && s.kind == SpanKind::Server as i32)
        .expect("validate span");
    assert_eq!(
        attribute(&validate.attributes, "session.valid").as_deref(),
        Some("true")
    );
    assert_eq!(
        attribute(&validate.attributes, "user.id"),
        Some(did.clone())
    );
    let check = spans
        .iter()
        .find(|s| s.trace_id == [8; 16] && s.kind == SpanKind::Server as i32)
        .expect("check span");
    assert_eq!(
        attribute(&check.attributes, "session.valid").as_deref(),
        Some("true")
    );
    assert_eq!(attribute(&check.attributes, "user.id"), Some(did.clone()));
    let batch = spans
        .iter()
        .find(|s| s.trace_id == [9; 16] && s.kind == SpanKind::Server as i32)
        .expect("batch span");
    assert_eq!(
        attribute(&batch.attributes, "barazo.batch_size").as_deref(),
        Some("3")
    );
    assert_eq!(
        attribute(&batch.attributes, "session.valid_count").as_deref(),
        Some("2")
    );
    // Whether the validation cache answered: not for a token validated for the first time
    // (`bypass` while its feed is still subscribing).
    let cache = attribute(&validate.attributes, "barazo.cache");
    assert!(
        matches!(cache.as_deref(), Some("miss" | "bypass")),
        "barazo.cache = {cache:?}"
    );

    // The log line of the failed call carries the ids of its span, so logs and traces join.
    let failed_span = spans
        .iter()
        .find(|s| s.trace_id == [7; 16] && s.kind == SpanKind::Server as i32)
        .expect("failed validate span");
    let failure: serde_json::Value = log
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["message"] == "rpc failed")
        .expect("one JSON line for the failed RPC");
    assert_eq!(failure["rpc.method"], "ValidateAccessToken");
    assert_eq!(failure["trace_id"], hex(&[7; 16]));
    assert_eq!(failure["span_id"], hex(&failed_span.span_id));
    let outside_spans = log
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["message"] == "listening")
        .expect("startup line");
    assert!(
        outside_spans.get("trace_id").is_none(),
        "no ids outside a span"
    );

    // No credential in any exported attribute, event or name, nor in the log.
    let exported = format!("{spans:?}");
    let log = log.join("\n");
    for secret in [
        &created.access_token,
        &created.refresh_token,
        &refreshed.access_token,
    ] {
        for text in [&exported, &log] {
            assert!(
                !text.contains(secret.as_str()),
                "a token was exported or logged"
            );
            assert!(
                !text.contains(&sha256_hex(secret)),
                "a full token hash was exported or logged"
            );
        }
    }
}

/// An RPC that revokes sessions says on its SERVER span why and how many
/// (`barazo.revocation_reason`, `barazo.revoked_count`), never which: no sid, token or
/// session key is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_carry_their_reason_and_count_on_the_rpc_span() {
    let collector = Collector::default();
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let collector_addr = incoming.local_addr().expect("addr");
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(incoming),
    );
    let valkey = Valkey::start();
    let mut cmd = command();
    cmd.env(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://{collector_addr}"),
    )
    .args(["--valkey-url", &valkey.url(), "--max-sessions-per-did", "2"]);
    let running = start(cmd).await;
    let mut client = running.client().await;
    let did = unique_did();
    let create = |n: u8| {
        Caller::new(n).request(CreateSessionRequest {
            did: did.clone(),
            handle: "alice.test".into(),
            ..Default::default()
        })
    };
    let mut created = Vec::new();
    for n in [11, 12, 13, 14] {
        // The third and the fourth login each revoke one for the cap of 2.
        created.push(
            client
                .create_session(create(n))
                .await
                .expect("create")
                .into_inner(),
        );
    }
    let revoked_others = client
        .revoke_other_sessions(Caller::new(15).request(RevokeOtherSessionsRequest {
            refresh_token: created[3].refresh_token.clone(),
        }))
        .await
        .expect("revoke others")
        .into_inner();
    assert_eq!(revoked_others.revoked_count, 1);
    let fifth = client
        .create_session(create(16))
        .await
        .expect("create")
        .into_inner();
    let revoked = client
        .revoke_session(Caller::new(17).request(RevokeSessionRequest {
            did: did.clone(),
            session_key: sha256_hex(&fifth.refresh_token),
        }))
        .await
        .expect("revoke")
        .into_inner();
    assert!(revoked.revoked);
    client
        .delete_session(Caller::new(18).request(DeleteSessionRequest {
            refresh_token: created[3].refresh_token.clone(),
        }))
        .await
        .expect("logout");
    client.create_session(create(19)).await.expect("create");
    client
        .delete_all_sessions_for_did(Caller::new(20).request(DeleteAllSessionsForDidRequest {
            did: did.clone(),
            ..Default::default()
        }))
        .await
        .expect("delete all");

    let (code, _) = running.terminate().await;
    assert_eq!(code, Some(0));
    serving.abort();
    let spans = collector.spans.lock().expect("lock").clone();
    for (n, reason, count) in [
        (11, None, None),
        (13, Some("cap"), Some("1")),
        (14, Some("cap"), Some("1")),
        (15, Some("others"), Some("1")),
        (16, None, None),
        (17, Some("user"), Some("1")),
        (18, Some("logout"), Some("1")),
        (20, Some("all-for-did"), Some("1")),
    ] {
        let server = spans
            .iter()
            .find(|s| s.trace_id == Caller::new(n).trace_id && s.kind == SpanKind::Server as i32)
            .unwrap_or_else(|| panic!("no SERVER span in trace {n}"));
        let attr = |key| attribute(&server.attributes, key);
        assert_eq!(attr("barazo.revocation_reason").as_deref(), reason, "{n}");
        assert_eq!(attr("barazo.revoked_count").as_deref(), count, "{n}");
    }
    let exported = format!("{spans:?}");
    for session in created.iter().chain([&fifth]) {
        for secret in [&session.refresh_token, &session.access_token] {
            assert!(
                !exported.contains(secret.as_str()),
                "a credential was exported"
            );
        }
        assert!(
            !exported.contains(&sha256_hex(&session.refresh_token)),
            "a session key was exported"
        );
    }
}
