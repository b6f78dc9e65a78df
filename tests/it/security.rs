//! TLS, mTLS, the authorization policy, service keys, reflection access, and load shedding,
//! with certificates made in the test and the real server.

use crate::support::pki::{Ca, Pem, TempDir};
use crate::support::{TestApp, config, connect, sha256_hex, tool, unique_did};
use barazo_session::config::StoreKind;
use barazo_session::proto::session_service_client::SessionServiceClient;
use barazo_session::proto::{CreateSessionRequest, ValidateAccessTokenRequest};
use std::error::Error as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const AUTH_ID: &str = "spiffe://barazo.test/appview-auth";
const PLUGINS_ID: &str = "spiffe://barazo.test/plugins";
const AUTH_KEY: &str = "auth-service-key-0123456789";
const PLUGIN_KEY: &str = "plugin-service-key-0123456789";
const OPERATOR_KEY: &str = "operator-service-key-0123456789";

/// A policy: appview-auth may do everything on sessions (cert or key), plugins may only
/// validate (cert or key), and only the operator (a key) may use reflection.
fn policy_toml() -> String {
    format!(
        r#"
[callers.appview-auth]
identities = ["{AUTH_ID}"]
keys_sha256 = ["{}"]
allow = ["CreateSession", "RefreshSession", "DeleteSession", "DeleteAllSessionsForDid", "ValidateAccessToken"]

[callers.plugins]
identities = ["{PLUGINS_ID}"]
keys_sha256 = ["{}"]
allow = ["ValidateAccessToken"]

[callers.operator]
keys_sha256 = ["{}"]
allow = ["ServerReflection"]
"#,
        sha256_hex(AUTH_KEY),
        sha256_hex(PLUGIN_KEY),
        sha256_hex(OPERATOR_KEY)
    )
}

/// An mTLS server on the memory store with the policy, and what clients need.
struct MtlsSetup {
    app: TestApp,
    ca: Ca,
    dir: TempDir,
}

pub(crate) fn client_tls(ca: &Ca, client: Option<&Pem>) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    match client {
        Some(pem) => tls.identity(Identity::from_pem(&pem.cert, &pem.key)),
        None => tls,
    }
}

async fn mtls_server() -> MtlsSetup {
    let ca = Ca::new("barazo test CA");
    let dir = TempDir::new();
    let server = ca.issue(&["localhost"], None);
    let cert = dir.write("server.pem", &server.cert);
    let key = dir.write("server.key", &server.key);
    let client_ca = dir.write("ca.pem", ca.pem());
    let policy = dir.write("policy.toml", policy_toml());
    let flags = [
        "--tls-cert",
        cert.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
        "--tls-client-ca",
        client_ca.to_str().expect("utf-8"),
        "--authz-policy",
        policy.to_str().expect("utf-8"),
    ];
    let auth_client = ca.issue(&["appview-auth.local"], Some(AUTH_ID));
    let app = TestApp::spawn_config(
        config(StoreKind::Memory, None, &flags),
        None,
        Some(client_tls(&ca, Some(&auth_client))),
    )
    .await;
    app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    MtlsSetup { app, ca, dir }
}

async fn client_with(
    addr: SocketAddr,
    tls: ClientTlsConfig,
) -> Result<SessionServiceClient<Channel>, tonic::transport::Error> {
    connect(addr, Some(tls))
        .await
        .map(SessionServiceClient::new)
}

