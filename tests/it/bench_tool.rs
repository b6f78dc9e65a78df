//! The `session-bench` load tool works end to end (its figures are for BENCHMARKS.md; here
//! only that it runs, loads real servers and reports no errors), and is safe to point at a
//! real deployment: it reaches a server with TLS and a policy, its sessions are its own and
//! gone when it is done (also after Ctrl-C), and it says when figures come from a debug build.

use crate::support::pki::{Ca, TempDir};
use crate::support::{TestApp, Valkey, config, sha256_hex};
use barazo_session::config::StoreKind;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The tool's binary. The tool is a package of its own (tools/session-bench), so `cargo test`
/// does not build it for this one (`CARGO_BIN_EXE_*` names this package's binaries only):
/// it is built here, once per run, with the profile these tests were built with, into the
/// directory of the `barazo-session` binary (the tool starts the server from beside
/// itself). scripts/test.sh builds it first, the same way, so that this only finds it fresh
/// and no compilation runs in the middle of timing-sensitive tests.
fn tool() -> &'static Path {
    static TOOL: OnceLock<PathBuf> = OnceLock::new();
    TOOL.get_or_init(|| {
        let server = Path::new(env!("CARGO_BIN_EXE_barazo-session"));
        let dir = server.parent().expect("the server binary's directory");
        let mut cargo = std::process::Command::new(env!("CARGO"));
        // Without what cargo set for this test run: a build script that watches one of
        // these (ring's watches CARGO_MANIFEST_DIR) would see it changed and rebuild, and
        // everything above it with it, here and again in the next build from a shell.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                ]
                .contains(&&*name)
            {
                cargo.env_remove(&*name);
            }
        }
        cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--quiet",
            "--locked",
            "--package",
            "session-bench",
            "--bin",
            "session-bench",
            "--message-format",
            "json-render-diagnostics",
        ]);
        // target/debug/ is the dev profile's (and the test profile's); any other directory
        // is named after its profile (release, or a custom one).
        match dir.file_name().and_then(|name| name.to_str()) {
            Some("debug") => {}
            Some(profile) => {
                cargo.args(["--profile", profile]);
            }
            None => panic!("no profile directory in {}", server.display()),
        }
        let output = cargo.stderr(Stdio::inherit()).output().expect("cargo runs");
        assert!(
            output.status.success(),
            "cargo build --package session-bench failed (its errors above)"
        );
        let built = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|message| {
                message["reason"] == "compiler-artifact"
                    && message["target"]["name"] == "session-bench"
            })
            .find_map(|message| message["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the session-bench binary it built");
        assert_eq!(
            built.parent(),
            Some(dir),
            "session-bench was not built beside barazo-session, where it starts the server \
             from: give cargo test's --target or --target-dir as CARGO_BUILD_TARGET or \
             CARGO_TARGET_DIR instead, so that this build sees them too"
        );
        built
    })
}

/// What every DID the tool uses starts with.
const BENCH_DIDS: &str = "did:web:session-bench.invalid:run-";

/// The tool with a short run (one round of a second, 40 sessions, 4 callers; `args` may
/// set any of these otherwise) and none of its settings from the environment.
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(tool());
    for (flag, value) in [
        ("--duration", "1"),
        ("--rounds", "1"),
        ("--warmup", "0"),
        ("--sessions", "20"),
        ("--connections", "2"),
        ("--callers", "4"),
    ] {
        if !args.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    cmd.args(args)
        .env_remove("VALKEY_URL")
        .env_remove("SESSION_BENCH_SERVICE_KEY")
        .kill_on_drop(true);
    cmd
}

