//! Hostile clients: raw HTTP/2 from the test on 127.0.0.1, each attack bounded in
//! time and count, against the real server.

use crate::security::{metrics_text, sample_or_zero};
use crate::support::TestApp;
use crate::support::raw::{self, grpc_frame};
use barazo_session::config::StoreKind;
use barazo_session::proto::ValidateAccessTokenRequest;
use std::time::Duration;

const VALIDATE: &str = "/barazo.session.v1.SessionService/ValidateAccessToken";

/// Junk is the caller's mistake: INVALID_ARGUMENT (not INTERNAL, a server fault), counted
/// in the RPC metrics under its method and code, and the connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_is_invalid_argument_and_counted() {
    let app = TestApp::spawn_with(StoreKind::Memory, &["--metrics-listen", "127.0.0.1:0"]).await;
    let mut h2 = raw::connect(app.addr).await;
    let junk = [
        ("undecodable bytes", grpc_frame(false, &[0xff, 0xff, 0xff])),
        // Field 1 (access_token, a string) sent as a varint.
        ("a wrong wire type", grpc_frame(false, &[0x08, 0x01])),
        (
            "invalid UTF-8 in a string",
            grpc_frame(false, &[0x0a, 0x02, 0xff, 0xfe]),
        ),
        (
            "the compressed flag without grpc-encoding",
            grpc_frame(true, &[]),
        ),
    ];
    for (what, body) in &junk {
        let (code, message) = raw::unary(&mut h2, VALIDATE, body.clone()).await;
        assert_eq!(code, 3, "{what}: {message}");
        assert_eq!(message, "the request could not be decoded", "{what}");
    }
    // The open health service answers junk the same way.
    let (code, _) = raw::unary(
        &mut h2,
        "/grpc.health.v1.Health/Check",
        grpc_frame(false, &[0xff]),
    )
    .await;
    assert_eq!(code, 3, "health");
    // A well-formed request on the same connection is answered (an unknown token).
    let (code, message) = raw::unary(&mut h2, VALIDATE, grpc_frame(false, &[])).await;
    assert_eq!(code, 0, "{message}");

    let text = metrics_text(app.metrics_addr.expect("admin")).await;
    let count = |code: u32| {
        sample_or_zero(
            &text,
            &format!(
                "rpc_server_call_duration_seconds_count{{rpc_system=\"grpc\",rpc_service=\"barazo.session.v1.SessionService\",rpc_method=\"ValidateAccessToken\",rpc_grpc_status_code=\"{code}\"}}"
            ),
        )
    };
    assert_eq!(count(3), junk.len() as f64, "{text}");
    assert_eq!(count(13), 0.0, "{text}");
}

/// Descriptor exhaustion through the admin port: the binary under a soft limit of 64 and a
/// hard limit of 256 descriptors raises the soft one (logged), clamps `--max-connections`
/// to fit (warned), and 300 silent connections to the admin port take at most its small
/// cap of descriptors, so a gRPC caller is still served promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_admin_connections_cannot_exhaust_descriptors() {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.args([
        "-c",
        "ulimit -Sn 64 && ulimit -Hn 256 && exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_barazo-session"),
        "--store",
        "memory",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    for var in ["RUST_LOG", "MAX_CONNECTIONS", "OTEL_EXPORTER_OTLP_ENDPOINT"] {
        cmd.env_remove(var);
    }
    cmd.kill_on_drop(true);
    let server = crate::cli::start(cmd).await;

    // Past the admin cap and the listen backlog, the kernel stops answering SYNs: those
    // connects time out, which is the flood's own problem, not the service's.
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let admin = server.admin.clone();
        connects.spawn(async move {
            let connect = tokio::net::TcpStream::connect(admin);
            tokio::time::timeout(Duration::from_secs(1), connect).await
        });
    }
    let mut silent = Vec::new();
    while let Some(connected) = connects.join_next().await {
        if let Ok(Ok(stream)) = connected.expect("connect task") {
            silent.push(stream);
        }
    }
    assert!(
        silent.len() > 100,
        "more silent connections than the 64 descriptors the process started with: {}",
        silent.len()
    );
    let call = async {
        let mut client = server.client().await;
        client
            .validate_access_token(ValidateAccessTokenRequest {
                access_token: "0".repeat(64),
            })
            .await
    };
    let answer = tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .expect("a gRPC caller is served while the admin port is flooded")
        .expect("answered");
    assert!(!answer.into_inner().valid);
    drop(silent);

    let (_, log) = server.terminate().await;
    let events: Vec<serde_json::Value> = log
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let find = |needle: &str| {
        events
            .iter()
            .find(|e| e["message"].as_str().is_some_and(|m| m.contains(needle)))
            .unwrap_or_else(|| panic!("no {needle:?} line in {log:#?}"))
    };
    let raised = find("raised the soft file descriptor limit");
    assert_eq!(
        (raised["from"].as_u64(), raised["to"].as_u64()),
        (Some(64), Some(256))
    );
    let clamped = find("--max-connections does not fit");
    assert_eq!(clamped["level"], "WARN", "{clamped}");
    assert_eq!(clamped["clamped_to"].as_u64(), Some(128));
}

