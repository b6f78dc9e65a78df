//! Real faults: Valkey killed, frozen, or not started yet, while the server runs.
//! A store outage must answer UNAVAILABLE (never "invalid token") and heal by itself.

use crate::support::{TestApp, Valkey, unique_did};
use barazo_session::config::StoreKind;
use barazo_session::proto::CreateSessionRequest;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// How quickly an outage must surface: within about a second (connect and command
/// timeouts are 500 ms), plus a margin for a loaded CI machine.
const PROMPT: Duration = Duration::from_millis(2_500);

/// Every RPC that touches the store answers UNAVAILABLE, promptly.
async fn assert_every_rpc_unavailable(app: &TestApp) {
    let token = "ab".repeat(32);
    let mut client = app.client.clone();
    let started = Instant::now();
    let status = app
        .try_validate(&token)
        .await
        .expect_err("no answer without a store");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    assert_eq!(status.message(), "session store unavailable");

    let status = app.refresh(&token).await.expect_err("refresh");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = client
        .create_session(CreateSessionRequest {
            did: unique_did(),
            handle: "a.test".into(),
            ..Default::default()
        })
        .await
        .expect_err("create");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = app.delete(&token).await.expect_err("delete");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = app.delete_all(&unique_did()).await.expect_err("delete all");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_killed_and_restarted_while_the_server_runs() {
    let mut app = TestApp::spawn(StoreKind::Valkey).await;
    let before = app.create(&unique_did(), "alice.test").await;
    assert!(app.validate(&before.access_token).await.valid);

    app.valkey_mut().kill();
    assert_every_rpc_unavailable(&app).await;
    app.wait_for_health(ServingStatus::NotServing).await;
    // Still unavailable while down, never "invalid".
    assert_eq!(
        app.try_validate(&before.access_token)
            .await
            .expect_err("down")
            .code(),
        Code::Unavailable
    );

    // A fresh, empty Valkey on the same port (no persistence in tests): the server reconnects
    // and reloads its scripts without a restart.
    app.valkey_mut().restart();
    app.wait_for_health(ServingStatus::Serving).await;
    let after = app.create(&unique_did(), "bob.test").await;
    assert!(app.validate(&after.access_token).await.valid);
    app.refresh(&after.refresh_token)
        .await
        .expect("refresh after recovery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_starts_while_valkey_is_down_and_recovers() {
    let port = Valkey::reserve_port();
    let url = format!("redis://127.0.0.1:{port}");
    let config = crate::support::config(StoreKind::Valkey, Some(&url), &[]);
    let app = TestApp::spawn_config(config, None, None).await;

    assert_eq!(app.health_status().await, ServingStatus::NotServing);
    // The liveness service stays SERVING: a Valkey outage must not restart the process.
    let alive = app
        .health
        .clone()
        .check(tonic_health::pb::HealthCheckRequest {
            service: barazo_session::api::health::LIVENESS.into(),
        })
        .await
        .expect("liveness answers")
        .into_inner();
    assert_eq!(alive.status, ServingStatus::Serving as i32);
    assert_every_rpc_unavailable(&app).await;

    let valkey = Valkey::start_on(port);
    app.wait_for_health(ServingStatus::Serving).await;
    let created = app.create(&unique_did(), "alice.test").await;
    assert!(app.validate(&created.access_token).await.valid);
    drop(valkey);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_valkey_times_out_as_unavailable_instead_of_hanging() {
    let app = TestApp::spawn(StoreKind::Valkey).await;
    let created = app.create(&unique_did(), "alice.test").await;

    // SIGSTOP: the socket stays open but nothing answers, like a host that stopped routing.
    app.valkey().signal("STOP");
    let started = Instant::now();
    let status = app
        .try_validate(&created.access_token)
        .await
        .expect_err("no answer");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    app.wait_for_health(ServingStatus::NotServing).await;

    app.valkey().signal("CONT");
    app.wait_for_health(ServingStatus::Serving).await;
    assert!(
        app.validate(&created.access_token).await.valid,
        "data survived the freeze"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_while_valkey_hangs_at_startup_all_answer_unavailable_promptly() {
    // A port that accepts connections and never answers (not even the handshake's HELLO).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "redis://127.0.0.1:{}",
        listener.local_addr().expect("addr").port()
    );
    let app = TestApp::spawn_config(
        crate::support::config(StoreKind::Valkey, Some(&url), &[]),
        None,
        None,
    )
    .await;

    let started = Instant::now();
    for answer in app.validate_concurrently(&"ab".repeat(32), 32).await {
        let status = answer.expect_err("nothing answers");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    drop(listener);
}