/// Runs the tool to the end; returns its output (stdout, stderr) as text.
async fn output(mut cmd: Command) -> (Output, String, String) {
    let output = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("session-bench ends within 60 s")
        .expect("session-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

/// Runs the tool and asserts that it succeeded; returns stdout and stderr.
async fn bench(cmd: Command) -> (String, String) {
    let (output, stdout, stderr) = output(cmd).await;
    assert!(output.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// The table rows: label, calls/s, …, errors, invalid.
fn rows(report: &str) -> Vec<Vec<String>> {
    report
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| server"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

/// From `<label>: removed <n> sessions of this run (<done> of <dids> DIDs done)`: the
/// sessions removed and the DIDs used.
fn removed(report: &str) -> (u64, u64) {
    let line = report
        .lines()
        .find(|l| l.contains(": removed "))
        .unwrap_or_else(|| panic!("a cleanup line in\n{report}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    // The label's address comes first: the last three numbers are the counts.
    match numbers[..] {
        [.., removed, _done, dids] => (removed, dids),
        _ => panic!("three counts in {line}"),
    }
}

/// Every key in a Valkey but the servers' feed markers, by SCAN.
async fn keys(valkey: &Valkey) -> Vec<String> {
    let mut conn = valkey.client().await;
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        keys.extend(
            batch
                .into_iter()
                .filter(|key| !crate::support::is_bookkeeping(key)),
        );
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// Asserts that the keys present are sessions of the tool's own DIDs, at least `min` of
/// them (each session has a DID index key of its own).
async fn assert_only_bench_sessions(valkey: &Valkey, min: usize) {
    let keys = keys(valkey).await;
    let indexes: Vec<_> = keys
        .iter()
        .filter(|k| k.starts_with("barazo:session:did:"))
        .collect();
    assert!(indexes.len() >= min, "{} DID indexes", indexes.len());
    for index in indexes {
        assert!(
            index.starts_with(&format!("barazo:session:did:{BENCH_DIDS}")),
            "{index}"
        );
    }
}

/// A running tool whose stderr is read line by line, so a test can wait for a stage.
struct Running {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("session-bench starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until the tool prints a line containing `needle` on stderr.
    async fn wait_for(&mut self, needle: &str) {
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = self.lines.recv().await {
                let hit = line.contains(needle);
                self.seen.push(line);
                if hit {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "{needle:?} in {:#?}", self.seen);
    }

    /// Sends `signal` (e.g. `INT`) to the tool.
    async fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let sent = Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .await
            .expect("kill runs");
        assert!(sent.success());
    }

    /// Waits for the tool to exit; returns its exit code, stdout and all of stderr.
    async fn finish(mut self) -> (Option<i32>, String, String) {
        let mut stdout = String::new();
        let mut out = self.child.stdout.take().expect("piped");
        let (status, _) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(
                self.child.wait(),
                tokio::io::AsyncReadExt::read_to_string(&mut out, &mut stdout)
            )
        })
        .await
        .expect("session-bench exits within 30 s");
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        (status.expect("wait").code(), stdout, self.seen.join("\n"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mix_runs_against_a_started_server_without_errors() {
    let (report, _) = bench(command(&["--scenario", "mix"])).await;
    let rows = rows(&report);
    assert_eq!(rows.len(), 1, "{report}");
    let row = &rows[0];
    assert_eq!(row[0], "memory");
    assert!(row[1].parse::<f64>().expect("calls/s") > 0.0, "{report}");
    assert_eq!(
        (row[6].as_str(), row[7].as_str()),
        ("0", "0"),
        "no errors or invalid answers"
    );
}

/// The ext_authz scenario: every Check of a live token is allowed (a denial would count as
/// an invalid answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_scenario_allows_every_live_token() {
    let (report, _) = bench(command(&["--scenario", "check"])).await;
    let rows = rows(&report);
    assert_eq!(rows.len(), 1, "{report}");
    assert!(
        rows[0][1].parse::<f64>().expect("calls/s") > 0.0,
        "{report}"
    );
    assert_eq!(
        (rows[0][6].as_str(), rows[0][7].as_str()),
        ("0", "0"),
        "no errors or denials: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracing_comparison_exports_spans() {
    let mut cmd = command(&["--compare", "tracing"]);
    // The servers the tool starts inherit this: the traced one exports every 100 ms, so a
    // one-second round exports spans even on a loaded machine (the SDK's 5 s default can
    // leave them all buffered when the report is printed).
    cmd.env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let (report, _) = bench(cmd).await;
    let rows = rows(&report);
    let labels: Vec<_> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        labels,
        ["memory, tracing off", "memory, tracing on"],
        "{report}"
    );
    assert!(report.contains("second / first throughput:"), "{report}");
    let exports: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("export requests accepted by the OTLP receiver: "))
        .and_then(|rest| rest.split(';').next()?.parse().ok())
        .expect("export count");
    assert!(exports > 0, "the traced server exported spans: {report}");
}

/// Against a server that rotates refresh tokens, the refresh share follows each session's
/// new cookie as a browser does: a few sessions refreshed over and over by one caller,
/// with no reuse grace, and not one refused as reuse (an old cookie would revoke its
/// session at its second refresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_follow_rotated_cookies() {
    let app = TestApp::spawn_with(
        StoreKind::Memory,
        &[
            "--refresh-token-rotation",
            "on",
            "--refresh-reuse-grace",
            "0",
        ],
    )
    .await;
    let addr = app.addr.to_string();
    let (report, _) = bench(command(&[
        "--addr",
        &addr,
        "--scenario",
        "refresh",
        "--sessions",
        "3",
        "--callers",
        "1",
        "--connections",
        "1",
        "--duration",
        "2",
    ]))
    .await;
    let rows = rows(&report);
    assert!(
        rows[0][1].parse::<f64>().expect("calls/s") > 10.0,
        "{report}"
    );
    assert_eq!(rows[0][6], "0", "no refresh refused: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_against_a_valkey_backed_server_leaves_no_session_behind() {
    let app = TestApp::spawn(StoreKind::Valkey).await;
    let addr = app.addr.to_string();
    let (report, stderr) = bench(command(&["--addr", &addr, "--scenario", "mix"])).await;
    let rows = rows(&report);
    assert_eq!(rows[0][0], format!("at {addr}"), "{report}");
    assert_eq!((rows[0][6].as_str(), rows[0][7].as_str()), ("0", "0"));
    // One session per DID, every creation answered: as many sessions removed as DIDs used,
    // at least the 40 of the pool, and nothing left in Valkey.
    let (sessions, dids) = removed(&report);
    assert!(sessions >= 40, "{report}");
    assert_eq!(sessions, dids, "{report}");
    assert_eq!(keys(app.valkey()).await, Vec::<String>::new(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_mid_run_stops_the_load_and_deletes_the_sessions() {
    let app = TestApp::spawn(StoreKind::Valkey).await;
    let addr = app.addr.to_string();
    // A long round that only the signal ends; creates make the cleanup cover the load too.
    let cmd = command(&["--addr", &addr, "--scenario", "create", "--duration", "60"]);
    let mut running = Running::start(cmd);
    running.wait_for("round 1 at").await;
    assert_only_bench_sessions(app.valkey(), 40).await;
    running.signal("INT").await;
    let (code, report, stderr) = running.finish().await;
    assert_eq!(code, Some(130), "{report}\n{stderr}");
    assert!(report.contains("interrupted by SIGINT"), "{report}");
    let (sessions, dids) = removed(&report);
    assert!(sessions >= 40 && sessions <= dids, "{report}");
    assert_eq!(keys(app.valkey()).await, Vec::<String>::new(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cleanup_names_what_is_left_and_delete_dids_finishes_it() {
    let app = TestApp::spawn(StoreKind::Valkey).await;
    let addr = app.addr.to_string();
    let dir = TempDir::new();
    let workdir = dir.path();
    let mut cmd = command(&["--addr", &addr, "--scenario", "create", "--duration", "60"]);
    cmd.current_dir(workdir);
    let mut running = Running::start(cmd);
    running.wait_for("round 1 at").await;
    // Valkey frozen: every deletion answers UNAVAILABLE after the server's command timeout.
    // SIGTERM (as an orchestrator sends) stops the load like Ctrl-C.
    app.valkey().signal("STOP");
    running.signal("TERM").await;
    let (code, report, stderr) = running.finish().await;
    app.valkey().signal("CONT");
    assert!(stderr.contains("SIGTERM: stopping the load"), "{stderr}");
    assert_eq!(
        code,
        Some(1),
        "a cleanup that failed is a failure: {report}\n{stderr}"
    );
    assert!(
        stderr
            .contains("NOT EVERY SESSION WAS DELETED: DeleteAllSessionsForDid failed: Unavailable"),
        "{stderr}"
    );
    let file = std::fs::read_dir(workdir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "dids"))
        .unwrap_or_else(|| panic!("a .dids file in {}: {stderr}", workdir.display()));
    assert!(
        stderr.contains(&format!("--delete-dids {}", file.display())),
        "{stderr}"
    );
    let listed = std::fs::read_to_string(&file).expect("read the DIDs");
    assert!(listed.lines().count() >= 40, "{listed}");
    assert!(
        listed.lines().all(|did| did.starts_with(BENCH_DIDS)),
        "{listed}"
    );
    assert_only_bench_sessions(app.valkey(), 1).await;

    let mut finish = command(&["--addr", &addr]);
    finish.arg("--delete-dids").arg(&file);
    let (report, stderr) = bench(finish).await;
    assert!(report.contains("removed "), "{report}");
    assert_eq!(keys(app.valkey()).await, Vec::<String>::new(), "{stderr}");
}

/// A policy: `bench` may do everything the tool needs, `no-delete` everything but delete.
const BENCH_KEY: &str = "bench-service-key-0123456789";
const NO_DELETE_KEY: &str = "no-delete-service-key-0123456789";

fn policy() -> String {
    format!(
        r#"
[callers.bench]
keys_sha256 = ["{}"]
allow = ["CreateSession", "ValidateAccessToken", "RefreshSession", "DeleteAllSessionsForDid"]

[callers.no-delete]
keys_sha256 = ["{}"]
allow = ["CreateSession", "ValidateAccessToken", "RefreshSession"]
"#,
        sha256_hex(BENCH_KEY),
        sha256_hex(NO_DELETE_KEY)
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_reaches_an_mtls_server_with_a_policy_by_service_key() {
    let ca = Ca::new("bench test CA");
    let dir = TempDir::new();
    let server = ca.issue(&["localhost"], None);
    // A client certificate the policy does not list: only the service key can authorize.
    let client = ca.issue(&["bench.local"], Some("spiffe://barazo.test/unlisted"));
    let (cert, key) = (
        dir.write("server.pem", &server.cert),
        dir.write("server.key", &server.key),
    );
    let ca_pem = dir.write("ca.pem", ca.pem());
    let (client_cert, client_key) = (
        dir.write("client.pem", &client.cert),
        dir.write("client.key", &client.key),
    );
    let policy = dir.write("policy.toml", policy());
    let valkey = Valkey::start();
    let flags = [
        "--tls-cert",
        path(&cert),
        "--tls-key",
        path(&key),
        "--tls-client-ca",
        path(&ca_pem),
        "--authz-policy",
        path(&policy),
    ];
    let own_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost")
        .identity(Identity::from_pem(&client.cert, &client.key));
    let url = valkey.url();
    let app = TestApp::spawn_config(
        config(StoreKind::Valkey, Some(&url), &flags),
        Some(valkey),
        Some(own_tls),
    )
    .await;
    app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    // 127.0.0.1 is not in the server's certificate: --tls-domain names what is.
    let addr = app.addr.to_string();
    let tls = [
        "--addr",
        &addr,
        "--tls-ca",
        path(&ca_pem),
        "--tls-domain",
        "localhost",
        "--tls-cert",
        path(&client_cert),
        "--tls-key",
        path(&client_key),
    ];

    let mut cmd = command(&tls);
    cmd.args(["--scenario", "mix"])
        .env("SESSION_BENCH_SERVICE_KEY", BENCH_KEY);
    let (report, stderr) = bench(cmd).await;
    let rows = rows(&report);
    assert_eq!(
        (rows[0][6].as_str(), rows[0][7].as_str()),
        ("0", "0"),
        "{report}"
    );
    let (sessions, dids) = removed(&report);
    assert!(sessions >= 40 && sessions == dids, "{report}");
    assert_eq!(keys(app.valkey()).await, Vec::<String>::new(), "{stderr}");

    // A caller that may not delete, or has no key: refused before anything is created.
    for (key, code) in [
        (Some(NO_DELETE_KEY), "PermissionDenied"),
        (None, "PermissionDenied"),
    ] {
        let mut cmd = command(&tls);
        if let Some(key) = key {
            cmd.env("SESSION_BENCH_SERVICE_KEY", key);
        }
        let (out, stdout, stderr) = output(cmd).await;
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(
            stderr.contains(&format!(
                "the server refused DeleteAllSessionsForDid ({code}"
            )) && stderr.contains("nothing was created"),
            "{stderr}"
        );
        assert_eq!(keys(app.valkey()).await, Vec::<String>::new(), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connection_flags_are_named_before_anything_runs() {
    let dir = TempDir::new();
    let not_pem = dir.write("not.pem", "hello");
    let (out, stdout, stderr) = output(command(&[
        "--addr",
        "127.0.0.1:9",
        "--tls-ca",
        "/nonexistent/ca.pem",
        "--tls-cert",
        path(&not_pem),
        "--tls-key",
        path(&not_pem),
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    for needle in [
        "--tls-ca /nonexistent/ca.pem: cannot read it",
        &format!("--tls-cert {}: holds no PEM certificate", not_pem.display()),
        &format!("--tls-key {}: holds no PEM private key", not_pem.display()),
    ] {
        assert!(stderr.contains(needle), "{needle} in {stderr}");
    }
    // A service key that cannot be a header value is refused without being echoed.
    let mut cmd = command(&["--addr", "127.0.0.1:9"]);
    cmd.env("SESSION_BENCH_SERVICE_KEY", "s3cret\u{1}");
    let (out, _, stderr) = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--service-key (SESSION_BENCH_SERVICE_KEY)"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_says_whose_sessions_it_creates_and_which_rpcs_it_needs() {
    let (out, help, _) = output({
        let mut cmd = Command::new(tool());
        cmd.arg("--help")
            .env("SESSION_BENCH_SERVICE_KEY", "s3cret")
            .env("VALKEY_URL", "redis://:hunter2@valkey:6379");
        cmd
    })
    .await;
    assert!(out.status.success());
    for needle in [
        "did:web:session-bench.invalid:run-",
        "deletes them with DeleteAllSessionsForDid",
        "CreateSession, ValidateAccessToken, RefreshSession and DeleteAllSessionsForDid",
        "--tls-ca",
        "--tls-domain",
        "--tls-cert",
        "--tls-key",
        "SESSION_BENCH_SERVICE_KEY",
        "--delete-dids",
        "debug build",
    ] {
        assert!(help.contains(needle), "{needle} in {help}");
    }
    assert!(!help.contains("s3cret"), "the key's value is never shown");
    assert!(!help.contains("hunter2"), "nor a Valkey password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_builds_are_warned_about() {
    // The test harness builds the tool, its server and this test's server alike: all debug
    // builds under `cargo test`, all release builds under `cargo test --release`.
    let debug = cfg!(debug_assertions);
    let tool = "session-bench is a debug build";
    let server = "is a debug build (its answers say barazo-build-profile: debug)";

    // A server the tool starts itself.
    let (report, stderr) = bench(command(&["--duration", "0", "--sessions", "1"])).await;
    assert_eq!(stderr.contains(tool), debug, "{stderr}");
    assert_eq!(
        stderr.contains(&format!(
            "the server \"memory\" (started by this tool) {server}"
        )),
        debug,
        "{stderr}"
    );
    // The report repeats them, for whoever reads a pasted copy.
    assert_eq!(
        report.contains(&format!("WARNING: {tool}")),
        debug,
        "{report}"
    );
    assert_eq!(report.contains(server), debug, "{report}");

    // A running server at --addr.
    let app = TestApp::spawn(StoreKind::Memory).await;
    let addr = app.addr.to_string();
    let (_, stderr) = bench(command(&[
        "--addr",
        &addr,
        "--duration",
        "0",
        "--sessions",
        "1",
    ]))
    .await;
    assert_eq!(
        stderr.contains(&format!("the server at {addr} {server}")),
        debug,
        "{stderr}"
    );
}

/// `session-bench floor`, the storeless server h2load measures the real one against, on
/// tonic's server and on the service's own connection handling: it says where it listens,
/// answers both validation RPCs with a valid session (one answer per token, the batch limit
/// as the real server's), refuses every other RPC, and stops on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_answers_validations_without_a_store() {
    for transport in ["tonic", "service"] {
        floor_answers(transport).await;
    }
}

async fn floor_answers(transport: &str) {
    use barazo_session::proto::session_service_client::SessionServiceClient;
    use barazo_session::proto::{
        ListSessionsRequest, ValidateAccessTokenRequest, ValidateAccessTokensRequest,
    };

    let mut child = Command::new(tool())
        .args(["floor", "--listen", "127.0.0.1:0", "--transport", transport])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("session-bench floor starts");
    let stdout = child.stdout.take().expect("piped");
    let line = tokio::time::timeout(Duration::from_secs(30), async {
        BufReader::new(stdout).lines().next_line().await
    })
    .await
    .expect("it says where it listens within 30 s")
    .expect("stdout")
    .expect("a line");
    let addr = line.strip_prefix("listening ").expect("listening <addr>");

    let mut client = SessionServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connects");
    let token = "ab".repeat(32);
    let one = client
        .validate_access_token(ValidateAccessTokenRequest {
            access_token: token.clone(),
        })
        .await
        .expect("an answer")
        .into_inner();
    assert!(one.valid);
    let session = one.session.expect("a valid answer carries its session");
    assert!(session.did.starts_with(BENCH_DIDS), "{}", session.did);
    assert_eq!(session.session_key.len(), 64);

    let many = client
        .validate_access_tokens(ValidateAccessTokensRequest {
            access_tokens: vec![token.clone(); 3],
        })
        .await
        .expect("an answer")
        .into_inner();
    assert_eq!(many.results.len(), 3);
    assert!(many.results.iter().all(|r| r.valid && r.session.is_some()));
    let too_many = client
        .validate_access_tokens(ValidateAccessTokensRequest {
            access_tokens: vec![token; 1001],
        })
        .await
        .expect_err("more than 1,000 tokens");
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);

    let other = client
        .list_sessions(ListSessionsRequest {
            did: "did:plc:abc".into(),
        })
        .await
        .expect_err("only the validations");
    assert_eq!(other.code(), tonic::Code::Unimplemented);

    let pid = child.id().expect("running").to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("it stops within 10 s of SIGTERM")
        .expect("wait");
    assert!(status.success(), "{transport}: {status:?}");
}

/// `session-bench sink`, the OTLP receiver on its own (for a traced server under h2load):
/// it says where it listens, accepts exports, and prints what it counted when stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_counts_exported_spans_and_says_so_when_stopped() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    let mut child = Command::new(tool())
        .args(["sink", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("session-bench sink starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("it says where it listens within 30 s")
        .expect("stdout")
        .expect("a line");
    let addr = line.strip_prefix("listening ").expect("listening <addr>");

    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connects");
    let spans = ScopeSpans {
        spans: vec![Span::default(); 3],
        ..Default::default()
    };
    client
        .export(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![spans],
                ..Default::default()
            }],
        })
        .await
        .expect("accepted");

    let pid = child.id().expect("running").to_string();
    let sent = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(sent.success());
    let counts = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("it stops within 10 s of SIGINT")
        .expect("stdout")
        .expect("a line");
    assert_eq!(counts, "export requests accepted: 1; spans received: 3");
    assert!(child.wait().await.expect("wait").success());
}