const HEALTH: &str = "/grpc.health.v1.Health/Check";

/// Silent connections lock nobody out: one that sends nothing, or only the preface, is
/// closed once the handshake timeout has passed since accept, and the caller waiting for
/// its slot is served; a real HTTP/2 connection outlives the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_the_handshake_are_closed() {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::spawn_with(
        StoreKind::Memory,
        &["--max-connections", "3", "--handshake-timeout-ms", "300"],
    )
    .await;
    // The test's own client holds one slot, a real raw connection the second.
    let mut real = raw::connect(app.addr).await;
    assert_eq!(
        raw::unary(&mut real, HEALTH, grpc_frame(false, &[]))
            .await
            .0,
        0
    );
    // The third: a silent connection; then a caller waits for a slot.
    let mut silent = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let waiting = tokio::spawn(async move {
        let mut late = raw::connect(app.addr).await;
        raw::unary(&mut late, HEALTH, grpc_frame(false, &[]))
            .await
            .0
    });
    assert!(
        raw::closed_within(&mut silent, Duration::from_secs(3)).await,
        "a silent connection is closed"
    );
    let code = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("the waiting caller is served once the slot frees")
        .expect("task");
    assert_eq!(code, 0);
    // The preface without SETTINGS is not a handshake either (the late caller's slot is
    // free again once its connection closes, so this one is accepted).
    let mut preface_only = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    assert!(raw::closed_within(&mut preface_only, Duration::from_secs(3)).await);
    // The real connection, idle since long past the timeout, still answers.
    assert_eq!(
        raw::unary(&mut real, HEALTH, grpc_frame(false, &[]))
            .await
            .0,
        0
    );
}

/// With TLS the deadline covers the HTTP/2 handshake inside it too: a client that finishes
/// TLS and then says nothing is closed, while real HTTP/2 clients over TLS 1.2 and 1.3
/// keep their connection past the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_must_finish_http2_too() {
    use crate::support::pki::{Ca, TempDir};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
    let ca = Ca::new("handshake CA");
    let dir = TempDir::new();
    let server = ca.issue(&["localhost"], None);
    let cert = dir.write("server.pem", &server.cert);
    let key = dir.write("server.key", &server.key);
    let config = crate::support::config(
        StoreKind::Memory,
        None,
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
            "--handshake-timeout-ms",
            "300",
            "--idle-connection-timeout",
            "2",
        ],
    );
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    let app = TestApp::spawn_config(config, None, Some(tls)).await;
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().into()).expect("CA");
    let connect = |versions: &'static [&'static rustls::SupportedProtocolVersion], h2: bool| {
        let roots = roots.clone();
        async move {
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let mut client = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            if h2 {
                client.alpn_protocols = vec![b"h2".to_vec()];
            }
            let tcp = tokio::net::TcpStream::connect(app.addr)
                .await
                .expect("connect");
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(client))
                .connect("localhost".try_into().expect("name"), tcp)
                .await
                .expect("TLS handshake")
        }
    };
    let mut silent = connect(rustls::ALL_VERSIONS, false).await;
    static TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    static TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    for versions in [TLS12, TLS13] {
        let mut h2 = raw::over(connect(versions, true).await).await;
        assert_eq!(
            raw::unary(&mut h2, HEALTH, grpc_frame(false, &[])).await.0,
            0
        );
        // Past the handshake timeout (no readiness signal exists for "time has passed").
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            raw::unary(&mut h2, HEALTH, grpc_frame(false, &[])).await.0,
            0,
            "{versions:?}: a real connection outlives the handshake timeout"
        );
    }
    assert!(
        raw::closed_within(&mut silent, Duration::from_secs(3)).await,
        "silent after TLS is closed"
    );
    // Over TLS as in plaintext, a connection without an open stream is closed (GOAWAY)
    // once the idle timeout has passed.
    let (send, connection) = h2::client::handshake(connect(TLS13, true).await)
        .await
        .expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    assert_goaway_within(connection, Duration::from_secs(10)).await;
    drop(send);
}

