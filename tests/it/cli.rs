//! The `barazo-session` binary as an operator runs it: configuration errors, signals, log
//! output, and what never appears in it.

use crate::support::{Valkey, sha256_hex, unique_did};
use barazo_session::proto::session_service_client::SessionServiceClient;
use barazo_session::proto::{
    CreateSessionRequest, DeleteSessionRequest, RefreshSessionRequest, ValidateAccessTokenRequest,
};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

const BINARY: &str = env!("CARGO_BIN_EXE_barazo-session");

/// The binary with a clean environment for its own settings.
pub fn command() -> Command {
    let mut cmd = Command::new(BINARY);
    for var in [
        "LISTEN_ADDR",
        "SESSION_STORE",
        "VALKEY_URL",
        "OAUTH_SESSION_TTL",
        "OAUTH_ACCESS_TOKEN_TTL",
        "SESSION_KEY_PREFIX",
        "LOG_FORMAT",
        "RUST_LOG",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
    ] {
        cmd.env_remove(var);
    }
    cmd.kill_on_drop(true);
    cmd
}

/// A running binary whose stderr is collected; `addr` comes from its JSON "listening" line.
pub struct Running {
    child: Child,
    pub addr: String,
    log: JoinHandle<Vec<String>>,
}

pub async fn start(mut cmd: Command) -> Running {
    let mut child = cmd
        .env("LOG_FORMAT", "json")
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr = child.stderr.take().expect("piped");
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let log = tokio::spawn(async move {
        let mut addr_tx = Some(addr_tx);
        let mut lines = BufReader::new(stderr).lines();
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                && event["message"] == "listening"
                && let Some(tx) = addr_tx.take()
            {
                let _ = tx.send(event["addr"].as_str().unwrap_or_default().to_owned());
            }
            all.push(line);
        }
        all
    });
    let addr = tokio::time::timeout(std::time::Duration::from_secs(15), addr_rx)
        .await
        .expect("listening within 15 s")
        .expect("a listening line");
    Running { child, addr, log }
}

