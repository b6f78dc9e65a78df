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

/// An open `WatchRevocations` stream (a caching client's, or grpcurl's) ends with
/// `UNAVAILABLE` when the drain begins, so that its caller reconnects elsewhere and drops
/// its cached answers, and it does not hold shutdown until the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_revocation_streams() {
    let app = TestApp::spawn(StoreKind::Valkey).await;
    let mut stream = None;
    // The feed subscribes shortly after the app reports SERVING; until then UNAVAILABLE.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stream.is_none() {
        match app
            .client
            .clone()
            .watch_revocations(barazo_session::proto::WatchRevocationsRequest {})
            .await
        {
            Ok(opened) => stream = Some(opened.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(Instant::now() < deadline, "the feed never went live");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let mut stream = stream.expect("a stream");
    let first = stream.message().await.expect("a reset").expect("an event");
    assert!(matches!(
        first.event,
        Some(barazo_session::proto::revocation_event::Event::Reset(_))
    ));

    let started = Instant::now();
    let stopped = tokio::spawn(app.stop());
    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("shutting down"), "{ended:?}");
    stopped
        .await
        .expect("task")
        .expect("clean shutdown, not a drain timeout");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// The HTTP listener drains with the gRPC one: it stops accepting, a request in flight
/// gets its answer, and an idle keep-alive forward-auth connection (as nginx keeps to its
/// auth upstream) does not hold the shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_http_listener() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut app = TestApp::spawn_with(
        StoreKind::Valkey,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--valkey-command-timeout-ms",
            "10000",
            "--validation-cache",
            "off",
        ],
    )
    .await;
    let created = app.create(&unique_did(), "alice.test").await;
    let http = app.http_addr.expect("the HTTP listener");
    let request = format!(
        "GET /v1/forward-auth HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        created.access_token
    );
    // An idle keep-alive connection: one request answered, the connection left open.
    let mut idle = tokio::net::TcpStream::connect(http).await.expect("connect");
    idle.write_all(request.as_bytes()).await.expect("send");
    let mut answer = [0u8; 12];
    idle.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"HTTP/1.1 200");

    let valkey = app.valkey.take().expect("valkey");
    valkey.signal("STOP");
    // In flight (the server reads its body) and then held by the frozen Valkey.
    let (mut in_flight, _) = introspection_in_flight(http, &created.access_token, 0).await;
    let stopped = tokio::spawn(app.stop());
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(http).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the HTTP listener still accepts after shutdown"
        );
        tokio::task::yield_now().await;
    }
    let mut byte = [0u8; 1];
    assert!(
        matches!(in_flight.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the request waits on Valkey"
    );
    valkey.signal("CONT");
    let mut answer = [0u8; 12];
    in_flight.read_exact(&mut answer).await.expect("answered");
    assert_eq!(&answer, b"HTTP/1.1 200");
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the idle connection does not hold the drain")
        .expect("task")
        .expect("clean shutdown");
    // The idle connection was closed by the drain.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest))
        .await
        .expect("closed, not left open")
        .expect("read to the end");
}

/// The validation cache stops when the drain begins: the feed that keeps it true stops with
/// the health monitor, so nothing may be answered from memory while calls still finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_validation_cache() {
    use crate::cache::{ENTRIES, cache, metric};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(
        StoreKind::Valkey,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            // The held request below keeps the drain open this long at most.
            "--request-timeout-ms",
            "30000",
        ],
    )
    .await;
    let created = app.create(&unique_did(), "alice.test").await;
    cache(&app, &created.access_token).await;
    assert_eq!(metric(&app, ENTRIES).await, 1.0);
    let admin = app.metrics_addr.expect("admin listener");
    let http = app.http_addr.expect("the HTTP listener");
    // A request in flight holds the drain open: an introspection whose body is still coming.
    let (mut held, rest) = introspection_in_flight(http, &created.access_token, 4).await;
    let stopped = tokio::spawn(app.stop());
    let entries = || async {
        let text = crate::security::metrics_text(admin).await;
        text.lines()
            .find_map(|line| {
                line.strip_prefix(ENTRIES)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            })
            .expect("the entries gauge")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while entries().await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the cache still holds answers while draining"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !stopped.is_finished(),
        "the held request keeps the drain open"
    );
    held.write_all(&rest).await.expect("send the rest");
    let mut answer = [0u8; 12];
    held.read_exact(&mut answer).await.expect("answered");
    assert_eq!(&answer, b"HTTP/1.1 200");
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("drained")
        .expect("task")
        .expect("clean shutdown");
}

/// An introspection of `token` that the server has begun, on its own connection: the
/// request sent with `Expect: 100-continue` and the server's `100 Continue` read (it comes
/// once the handler reads the body, so the request is in flight), then all of the body but
/// its last `withheld` bytes. Returns the connection and the bytes still to send.
async fn introspection_in_flight(
    http: std::net::SocketAddr,
    token: &str,
    withheld: usize,
) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!("token={token}").into_bytes();
    let mut stream = tokio::net::TcpStream::connect(http).await.expect("connect");
    let head = format!(
        "POST /v1/introspect HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .expect("an interim answer");
        interim.push(byte[0]);
    }
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    let (sent, rest) = body.split_at(body.len() - withheld);
    stream.write_all(sent).await.expect("send");
    (stream, rest.to_vec())
}