/// Waits (at most `within`) for an h2 client connection to end, and checks that the server
/// ended it gracefully: GOAWAY with NO_ERROR.
async fn assert_goaway_within(
    connection: tokio::task::JoinHandle<Result<(), h2::Error>>,
    within: Duration,
) {
    let ended = tokio::time::timeout(within, connection)
        .await
        .expect("the server closed the connection")
        .expect("connection task");
    if let Err(err) = ended {
        assert!(
            err.is_go_away() && err.reason() == Some(h2::Reason::NO_ERROR),
            "closed gracefully: {err:?}"
        );
    }
}

/// Idle connections are closed with GOAWAY: one that answers the server's keepalive pings
/// but never opens a stream, and one whose calls are done, are closed once
/// `--idle-connection-timeout` has passed without an open stream, and counted as
/// `idle_close`; one with a stream open (a health Watch) stays open and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_with_goaway() {
    let app = TestApp::spawn_with(
        StoreKind::Memory,
        &[
            "--idle-connection-timeout",
            "1",
            "--http2-keepalive-interval",
            "1",
            // Shorter than the Watch below lasts: a stream waiting on the server (for the
            // next update) is not reset by the send deadline, only one waiting on the client.
            "--request-timeout-ms",
            "500",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let open = || async {
        let tcp = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect");
        let (send, connection) = h2::client::handshake(tcp).await.expect("handshake");
        (send, tokio::spawn(connection))
    };
    let (_pings_only, pings_only_connection) = open().await;
    let (mut used, used_connection) = open().await;
    assert_eq!(
        raw::unary(&mut used, HEALTH, grpc_frame(false, &[]))
            .await
            .0,
        0
    );
    let (mut watching, watching_connection) = open().await;
    let watch = http::Request::post("http://localhost/grpc.health.v1.Health/Watch")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut stream) = watching
        .clone()
        .ready()
        .await
        .expect("ready")
        .send_request(watch, false)
        .expect("send");
    stream
        .send_data(grpc_frame(false, &[]), true)
        .expect("body");
    let mut updates = response.await.expect("watch answered").into_body();
    let first = updates.data().await.expect("a status").expect("data");
    let _ = updates.flow_control().release_capacity(first.len());

    assert_goaway_within(pings_only_connection, Duration::from_secs(10)).await;
    assert_goaway_within(used_connection, Duration::from_secs(10)).await;
    assert!(
        !watching_connection.is_finished(),
        "a connection with an open stream is not idle"
    );
    assert_eq!(
        raw::unary(&mut watching, HEALTH, grpc_frame(false, &[]))
            .await
            .0,
        0
    );
    // The Watch, open for over a second, is neither reset nor ended: no frame comes.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), updates.data())
            .await
            .is_err(),
        "the Watch stream is still open"
    );
    let admin = app.metrics_addr.expect("admin").to_string();
    assert!(connection_events(&admin, "idle_close").await >= 2.0);
    assert_eq!(connection_events(&admin, "send_timeout").await, 0.0);
}

/// The value of `barazo_session_connection_events_total{event}` on the admin port.
async fn connection_events(admin: &str, event: &str) -> f64 {
    let text = metrics_text(admin.parse().expect("admin address")).await;
    sample_or_zero(
        &text,
        &format!("barazo_session_connection_events_total{{event=\"{event}\"}}"),
    )
}

