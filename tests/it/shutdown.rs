//! Graceful shutdown: in-flight calls finish, health watchers are told and let go.

use crate::support::{TestApp, unique_did};
use barazo_session::config::StoreKind;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_calls_finish() {
    // A command timeout long enough that the frozen Valkey below holds the call in flight.
    let mut app =
        TestApp::spawn_with(StoreKind::Valkey, &["--valkey-command-timeout-ms", "10000"]).await;
    let created = app.create(&unique_did(), "alice.test").await;
    let valkey = app.valkey.take().expect("valkey");
    let addr = app.addr;

    valkey.signal("STOP");
    let in_flight = {
        let mut client = app.client.clone();
        let token = created.access_token.clone();
        tokio::spawn(async move {
            client
                .validate_access_token(barazo_session::proto::ValidateAccessTokenRequest {
                    access_token: token,
                })
                .await
        })
    };
    // Nothing observable marks "the request reached the server"; 200 ms on loopback is
    // ample. Too short would fail the test (the call refused), not pass it wrongly.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = tokio::spawn(app.stop());

    // Draining has begun once the listener refuses new connections.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "listener still accepting after shutdown"
        );
        tokio::task::yield_now().await;
    }
    assert!(
        !in_flight.is_finished(),
        "the call is still waiting on Valkey"
    );

    valkey.signal("CONT");
    let answer = in_flight
        .await
        .expect("task")
        .expect("in-flight call answered");
    assert!(answer.into_inner().valid);
    stopped.await.expect("task").expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_health_watchers_and_does_not_wait_for_them() {
    let app = TestApp::spawn(StoreKind::Memory).await;
    let mut watch = app.watch_health().await;
    let first = watch.next().await.expect("an update").expect("ok");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let started = Instant::now();
    let stopped = tokio::spawn(app.stop());
    let last = watch.next().await.expect("an update").expect("ok");
    assert_eq!(last.status, ServingStatus::NotServing as i32);
    assert!(watch.next().await.is_none(), "the watch stream ends");
    stopped
        .await
        .expect("task")
        .expect("clean shutdown, not a drain timeout");
    // The drain timeout is 20 s; an open watch stream must not hold shutdown that long.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