async fn create(client: &mut SessionServiceClient<Channel>) -> Result<String, tonic::Status> {
    client
        .create_session(CreateSessionRequest {
            did: unique_did(),
            handle: "alice.test".into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().access_token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_callers_get_what_their_certificate_identity_allows() {
    let MtlsSetup { app, ca, dir: _dir } = mtls_server().await;

    // The AppView's auth routes: everything.
    let token = app.create(&unique_did(), "alice.test").await.access_token;
    assert!(app.validate(&token).await.valid);

    // A plugin's certificate: validate only.
    let plugin = ca.issue(&["plugins.local"], Some(PLUGINS_ID));
    let mut client = client_with(app.addr, client_tls(&ca, Some(&plugin)))
        .await
        .expect("handshake");
    let answer = client
        .validate_access_token(ValidateAccessTokenRequest {
            access_token: token.clone(),
        })
        .await
        .expect("plugins may validate");
    assert!(answer.into_inner().valid);
    let denied = create(&mut client)
        .await
        .expect_err("plugins may not create");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(
        denied.message(),
        "caller plugins may not call CreateSession"
    );

    // A certificate from the right CA whose identity the policy does not know: verified,
    // so authenticated, but allowed nothing.
    let stranger = ca.issue(&["stranger.local"], Some("spiffe://barazo.test/stranger"));
    let mut client = client_with(app.addr, client_tls(&ca, Some(&stranger)))
        .await
        .expect("handshake");
    let denied = create(&mut client).await.expect_err("unknown");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("CreateSession"), "{denied:?}");
}

/// Identities are parsed once per connection and kept with it: calls interleaved over
/// connections with different certificates each get their own certificate's rights, on
/// every call, not the first connection's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_keeps_its_own_certificate_identity() {
    let MtlsSetup { app, ca, dir: _dir } = mtls_server().await;
    let plugin = ca.issue(&["plugins.local"], Some(PLUGINS_ID));
    let mut plugins = client_with(app.addr, client_tls(&ca, Some(&plugin)))
        .await
        .expect("handshake");
    let stranger = ca.issue(&["stranger.local"], Some("spiffe://barazo.test/stranger"));
    let mut strangers = client_with(app.addr, client_tls(&ca, Some(&stranger)))
        .await
        .expect("handshake");
    for round in 0..3 {
        // The AppView's auth routes (the app's own client): everything.
        let token = app.create(&unique_did(), "alice.test").await.access_token;
        let valid = plugins
            .validate_access_token(ValidateAccessTokenRequest {
                access_token: token,
            })
            .await
            .expect("plugins may validate");
        assert!(valid.into_inner().valid, "round {round}");
        let denied = create(&mut plugins)
            .await
            .expect_err("plugins may not create");
        assert_eq!(
            denied.message(),
            "caller plugins may not call CreateSession",
            "round {round}"
        );
        let denied = create(&mut strangers).await.expect_err("allowed nothing");
        assert_eq!(
            denied.message(),
            "caller an unlisted certificate identity may not call CreateSession",
            "round {round}"
        );
    }
}

/// A request carrying `authorization: <value>` as given.
fn with_authorization<T>(body: T, value: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    request
        .metadata_mut()
        .insert("authorization", value.parse().expect("ascii"));
    request
}

/// An `authorization` header always counts: the `Bearer` scheme in any case carries the
/// key (here a plugin's key on the AppView's certificate: the key decides), and anything
/// else in it (a wrong key, another scheme) is refused although the certificate is good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_header_counts_whatever_the_certificate() {
    let MtlsSetup { app, dir: _dir, .. } = mtls_server().await;
    let mut client = app.client.clone();
    let create = |value: &str| {
        with_authorization(
            CreateSessionRequest {
                did: unique_did(),
                handle: "alice.test".into(),
                ..Default::default()
            },
            value,
        )
    };
    // Without a header the certificate (appview-auth) decides: allowed.
    client
        .create_session(tonic::Request::new(CreateSessionRequest {
            did: unique_did(),
            handle: "alice.test".into(),
            ..Default::default()
        }))
        .await
        .expect("the certificate may create");
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let denied = client
            .create_session(create(&format!("{scheme} {PLUGIN_KEY}")))
            .await
            .expect_err("the plugin key decides, not the certificate");
        assert_eq!(
            denied.code(),
            Code::PermissionDenied,
            "{scheme}: {denied:?}"
        );
        assert_eq!(
            denied.message(),
            "caller plugins may not call CreateSession"
        );
    }
    for value in [
        "bearer wrong-key",
        "Basic YXBwdmlldzpzZWNyZXQ=",
        "wrong-key",
    ] {
        let denied = client
            .create_session(create(value))
            .await
            .expect_err("a credential that is not a valid key");
        assert_eq!(denied.code(), Code::Unauthenticated, "{value}: {denied:?}");
        assert!(!denied.message().contains("wrong-key"), "not echoed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_missing_foreign_and_expired_certificates() {
    // Bounded: it once hung in a loaded full-suite run (not reproduced in 50 runs); a hang
    // must fail the suite with a name, not stall CI.
    tokio::time::timeout(
        Duration::from_secs(60),
        mtls_refuses_missing_foreign_and_expired_certificates_within_a_minute(),
    )
    .await
    .expect("finished within a minute");
}

async fn mtls_refuses_missing_foreign_and_expired_certificates_within_a_minute() {
    let MtlsSetup { app, ca, dir: _dir } = mtls_server().await;
    let other_ca = Ca::new("someone else's CA");
    let foreign = other_ca.issue(&["appview-auth.local"], Some(AUTH_ID));
    let expired = ca.issue_expired(&["appview-auth.local"], Some(AUTH_ID));
    let cases = [
        ("no client certificate", client_tls(&ca, None)),
        (
            "a certificate from another CA",
            client_tls(&ca, Some(&foreign)),
        ),
        ("an expired certificate", client_tls(&ca, Some(&expired))),
    ];
    for (what, tls) in cases {
        // With TLS 1.3 the server may reject the client certificate after the client
        // considers the handshake done, so the failure shows on connect or on the call.
        let outcome = match client_with(app.addr, tls).await {
            Err(_) => None,
            Ok(mut client) => Some(create(&mut client).await),
        };
        match outcome {
            None => {}
            // Refused by TLS (a transport error), not merely by the policy afterwards.
            Some(Err(status)) => assert!(
                matches!(
                    status.code(),
                    Code::Unknown | Code::Cancelled | Code::Unavailable
                ) && status.source().is_some(),
                "{what}: refused by the handshake, not the policy: {status:?}"
            ),
            Some(Ok(_)) => panic!("{what} got a session"),
        }
    }
    // A plaintext client gets nothing either.
    let plain = connect(app.addr, None).await;
    if let Ok(channel) = plain {
        assert!(
            create(&mut SessionServiceClient::new(channel))
                .await
                .is_err()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_speaks_mtls_with_a_client_certificate() {
    let MtlsSetup { app, ca, dir } = mtls_server().await;
    let client = ca.issue(&["appview-auth.local"], Some(AUTH_ID));
    let cacert = dir.write("grpcurl-ca.pem", ca.pem());
    let cert = dir.write("grpcurl-client.pem", &client.cert);
    let key = dir.write("grpcurl-client.key", &client.key);
    let output = tokio::process::Command::new(tool("GRPCURL"))
        .args(["-cacert", cacert.to_str().expect("utf-8")])
        .args(["-cert", cert.to_str().expect("utf-8")])
        .args(["-key", key.to_str().expect("utf-8")])
        .args(["-authority", "localhost"])
        // The policy gives nobody reflection, so grpcurl reads the proto file instead.
        .args([
            "-import-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/proto"),
        ])
        .args(["-proto", "barazo/session/v1/session.proto"])
        .args(["-d", r#"{"did":"did:plc:grpcurl","handle":"alice.test"}"#])
        .arg(app.addr.to_string())
        .arg("barazo.session.v1.SessionService/CreateSession")
        .output()
        .await
        .expect("grpcurl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let created: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let token = created["accessToken"].as_str().expect("accessToken");
    assert!(app.validate(token).await.valid);
}

/// A request carrying `authorization: Bearer <key>`.
fn with_key<T>(body: T, key: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    if let Some(key) = key {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {key}").parse().expect("ascii"),
        );
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_keys_authorize_without_mtls() {
    let dir = TempDir::new();
    let policy = dir.write("policy.toml", policy_toml());
    let app = TestApp::spawn_with(
        StoreKind::Memory,
        &[
            "--authz-policy",
            policy.to_str().expect("utf-8"),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let mut client = app.client.clone();
    let create = |key: Option<&str>| {
        with_key(
            CreateSessionRequest {
                did: unique_did(),
                handle: "alice.test".into(),
                ..Default::default()
            },
            key,
        )
    };

    let created = client
        .create_session(create(Some(AUTH_KEY)))
        .await
        .expect("the auth key may create")
        .into_inner();
    let validate = |key: Option<&str>| {
        with_key(
            ValidateAccessTokenRequest {
                access_token: created.access_token.clone(),
            },
            key,
        )
    };
    assert!(
        client
            .validate_access_token(validate(Some(PLUGIN_KEY)))
            .await
            .expect("plugins may validate")
            .into_inner()
            .valid
    );
    let denied = client
        .create_session(create(Some(PLUGIN_KEY)))
        .await
        .expect_err("plugins may not create");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("CreateSession"));
    for key in [Some("wrong-key"), None] {
        let status = client
            .validate_access_token(validate(key))
            .await
            .expect_err("no valid key");
        assert_eq!(status.code(), Code::Unauthenticated, "{key:?}");
        assert!(
            !status.message().contains("wrong-key"),
            "the secret is not echoed"
        );
    }
    // Health stays open without any credential.
    let health = HealthClient::new(connect(app.addr, None).await.expect("connect"))
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(health.is_ok());
    // Refusals are counted, by RPC and code.
    let text = metrics_text(app.metrics_addr.expect("admin")).await;
    let count = |method: &str, code: u32| {
        sample_or_zero(
            &text,
            &format!(
                "rpc_server_call_duration_seconds_count{{rpc_system=\"grpc\",rpc_service=\"barazo.session.v1.SessionService\",rpc_method=\"{method}\",rpc_grpc_status_code=\"{code}\"}}"
            ),
        )
    };
    assert_eq!(count("CreateSession", 7), 1.0, "{text}");
    assert_eq!(count("ValidateAccessToken", 16), 2.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_follows_the_policy_or_is_off() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    let list = || {
        tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };

    let dir = TempDir::new();
    let policy = dir.write("policy.toml", policy_toml());
    let app = TestApp::spawn_with(
        StoreKind::Memory,
        &["--authz-policy", policy.to_str().expect("utf-8")],
    )
    .await;
    let channel = connect(app.addr, None).await.expect("connect");
    let mut reflection = ServerReflectionClient::new(channel);
    let status = reflection
        .server_reflection_info(list())
        .await
        .expect_err("no credential");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = reflection
        .server_reflection_info(with_key(list(), Some(PLUGIN_KEY)))
        .await
        .expect_err("not allowed reflection");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("ServerReflection"), "{status:?}");
    let mut answers = reflection
        .server_reflection_info(with_key(list(), Some(OPERATOR_KEY)))
        .await
        .expect("the operator may reflect")
        .into_inner();
    let answer = answers.message().await.expect("answer").expect("a message");
    assert!(format!("{answer:?}").contains("barazo.session.v1.SessionService"));

    let app = TestApp::spawn_with(StoreKind::Memory, &["--reflection=false"]).await;
    let channel = connect(app.addr, None).await.expect("connect");
    let status = ServerReflectionClient::new(channel)
        .server_reflection_info(list())
        .await
        .expect_err("switched off");
    assert_eq!(status.code(), Code::Unimplemented);
}

/// The value of a gauge from the admin listener.
async fn gauge(admin: SocketAddr, name: &str) -> f64 {
    sample_or_zero(&metrics_text(admin).await, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_server_sheds_load_promptly_and_recovers() {
    let app = TestApp::spawn_with(
        StoreKind::Valkey,
        &[
            "--max-concurrent-requests",
            "4",
            "--valkey-command-timeout-ms",
            "10000",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let admin = app.metrics_addr.expect("admin");
    let token = app.create(&unique_did(), "alice.test").await.access_token;

    // Four slow calls: Valkey is frozen, so they wait inside the server.
    app.valkey().signal("STOP");
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let mut client = app.client.clone();
            let token = token.clone();
            tokio::spawn(async move {
                client
                    .validate_access_token(ValidateAccessTokenRequest {
                        access_token: token,
                    })
                    .await
            })
        })
        .collect();
    // Readiness: all four are waiting on Valkey.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge(admin, "barazo_session_valkey_in_flight_commands").await < 4.0 {
        assert!(
            Instant::now() < deadline,
            "the slow calls did not reach Valkey"
        );
        tokio::task::yield_now().await;
    }

    let started = Instant::now();
    let shed = app.try_validate(&token).await.expect_err("over the limit");
    assert_eq!(shed.code(), Code::ResourceExhausted);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once, not queued"
    );
    // Health is not subject to the limit.
    assert!(
        app.health
            .clone()
            .check(HealthCheckRequest {
                service: String::new()
            })
            .await
            .is_ok()
    );

    app.valkey().signal("CONT");
    for call in slow {
        assert!(
            call.await
                .expect("task")
                .expect("answered")
                .into_inner()
                .valid
        );
    }
    assert!(app.validate(&token).await.valid, "capacity is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_caps_the_callers_deadline() {
    let app = TestApp::spawn_with(
        StoreKind::Valkey,
        &[
            "--request-timeout-ms",
            "300",
            "--valkey-command-timeout-ms",
            "10000",
        ],
    )
    .await;
    let token = app.create(&unique_did(), "alice.test").await.access_token;
    app.valkey().signal("STOP");
    let mut request = tonic::Request::new(ValidateAccessTokenRequest {
        access_token: token,
    });
    request.set_timeout(Duration::from_secs(30));
    let started = Instant::now();
    let status = app
        .client
        .clone()
        .validate_access_token(request)
        .await
        .expect_err("cut off by the server");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    app.valkey().signal("CONT");
}

const VALKEY_PASSWORD: &str = "valkey-pass-7d1e";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_with_requirepass_takes_the_password_from_the_url_or_a_file() {
    let valkey = crate::support::Valkey::start_with(&["--requirepass", VALKEY_PASSWORD]);
    let in_url = format!("redis://:{VALKEY_PASSWORD}@127.0.0.1:{}", valkey.port());
    let app =
        TestApp::spawn_config(config(StoreKind::Valkey, Some(&in_url), &[]), None, None).await;
    app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let token = app.create(&unique_did(), "alice.test").await.access_token;
    assert!(app.validate(&token).await.valid);

    let dir = TempDir::new();
    // As Kubernetes mounts a secret: the value and a trailing newline.
    let file = dir.write("valkey-password", format!("{VALKEY_PASSWORD}\n"));
    let app = TestApp::spawn_config(
        config(
            StoreKind::Valkey,
            Some(&valkey.url()),
            &["--valkey-password-file", file.to_str().expect("utf-8")],
        ),
        None,
        None,
    )
    .await;
    app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    assert!(
        app.validate(&token).await.valid,
        "same Valkey, same session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_valkey_password_is_unavailable_and_never_logged() {
    use crate::cli::{command, start};
    let valkey = crate::support::Valkey::start_with(&["--requirepass", VALKEY_PASSWORD]);
    let wrong = "wrong-pass-9c2b";
    let mut cmd = command();
    cmd.env("RUST_LOG", "debug")
        .args([
            "--valkey-url",
            &format!("redis://:{wrong}@127.0.0.1:{}", valkey.port()),
        ])
        .args(["--health-check-interval-ms", "100"]);
    let running = start(cmd).await;
    let mut client = running.client().await;
    let status = client
        .validate_access_token(ValidateAccessTokenRequest {
            access_token: "ab".repeat(32),
        })
        .await
        .expect_err("cannot authenticate to Valkey");
    assert_eq!(status.code(), Code::Unavailable);
    let channel = connect(running.addr.parse().expect("addr"), None)
        .await
        .expect("connect");
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    let (code, log) = running.terminate().await;
    assert_eq!(code, Some(0));
    let log = log.join("\n");
    assert!(log.contains("NOT_SERVING"), "the outage is logged");
    for secret in [wrong, VALKEY_PASSWORD] {
        assert!(!log.contains(secret), "a Valkey password is in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verifies_valkeys_certificate_against_the_configured_ca() {
    use crate::support::pki::tls_proxy;
    let valkey = crate::support::Valkey::start_with(&["--requirepass", VALKEY_PASSWORD]);
    let ca = Ca::new("valkey CA");
    let port = tls_proxy(valkey.port(), &ca.issue(&["localhost"], None)).await;
    let dir = TempDir::new();
    let good_ca = dir.write("valkey-ca.pem", ca.pem());
    let other_ca = dir.write("other-ca.pem", Ca::new("someone else").pem());
    let url = format!("rediss://:{VALKEY_PASSWORD}@localhost:{port}");

    let app = TestApp::spawn_config(
        config(
            StoreKind::Valkey,
            Some(&url),
            &["--valkey-ca", good_ca.to_str().expect("utf-8")],
        ),
        None,
        None,
    )
    .await;
    app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let token = app.create(&unique_did(), "alice.test").await.access_token;
    assert!(app.validate(&token).await.valid);

    // A certificate from a CA the service was not told to trust: no connection.
    let app = TestApp::spawn_config(
        config(
            StoreKind::Valkey,
            Some(&url),
            &["--valkey-ca", other_ca.to_str().expect("utf-8")],
        ),
        None,
        None,
    )
    .await;
    let status = app
        .try_validate(&token)
        .await
        .expect_err("untrusted Valkey");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        app.health_status().await,
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_shorter_deadline_is_kept_and_recorded() {
    let app = TestApp::spawn_with(
        StoreKind::Valkey,
        &[
            "--request-timeout-ms",
            "10000",
            "--valkey-command-timeout-ms",
            "10000",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let admin = app.metrics_addr.expect("admin");
    let token = app.create(&unique_did(), "alice.test").await.access_token;
    app.valkey().signal("STOP");
    let mut request = tonic::Request::new(ValidateAccessTokenRequest {
        access_token: token,
    });
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = app
        .client
        .clone()
        .validate_access_token(request)
        .await
        .expect_err("deadline passed");
    // DEADLINE_EXCEEDED from the server, or CANCELLED "Timeout expired" from the client's
    // own timer for the same deadline, whichever comes first.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // The server gave up too, and counted it: as DEADLINE_EXCEEDED (its own answer, a
    // little before the caller's deadline) or as CANCELLED (if tonic's timer won). Valkey
    // stays frozen until then: thawed earlier, on a loaded machine it could answer before
    // the server's own timer fires, and the call would end OK.
    let series = |code: u32| {
        format!(
            "rpc_server_call_duration_seconds_count{{rpc_system=\"grpc\",rpc_service=\"barazo.session.v1.SessionService\",rpc_method=\"ValidateAccessToken\",rpc_grpc_status_code=\"{code}\"}}"
        )
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics_text(admin).await;
        let count = |code| sample_or_zero(&text, &series(code));
        if count(4) + count(1) == 1.0 {
            assert_eq!(
                sample_or_zero(&text, "barazo_session_validations_total{outcome=\"error\"}"),
                1.0
            );
            app.valkey().signal("CONT");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the timed-out call was not recorded:\n{text}"
        );
        tokio::task::yield_now().await;
    }
}

pub(crate) async fn metrics_text(admin: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await.expect("admin");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read");
    text
}

pub(crate) fn sample_or_zero(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_until_one_closes() {
    let app = TestApp::spawn_with(StoreKind::Memory, &["--max-connections", "2"]).await;
    let token = app.create(&unique_did(), "alice.test").await.access_token;
    let validate = |channel: Channel, timeout: Duration| {
        let token = token.clone();
        async move {
            let mut request = tonic::Request::new(ValidateAccessTokenRequest {
                access_token: token,
            });
            request.set_timeout(timeout);
            SessionServiceClient::new(channel)
                .validate_access_token(request)
                .await
        }
    };
    // The test's own client holds one slot; a second connection takes the other.
    let second = connect(app.addr, None).await.expect("second connection");
    assert!(
        validate(second.clone(), Duration::from_secs(5))
            .await
            .is_ok()
    );

    // A third waits unserved: its call does not complete.
    let third = Channel::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .connect_lazy();
    assert!(
        validate(third.clone(), Duration::from_millis(300))
            .await
            .is_err(),
        "a connection past the cap must not be served"
    );
    // Once the second closes, the third is served.
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if validate(third.clone(), Duration::from_millis(500))
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot went unused");
    }
}