/// An HTTP/2 rapid-reset flood (streams opened and reset at once, over several
/// connections) is counted in /metrics, and writes no warning to the log at the default
/// level: anyone can send it, so it must not flood the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_is_counted_not_logged() {
    let mut cmd = crate::cli::command();
    cmd.args(["--store", "memory", "--metrics-listen", "127.0.0.1:0"]);
    let server = crate::cli::start(cmd).await;
    let addr = server.addr.parse().expect("address");
    let flood = async {
        for _ in 0..5 {
            let h2 = raw::connect(addr).await;
            for _ in 0..500 {
                let Ok(ready) = h2.clone().ready().await else {
                    break; // The server sent GOAWAY: this connection is done.
                };
                let mut ready = ready;
                let request = http::Request::post(format!("http://localhost{HEALTH}"))
                    .header("content-type", "application/grpc")
                    .body(())
                    .expect("request");
                let Ok((_, mut stream)) = ready.send_request(request, false) else {
                    break;
                };
                stream.send_reset(h2::Reason::CANCEL);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), flood)
        .await
        .expect("the flood is sent within 5 s");
    // The count is the readiness signal: poll it, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while connection_events(&server.admin, "reset_flood").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the reset flood was not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, log) = server.terminate().await;
    let warnings: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("reached limit") || line.contains("\"h2"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}

/// Fair share: with a policy, one caller's calls in progress are limited by its own budget
/// (`max_concurrent`, by default half of `--max-concurrent-requests`), so a plugin holding
/// calls open gets RESOURCE_EXHAUSTED past its share while the AppView's calls succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_callers_flood_leaves_room_for_the_others() {
    use crate::support::pki::TempDir;
    use crate::support::sha256_hex;
    let dir = TempDir::new();
    let policy = dir.write(
        "policy.toml",
        format!(
            "[callers.appview]\nkeys_sha256 = [\"{}\"]\nallow = [\"*\"]\n[callers.plugins]\nkeys_sha256 = [\"{}\"]\nallow = [\"ValidateAccessToken\"]\n",
            sha256_hex("appview-key"),
            sha256_hex("plugin-key")
        ),
    );
    let app = TestApp::spawn_with(
        StoreKind::Memory,
        &[
            "--authz-policy",
            policy.to_str().expect("utf-8"),
            "--max-concurrent-requests",
            "4",
        ],
    )
    .await;
    let h2 = raw::connect(app.addr).await;
    let request = |key: &str| {
        http::Request::post(format!("http://localhost{VALIDATE}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {key}"))
            .body(())
            .expect("request")
    };
    // The plugin holds two calls open (their bodies never come): its whole default share.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut ready = h2.clone().ready().await.expect("ready");
        held.push(
            ready
                .send_request(request("plugin-key"), false)
                .expect("send"),
        );
    }
    let answer = |key: &'static str| {
        let h2 = h2.clone();
        async move {
            let mut ready = h2.ready().await.expect("ready");
            let (response, mut stream) = ready.send_request(request(key), false).expect("send");
            stream
                .send_data(grpc_frame(false, &[]), true)
                .expect("body");
            let response = tokio::time::timeout(Duration::from_secs(3), response)
                .await
                .expect("answered within 3 s")
                .expect("response");
            let (parts, mut body) = response.into_parts();
            let status = match parts.headers.get("grpc-status") {
                Some(status) => status.clone(),
                None => {
                    while body.data().await.is_some() {}
                    let trailers = body.trailers().await.expect("trailers").expect("some");
                    trailers.get("grpc-status").expect("grpc-status").clone()
                }
            };
            status
                .to_str()
                .expect("ascii")
                .parse::<i32>()
                .expect("code")
        }
    };
    // The AppView's calls succeed meanwhile. (Each stream's call starts in its own task,
    // spawned in arrival order: three round trips after the held calls' headers, their tasks
    // have run and hold the plugin's budget; no other signal of that exists.)
    for _ in 0..3 {
        assert_eq!(answer("appview-key").await, 0);
    }
    // A third call of the plugin's is refused at once: RESOURCE_EXHAUSTED (8).
    assert_eq!(answer("plugin-key").await, 8);
    // Once the plugin's held calls end, its budget is back.
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while answer("plugin-key").await != 0 {
        assert!(std::time::Instant::now() < deadline, "the budget came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many file descriptors process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the server's descriptors")
        .count()
}

