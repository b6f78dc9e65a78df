//! The real `grpcurl` against the server, as an operator debugs it: reflection, a call,
//! and a health check.

use crate::support::{TestApp, sha256_hex, tool};
use barazo_session::config::StoreKind;

/// Runs grpcurl over plaintext against `app`, asserting it succeeds; its stdout.
pub(crate) async fn grpcurl(app: &TestApp, args: &[&str]) -> String {
    let output = tokio::process::Command::new(tool("GRPCURL"))
        .arg("-plaintext")
        .args(args)
        .output()
        .await
        .expect("grpcurl runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "grpcurl {args:?} against {}: {stdout}{}",
        app.addr,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_calls_and_checks_health() {
    let app = TestApp::spawn(StoreKind::Valkey).await;
    let addr = app.addr.to_string();

    let services = grpcurl(&app, &[&addr, "list"]).await;
    for service in ["barazo.session.v1.SessionService", "grpc.health.v1.Health"] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} in {services}"
        );
    }
    let methods = grpcurl(&app, &[&addr, "list", "barazo.session.v1.SessionService"]).await;
    assert_eq!(methods.lines().count(), 11, "{methods}");

    let created = grpcurl(
        &app,
        &[
            "-d",
            r#"{"did":"did:plc:grpcurl","handle":"alice.test"}"#,
            &addr,
            "barazo.session.v1.SessionService/CreateSession",
        ],
    )
    .await;
    let created: serde_json::Value = serde_json::from_str(&created).expect("JSON answer");
    let access = created["accessToken"].as_str().expect("accessToken");
    let refresh = created["refreshToken"].as_str().expect("refreshToken");
    assert_eq!(access.len(), 64);
    assert_eq!(created["session"]["did"], "did:plc:grpcurl");
    assert_eq!(created["session"]["sessionKey"], sha256_hex(refresh));
    assert!(
        app.validate(access).await.valid,
        "the session grpcurl made is real"
    );

    // A refresh token that names no session: NOT_FOUND, and grpcurl shows why (the
    // ErrorInfo type is served by reflection).
    let failed = tokio::process::Command::new(tool("GRPCURL"))
        .args(["-plaintext", "-d"])
        .arg(format!(r#"{{"refresh_token":"{}"}}"#, "0".repeat(64)))
        .args([&addr, "barazo.session.v1.SessionService/RefreshSession"])
        .output()
        .await
        .expect("grpcurl runs");
    let said = String::from_utf8_lossy(&failed.stderr).into_owned()
        + &String::from_utf8_lossy(&failed.stdout);
    assert!(!failed.status.success(), "{said}");
    for part in [
        "Code: NotFound",
        "Message: session not found",
        r#""@type":"type.googleapis.com/google.rpc.ErrorInfo""#,
        r#""domain":"session.barazo.forum""#,
        r#""reason":"SESSION_UNKNOWN""#,
    ] {
        assert!(said.contains(part), "{part} in {said}");
    }

    let health = grpcurl(&app, &[&addr, "grpc.health.v1.Health/Check"]).await;
    let health: serde_json::Value = serde_json::from_str(&health).expect("JSON answer");
    assert_eq!(health["status"], "SERVING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_speaks_v1_as_well_as_v1alpha() {
    // grpcurl 1.8 only speaks v1alpha; newer clients use v1. Ask v1 directly.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let app = TestApp::spawn(StoreKind::Memory).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected answer {answer:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"barazo.session.v1.SessionService".to_owned()),
        "{names:?}"
    );
}