impl Running {
    pub async fn client(&self) -> SessionServiceClient<tonic::transport::Channel> {
        SessionServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    /// Sends SIGTERM and returns the exit code and every log line.
    pub async fn terminate(mut self) -> (Option<i32>, Vec<String>) {
        let pid = self.child.id().expect("running").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill");
        assert!(sent.success());
        let status = tokio::time::timeout(std::time::Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within 30 s")
            .expect("wait");
        (status.code(), self.log.await.expect("log reader"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly() {
    let mut cmd = command();
    // One worker thread: the runtime the flag builds serves and drains like the default.
    cmd.args(["--store", "memory", "--worker-threads", "1"]);
    let running = start(cmd).await;
    let mut client = running.client().await;
    client
        .create_session(CreateSessionRequest {
            did: unique_did(),
            handle: "alice.test".into(),
        })
        .await
        .expect("serves");
    let (code, log) = running.terminate().await;
    assert_eq!(code, Some(0), "{log:#?}");
    for line in &log {
        let event: serde_json::Value = serde_json::from_str(line).expect("every line is JSON");
        assert!(
            event["level"].is_string() && event["message"].is_string(),
            "{line}"
        );
    }
    assert!(log.iter().any(|l| l.contains("\"stopped\"")), "{log:#?}");
    // Without a policy, the operator is told that every caller may do everything.
    assert!(
        log.iter()
            .any(|l| l.contains("WARN") && l.contains("no authorization policy")),
        "{log:#?}"
    );
    // A debug build says so, so that nobody measures or deploys one unawares.
    assert_eq!(
        log.iter()
            .any(|l| l.contains("WARN") && l.contains("this is a debug build")),
        cfg!(debug_assertions),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_one_clear_startup_error() {
    let output = command()
        .args(["--session-ttl", "0", "--key-prefix", " "])
        .args(["--valkey-url", "mysql://:hunter2@db"])
        .output()
        .await
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for needle in ["OAUTH_SESSION_TTL", "SESSION_KEY_PREFIX", "VALKEY_URL"] {
        assert!(stderr.contains(needle), "{needle} in {stderr}");
    }
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let output = command()
        .args(["--listen", "nowhere"])
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--listen"));

    let output = command()
        .args(["--worker-threads", "0"])
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--worker-threads"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_never_shows_the_valkey_password() {
    let output = command()
        .env("VALKEY_URL", "redis://:hunter2@valkey:6379")
        .arg("--help")
        .output()
        .await
        .expect("runs");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(
        help.contains("--valkey-url") && help.contains("VALKEY_URL"),
        "{help}"
    );
    assert!(!help.contains("hunter2"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_session_id_reaches_the_log_even_at_trace_level() {
    let mut valkey = Valkey::start();
    let mut cmd = command();
    cmd.env("RUST_LOG", "trace")
        .args(["--valkey-url", &valkey.url()])
        .args(["--health-check-interval-ms", "100"]);
    let running = start(cmd).await;
    let mut client = running.client().await;
    let mut secrets = Vec::new();

    let created = client
        .create_session(CreateSessionRequest {
            did: unique_did(),
            handle: "alice.test".into(),
        })
        .await
        .expect("create")
        .into_inner();
    secrets.extend([created.access_token.clone(), created.refresh_token.clone()]);
    client
        .validate_access_token(ValidateAccessTokenRequest {
            access_token: created.access_token.clone(),
        })
        .await
        .expect("validate");
    let refreshed = client
        .refresh_session(RefreshSessionRequest {
            refresh_token: created.refresh_token.clone(),
        })
        .await
        .expect("refresh")
        .into_inner();
    secrets.push(refreshed.access_token.clone());
    client
        .delete_session(DeleteSessionRequest {
            refresh_token: created.refresh_token.clone(),
        })
        .await
        .expect("delete");
    // Failures are logged with their cause chain: they must not carry tokens either.
    valkey.kill();
    let failed = client
        .validate_access_token(ValidateAccessTokenRequest {
            access_token: refreshed.access_token.clone(),
        })
        .await
        .expect_err("unavailable");
    assert_eq!(failed.code(), tonic::Code::Unavailable);
    let failed = client
        .refresh_session(RefreshSessionRequest {
            refresh_token: created.refresh_token.clone(),
        })
        .await
        .expect_err("unavailable");
    assert_eq!(failed.code(), tonic::Code::Unavailable);

    let (code, log) = running.terminate().await;
    assert_eq!(code, Some(0));
    let log = log.join("\n");
    assert!(log.contains("rpc failed"), "the failures were logged");
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "a token is in the log");
        // Nor its full hash, which is the access key in Valkey.
        assert!(
            !log.contains(&sha256_hex(secret)),
            "a full token hash is in the log"
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn probe(args: &[&str]) -> Option<i32> {
    command()
        .arg("--probe")
        .args(args)
        .output()
        .await
        .expect("probe runs")
        .status
        .code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_readiness_for_container_health_checks() {
    let port = free_port().to_string();
    let listen = format!("0.0.0.0:{port}");
    // Nothing listens yet: not ready.
    assert_eq!(
        probe(&["--listen", &listen, "--store", "memory"]).await,
        Some(1)
    );

    let mut child = command()
        .args([
            "--store",
            "memory",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while probe(&["--listen", &listen, "--store", "memory"]).await != Some(0) {
        assert!(std::time::Instant::now() < deadline, "never ready");
    }
    let _ = child.kill().await;

    // With an admin listener the probe asks /readyz: a store that does not answer is 503.
    let admin = format!("127.0.0.1:{}", free_port());
    let dead_valkey = format!("redis://127.0.0.1:{}", free_port());
    let mut child = command()
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", &admin])
        .args(["--valkey-url", &dead_valkey])
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let args = [
        "--metrics-listen",
        admin.as_str(),
        "--valkey-url",
        dead_valkey.as_str(),
    ];
    // Readiness signal for the listener itself: /livez answers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while tokio::net::TcpStream::connect(&admin).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "admin listener never up"
        );
    }
    assert_eq!(probe(&args).await, Some(1), "Valkey is down: not ready");
    let _ = child.kill().await;
}