/// A line of `/proc/<pid>/status` in KiB, e.g. `VmHWM` (peak resident) or `VmRSS`.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// Responses that are never read do not pin memory: 200 connections that set
/// SETTINGS_INITIAL_WINDOW_SIZE=0 and fill every stream the server allows with a complete
/// health check (answers the server cannot send) keep the server's peak RSS under 128 MiB:
/// a connection holds at most `--max-concurrent-streams` (100) of them, each reset once it
/// has waited past the call's time limit. (Streams past the server's limit, 256 per
/// connection in the attack this models, are refused or queued: they add load, not memory,
/// so this test leaves them out to stay cheap.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_that_are_never_read_are_dropped() {
    const CONNECTIONS: usize = 200;
    /// The default `--max-concurrent-streams`: the streams the server takes at once.
    const STREAMS: usize = 100;
    let mut cmd = crate::cli::command();
    cmd.args([
        "--store",
        "memory",
        "--metrics-listen",
        "127.0.0.1:0",
        "--request-timeout-ms",
        "1000",
        // Not what is tested here: a debug build under this load may take a while to read
        // a handshake that arrived in time.
        "--handshake-timeout-ms",
        "60000",
    ]);
    let server = crate::cli::start(cmd).await;
    let addr: std::net::SocketAddr = server.addr.parse().expect("address");
    let pid = server.pid();
    let before = status_kib(pid, "VmRSS");
    let fds_before = open_fds(pid);

    let request = || {
        http::Request::post(format!("http://localhost{HEALTH}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request")
    };
    let attack = async {
        let mut connections = tokio::task::JoinSet::new();
        for _ in 0..CONNECTIONS {
            connections.spawn(async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let (send, connection) = h2::client::Builder::new()
                    .initial_window_size(0)
                    .handshake::<_, bytes::Bytes>(tcp)
                    .await
                    .expect("HTTP/2 handshake");
                let driver = tokio::spawn(connection);
                let mut answers = Vec::with_capacity(STREAMS);
                for _ in 0..STREAMS {
                    let mut ready = send.clone().ready().await.expect("ready");
                    let (response, mut stream) =
                        ready.send_request(request(), false).expect("send");
                    stream
                        .send_data(grpc_frame(false, &[]), true)
                        .expect("body");
                    answers.push(response);
                }
                // The headers of an answer arrive (HTTP/2 does not flow-control them) once
                // the server has made it; its body is never read.
                let mut made = 0;
                let mut bodies = Vec::with_capacity(STREAMS);
                for answer in answers {
                    match answer.await {
                        Ok(response) => {
                            made += 1;
                            bodies.push(response.into_body());
                        }
                        // Refused (REFUSED_STREAM) when opened before the server's
                        // SETTINGS with its stream limit had arrived: an attacker goes on.
                        Err(err) if err.reason() == Some(h2::Reason::REFUSED_STREAM) => {}
                        Err(err) => return Err(err),
                    }
                }
                Ok((send, driver, bodies, made))
            });
        }
        let mut held = Vec::new();
        while let Some(connection) = connections.join_next().await {
            held.push(connection.expect("connection task")?);
        }
        Ok::<_, h2::Error>(held)
    };
    let held = tokio::time::timeout(Duration::from_secs(90), attack)
        .await
        .expect("the attack is sent within 90 s")
        .expect("the attack's connections stay up");
    let made: usize = held.iter().map(|(_, _, _, made)| made).sum();
    assert!(made >= CONNECTIONS * STREAMS / 2, "{made} answers made");
    // Each stuck answer is reset past the time limit: the count is the readiness signal.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while connection_events(&server.admin, "send_timeout").await < made as f64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the unread answers were reset: {} of {made}",
            connection_events(&server.admin, "send_timeout").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak = status_kib(pid, "VmHWM");
    drop(held);
    eprintln!("server RSS KiB: {before} before, peak {peak}; {made} answers held unread and reset");
    assert!(peak < 128 * 1024, "peak RSS {peak} KiB");

    // Once the attackers have gone (the server's descriptors are back to where they were:
    // the readiness signal that it has closed their connections), the memory their
    // answers took goes back to the OS: jemalloc's background thread purges what was
    // freed within about a second (glibc kept it all; BENCHMARKS.md).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while open_fds(pid) > fds_before {
        assert!(
            std::time::Instant::now() < deadline,
            "the attack's connections were closed: {} descriptors open, {fds_before} before",
            open_fds(pid)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let limit = 2 * before + 16 * 1024;
    loop {
        let rss = status_kib(pid, "VmRSS");
        if rss < limit {
            eprintln!("server RSS KiB after the attack: {rss}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "RSS falls back under {limit} KiB once the attack is over: still {rss} KiB (peak {peak})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, log) = server.terminate().await;
    assert!(
        !log.iter()
            .any(|line| line.contains("\"WARN\"") && line.contains("h2")),
        "no warning per connection"
    );
}
