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
    use clap::CommandFactory;
    let mut cmd = Command::new(BINARY);
    let settings = barazo_session::config::Config::command();
    let own = settings.get_arguments().filter_map(|arg| arg.get_env());
    for var in own {
        cmd.env_remove(var);
    }
    for var in [
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
    /// The admin listener's address ("off" without `--metrics-listen`).
    pub admin: String,
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
                let field = |name: &str| event[name].as_str().unwrap_or_default().to_owned();
                let _ = tx.send((field("addr"), field("admin")));
            }
            all.push(line);
        }
        all
    });
    let (addr, admin) = tokio::time::timeout(std::time::Duration::from_secs(15), addr_rx)
        .await
        .expect("listening within 15 s")
        .expect("a listening line");
    Running {
        child,
        addr,
        admin,
        log,
    }
}

impl Running {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

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
            ..Default::default()
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
    for needle in ["--session-ttl", "--key-prefix", "--valkey-url"] {
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

/// The problem lines of a refused start (exit code 2), after the "invalid configuration" head.
async fn refused(cmd: &mut Command) -> Vec<String> {
    let output = cmd.output().await.expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("Usage:"), "no usage dump: {stderr}");
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_name_what_the_operator_typed() {
    // From the environment: the variable is named, not the flag.
    let problems = refused(command().env("SESSION_STORE", "bogus")).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("SESSION_STORE: "), "{problems:?}");
    assert!(!problems[0].contains("--store"), "{problems:?}");
    // From the command line: the flag.
    let problems = refused(command().args(["--store", "bogus"])).await;
    assert!(problems[0].starts_with("--store: "), "{problems:?}");

    // Parse errors and semantic errors together, every one of them.
    let problems = refused(
        command()
            .env("OAUTH_SESSION_TTL", "-1")
            .env("LISTEN_ADDR", "x")
            .env("VALKEY_URL", "garbage:hunter2")
            .args(["--max-concurrent-requests", "0"]),
    )
    .await;
    assert_eq!(problems.len(), 4, "{problems:?}");
    for name in [
        "OAUTH_SESSION_TTL",
        "LISTEN_ADDR",
        "VALKEY_URL",
        "--max-concurrent-requests",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(name)),
            "{name} in {problems:?}"
        );
    }
    assert!(!problems.concat().contains("hunter2"), "{problems:?}");

    // A setting that did not parse does not cause a second, misleading message (its
    // stand-in default of 900 s would "exceed" the 60 s session).
    let problems = refused(
        command()
            .env("OAUTH_ACCESS_TOKEN_TTL", "15m")
            .env("OAUTH_SESSION_TTL", "60"),
    )
    .await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("OAUTH_ACCESS_TOKEN_TTL: invalid value '15m'"));

    // Half a TLS configuration: one clear line.
    let problems = refused(command().args(["--tls-key", "/dev/null"])).await;
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("--tls-key is set but --tls-cert")),
        "{problems:?}"
    );
    let problems = refused(command().env("TLS_CLIENT_CA", "/dev/null")).await;
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("TLS_CLIENT_CA is set but")),
        "{problems:?}"
    );
    // Files that exist but hold the wrong thing: named with their flag, all at once.
    let dir = crate::support::pki::TempDir::new();
    let junk = dir.write("junk.pem", "not a certificate\n[policy\n");
    let junk = junk.to_str().expect("utf-8");
    let problems = refused(command().args([
        "--tls-cert",
        junk,
        "--tls-key",
        junk,
        "--authz-policy",
        junk,
    ]))
    .await;
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].starts_with("--tls-cert: ") && problems[0].contains("no PEM certificate"));
    assert!(problems[1].starts_with("--tls-key: ") && problems[1].contains("no PEM private key"));
    assert!(problems[2].starts_with("--authz-policy: ") && problems[2].contains("not valid"));

    // Limits that would give a server which reports SERVING and serves nobody.
    for flag in [
        "--max-connections",
        "--max-concurrent-streams",
        "--request-timeout-ms",
    ] {
        let problems = refused(command().args([flag, "0"])).await;
        assert!(problems[0].starts_with(flag), "{problems:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_says_what_runs_where() {
    let valkey = Valkey::start_with(&["--requirepass", "hunter2"]);
    let url = format!("redis://:hunter2@127.0.0.1:{}/2", valkey.port());
    let mut cmd = command();
    cmd.args(["--valkey-url", &url])
        .args(["--metrics-listen", "127.0.0.1:0"]);
    let running = start(cmd).await;
    let (code, log) = running.terminate().await;
    assert_eq!(code, Some(0));
    let startup: serde_json::Value = log
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["message"] == "listening")
        .expect("a listening line");
    assert_eq!(startup["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        startup["store"],
        format!("valkey standalone redis://127.0.0.1:{}/2", valkey.port())
    );
    assert_eq!(startup["tls"], "off");
    assert_eq!(startup["policy"], "off");
    // The admin port actually bound, not the 0 that was asked for.
    let admin: std::net::SocketAddr = startup["admin"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("an admin address");
    assert_ne!(admin.port(), 0);
    assert!(!log.concat().contains("hunter2"), "{log:#?}");
}

/// Expiry is judged and written on Valkey's clock, so a
/// replica whose own clock runs 20 minutes ahead (beyond the 15-minute access token) still
/// accepts a token another replica has just issued, and issues tokens that live 15 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_clock_runs_ahead_judges_expiry_like_the_others() {
    let valkey = Valkey::start();
    let mut on_time = command();
    on_time.args(["--valkey-url", &valkey.url()]);
    let on_time = start(on_time).await;
    let mut ahead = command();
    ahead
        .args(["--valkey-url", &valkey.url()])
        .args(["--test-clock-offset-ms", "1200000"]);
    let ahead = start(ahead).await;

    let created = on_time
        .client()
        .await
        .create_session(CreateSessionRequest {
            did: unique_did(),
            handle: "alice.test".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    let answer = ahead
        .client()
        .await
        .validate_access_token(ValidateAccessTokenRequest {
            access_token: created.access_token,
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(
        answer.valid,
        "a fresh token refused by a replica whose clock runs ahead"
    );
    // And what it writes is stamped on Valkey's clock too: a token it issues expires 15
    // minutes from now, not 35.
    let issued = ahead
        .client()
        .await
        .create_session(CreateSessionRequest {
            did: unique_did(),
            handle: "alice.test".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    let expires = issued
        .session
        .and_then(|s| s.access_token_expires_at)
        .map(|t| t.seconds)
        .expect("an expiry");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .expect("clock");
    assert!(
        (now + 840..=now + 960).contains(&expires),
        "expires {}s from now",
        expires - now
    );
    let (code, log) = ahead.terminate().await;
    assert_eq!(code, Some(0));
    assert!(
        log.iter().any(|l| l.contains("test-clock-offset-ms")),
        "{log:#?}"
    );
    let _ = on_time.terminate().await;
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
            ..Default::default()
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
            ..Default::default()
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
            ..Default::default()
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

/// Reuse of an old refresh token is logged once, at warn level, with the session key's
/// 8-character prefix and no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_reuse_is_logged_at_warn_with_the_key_prefix_only() {
    let mut cmd = command();
    cmd.args(["--store", "memory"]).args([
        "--refresh-token-rotation",
        "on",
        "--refresh-reuse-grace",
        "0",
    ]);
    let running = start(cmd).await;
    let mut client = running.client().await;
    let created = client
        .create_session(CreateSessionRequest {
            did: unique_did(),
            handle: "alice.test".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    let refresh = |token: &str| RefreshSessionRequest {
        refresh_token: token.to_owned(),
        ..Default::default()
    };
    let rotated = client
        .refresh_session(refresh(&created.refresh_token))
        .await
        .expect("rotate")
        .into_inner();
    let status = client
        .refresh_session(refresh(&created.refresh_token))
        .await
        .expect_err("reuse");
    assert_eq!(status.code(), tonic::Code::NotFound);

    let (code, log) = running.terminate().await;
    assert_eq!(code, Some(0));
    let key = created.session.expect("session").session_key;
    let warnings: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("old refresh token"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log:#?}");
    assert!(warnings[0].contains(&key[..8]), "{}", warnings[0]);
    assert!(
        !warnings[0].contains(&key),
        "only the prefix: {}",
        warnings[0]
    );
    let log = log.join("\n");
    for secret in [
        &created.refresh_token,
        &rotated.refresh_token,
        &created.access_token,
        &rotated.access_token,
    ] {
        assert!(!log.contains(secret.as_str()), "a token is in the log");
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

    // Without an admin listener the probe asks grpc.health.v1 and names the status.
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut child = command()
        .args(["--listen", &listen, "--valkey-url", &dead_valkey])
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while tokio::net::TcpStream::connect(&listen).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "gRPC listener never up"
        );
    }
    let output = command()
        .args(["--probe", "--listen", &listen, "--valkey-url", &dead_valkey])
        .output()
        .await
        .expect("probe runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("health status NOT_SERVING"), "{stderr}");
    let _ = child.kill().await;
}
