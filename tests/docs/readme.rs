//! README.md as a newcomer follows it: the quick start's commands and the grpcurl session
//! are taken from the README text and run as written, so README and reality cannot drift;
//! the defaults of both configuration tables (the README's essentials and the full one in
//! docs/configuration.md) are the ones `--help` shows.

use crate::support::{Valkey, tool};
use barazo_session::proto::ValidateAccessTokenRequest;
use barazo_session::proto::session_service_client::SessionServiceClient;
use clap::CommandFactory;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Where the quick start says the service listens.
const QUICK_START_ADDR: &str = "127.0.0.1:50051";

/// `cargo run` may compile first (a cold debug build takes minutes on 2 cores).
const STARTUP_LIMIT: Duration = Duration::from_secs(600);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The configuration reference: every setting, in its "Settings" table.
pub(crate) const CONFIGURATION: &str = "docs/configuration.md";

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).expect("README.md")
}

fn configuration() -> String {
    std::fs::read_to_string(repo().join(CONFIGURATION)).expect(CONFIGURATION)
}

/// The text of the `## <title>` section, up to the next `## `.
fn section<'a>(text: &'a str, title: &str) -> &'a str {
    let start = text
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("a \"## {title}\" section"));
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// The shell commands of every ```sh block of `text`, one per command: `\` continuations
/// joined, comments and blank lines dropped.
fn commands(text: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        // A ` #` comment; no command in these blocks has a `#` inside quotes.
        let code = line.split(" #").next().unwrap_or_default().trim_end();
        if code.trim_start().starts_with('#') || code.trim().is_empty() {
            continue;
        }
        match code.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(code);
                commands.push(pending.trim().to_owned());
                pending.clear();
            }
        }
    }
    commands
}

/// A README command running in its own process group (so `cargo run` and the server it
/// starts get the Ctrl-C together, as in a terminal), with its stderr collected.
struct Terminal {
    child: Child,
    listening: tokio::sync::oneshot::Receiver<()>,
    log: tokio::task::JoinHandle<Vec<String>>,
}

impl Terminal {
    fn open(command: &str) -> Self {
        // No shell in between: in a terminal, Ctrl-C reaches the command, not the shell.
        assert!(
            !command.contains(['\'', '"', '$', '|', '&', ';', '<', '>']),
            "a plain command: {command}"
        );
        let mut words = command.split_whitespace();
        let mut process = Command::new(words.next().expect("a command"));
        process.args(words).current_dir(repo());
        // The service's own settings come from the command alone, as on a fresh machine.
        for arg in barazo_session::config::Config::command().get_arguments() {
            if let Some(env) = arg.get_env() {
                process.env_remove(env);
            }
        }
        for var in ["RUST_LOG", "LOG_FORMAT", "OTEL_EXPORTER_OTLP_ENDPOINT"] {
            process.env_remove(var);
        }
        // Nor does the nested `cargo` see what `cargo test` set for this test binary
        // (OUT_DIR, CARGO_PKG_*, …): build scripts that watch such variables (ring's
        // watches OUT_DIR) would rebuild, unlike in a newcomer's terminal.
        for (var, _) in std::env::vars_os() {
            let name = var.to_string_lossy();
            let for_this_test = name.starts_with("CARGO_") || name == "OUT_DIR";
            if for_this_test && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR" {
                process.env_remove(&var);
            }
        }
        let mut child = process
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the command starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, listening) = tokio::sync::oneshot::channel();
        let log = tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            let mut all = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(" listening ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
                all.push(line);
            }
            all
        });
        Self {
            child,
            listening,
            log,
        }
    }

    /// Waits for the "listening" line, then for `SERVING` on the quick-start address.
    async fn wait_until_serving(&mut self) {
        let listening = tokio::time::timeout(STARTUP_LIMIT, &mut self.listening).await;
        if !matches!(listening, Ok(Ok(()))) {
            let _ = self.child.start_kill();
            let log = (&mut self.log).await.unwrap_or_default();
            panic!("no \"listening\" line:\n{}", log.join("\n"));
        }
        let channel = tonic::transport::Channel::from_static("http://127.0.0.1:50051")
            .connect()
            .await
            .expect("the quick-start address answers");
        let mut health = HealthClient::new(channel);
        let mut updates = health
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health watch")
            .into_inner();
        let serving = async {
            while let Some(update) = updates.message().await.expect("health update") {
                if update.status == ServingStatus::Serving as i32 {
                    return;
                }
            }
            panic!("the health stream ended before SERVING");
        };
        tokio::time::timeout(Duration::from_secs(15), serving)
            .await
            .expect("SERVING within 15 s");
    }

    /// Ctrl-C, as the README says; returns the exit code and the log.
    async fn interrupt(mut self) -> (Option<i32>, Vec<String>) {
        let group = format!("-{}", self.child.id().expect("running"));
        let sent = Command::new("kill")
            .args(["-INT", "--", &group])
            .status()
            .await
            .expect("kill");
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("stops within 30 s of Ctrl-C")
            .expect("wait");
        (status.code(), (&mut self.log).await.expect("log reader"))
    }
}

impl Drop for Terminal {
    /// A failed test must not leave the server holding the quick-start port: the whole
    /// group goes (`kill_on_drop` would reach only `sh`).
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

async fn client() -> SessionServiceClient<tonic::transport::Channel> {
    SessionServiceClient::connect(format!("http://{QUICK_START_ADDR}"))
        .await
        .expect("connect")
}

/// A session for the README's example user, through the quick-start address.
async fn create_alice() -> barazo_session::proto::CreateSessionResponse {
    client()
        .await
        .create_session(barazo_session::proto::CreateSessionRequest {
            did: "did:plc:z72i7hdynmk6r22z27h6tvur".into(),
            handle: "alice.bsky.social".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
}

/// The grpcurl section's block in a fresh shell, exactly as written (it creates its own
/// session and keeps its tokens in shell variables): PATH as the test found it minus
/// `.tools/bin` (the block's own `export` must put it there).
async fn run_grpcurl_examples(readme: &str) -> String {
    let script = commands(section(readme, "Calling it with grpcurl")).join("\n");
    assert!(
        script.contains("export PATH=") && script.contains("grpcurl -plaintext"),
        "the grpcurl section says how to reach grpcurl and uses it:\n{script}"
    );
    // Nothing for the reader to fill in: every command runs as pasted.
    for placeholder in ["<accessToken>", "<refreshToken>", "<sessionKey>", "<access"] {
        assert!(
            !script.contains(placeholder),
            "the grpcurl section has a placeholder {placeholder}:\n{script}"
        );
    }
    let tools = repo().join(".tools/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::env::split_paths(&path).filter(|dir| *dir != tools))
        .expect("PATH");
    let output = Command::new("sh")
        .args(["-e", "-c", &script])
        .current_dir(repo())
        .env("PATH", path)
        .output()
        .await
        .expect("sh runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the README's grpcurl examples failed:\n{script}\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_runs_as_written() {
    // grpcurl must be there already (the test command installed it; the grpcurl block's
    // `scripts/tools.sh` then only confirms it). Asked before any server starts: a missing
    // program stops the test binary, and a server started first would outlive it.
    assert!(tool("GRPCURL").is_file());
    let readme = readme();
    let quick_start = commands(section(&readme, "Quick start"));
    let service = |needle: &str| {
        quick_start
            .iter()
            .find(|c| c.starts_with("cargo run") && c.contains(needle))
            .unwrap_or_else(|| panic!("a `cargo run … {needle}` in the quick start"))
            .clone()
    };
    let (memory, valkey) = (service("--store memory"), service("--valkey-url"));
    let others: Vec<&String> = quick_start
        .iter()
        .filter(|c| !c.starts_with("cargo run"))
        .collect();
    assert_eq!(others.len(), 1, "one test command: {others:?}");
    // CI runs the README's test command, not a look-alike.
    let ci = std::fs::read_to_string(repo().join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|line| line.trim() == others[0].as_str()),
        ".ci/run runs `{}`:\n{ci}",
        others[0]
    );

    // The quick start's own address must be free: a newcomer's quick-start server, still
    // running, would hold it.
    if let Err(err) = std::net::TcpListener::bind(QUICK_START_ADDR) {
        panic!(
            "{QUICK_START_ADDR} is in use ({err}): stop the quick-start server (Ctrl-C) before \
             running the tests; this test runs the quick start itself"
        );
    }

    // The in-memory quick start, then the grpcurl examples against it.
    let mut terminal = Terminal::open(&memory);
    terminal.wait_until_serving().await;
    let answers = run_grpcurl_examples(&readme).await;
    for expected in [
        "\"accessToken\": \"",
        "\"valid\": true",
        "\"results\": [",
        "\"key\": \"x-barazo-did\"",
        "\"sessions\": [",
        "\"userAgent\": \"Firefox/141\"",
        "\"revokedCount\"",
        "\"revoked\": true",
        "\"deleted\": false",
        "\"deletedCount\"",
        "\"status\": \"SERVING\"",
    ] {
        assert!(answers.contains(expected), "{expected} in:\n{answers}");
    }
    let (code, log) = terminal.interrupt().await;
    assert_eq!(code, Some(0), "{log:#?}");
    let startup = log
        .iter()
        .find(|l| l.contains(" listening "))
        .expect("line");
    assert!(
        startup.contains("store=memory") && startup.contains(QUICK_START_ADDR),
        "{startup}"
    );

    // The Valkey variant, against a Valkey this test starts instead of the README's port.
    let default_url = "redis://127.0.0.1:6379";
    assert!(valkey.contains(default_url), "{valkey}");
    let server = Valkey::start();
    let mut terminal = Terminal::open(&valkey.replace(default_url, &server.url()));
    terminal.wait_until_serving().await;
    let created = create_alice().await;
    let valid = client()
        .await
        .validate_access_token(ValidateAccessTokenRequest {
            access_token: created.access_token,
        })
        .await
        .expect("validate")
        .into_inner()
        .valid;
    assert!(valid);
    let (code, log) = terminal.interrupt().await;
    assert_eq!(code, Some(0), "{log:#?}");
    let startup = log
        .iter()
        .find(|l| l.contains(" listening "))
        .expect("line");
    assert!(startup.contains(&server.url()), "{startup}");
}

/// The default column of a configuration table, per flag.
fn documented_defaults(table: &str) -> Vec<(String, String)> {
    let mut defaults = Vec::new();
    for row in table.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = row.split('|').collect();
        let ticked = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        let flags: Vec<String> = ticked(cells[1])
            .into_iter()
            .filter(|f| f.starts_with("--"))
            .collect();
        let values = ticked(cells[3]);
        // "unset", "the CPUs …": no literal default to compare.
        if values.len() == flags.len() {
            defaults.extend(flags.into_iter().zip(values));
        }
    }
    defaults
}

/// The rows of a configuration table, by their flag and environment cells.
fn rows(table: &str) -> Vec<(String, String)> {
    table
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            (cells[1].to_owned(), cells[2].to_owned())
        })
        .collect()
}

fn assert_help_shows(document: &str, defaults: Vec<(String, String)>) {
    let help = barazo_session::config::Config::command()
        .render_long_help()
        .to_string();
    for (flag, value) in defaults {
        // The flag's entry runs from its `--flag <VALUE>` line to the next flag's.
        let start = help
            .find(&format!("      {flag} "))
            .or_else(|| help.find(&format!("      {flag}\n")))
            .unwrap_or_else(|| panic!("{flag} in --help"));
        let entry = &help[start..];
        let end = entry[6..].find("\n  -").map_or(entry.len(), |i| i + 6);
        assert!(
            entry[..end].contains(&format!("[default: {value}]")),
            "--help shows {flag}'s default {value}, as {document} does:\n{}",
            &entry[..end]
        );
    }
}

#[test]
fn help_shows_every_default_the_configuration_reference_shows() {
    let configuration = configuration();
    let defaults = documented_defaults(section(&configuration, "Settings"));
    assert!(defaults.len() >= 15, "{defaults:?}");
    assert_help_shows(CONFIGURATION, defaults);
}

/// The README's essentials are a part of the reference, with the same defaults.
#[test]
fn the_readme_configuration_essentials_are_rows_of_the_reference() {
    let readme = readme();
    let essentials = section(&readme, "Configuration");
    let defaults = documented_defaults(essentials);
    assert!(defaults.len() >= 6, "{defaults:?}");
    assert_help_shows("README.md", defaults.clone());
    let configuration = configuration();
    let reference = section(&configuration, "Settings");
    let all_rows = rows(reference);
    let all_defaults = documented_defaults(reference);
    for row in rows(essentials) {
        assert!(
            all_rows.contains(&row),
            "README.md's configuration row {row:?} is not a row of {CONFIGURATION}"
        );
    }
    for default in defaults {
        assert!(
            all_defaults.contains(&default),
            "README.md's default {default:?} differs from {CONFIGURATION}'s"
        );
    }
}

#[test]
fn readme_commands_are_read_the_way_a_shell_reads_them() {
    let text = "```sh\nfoo --a 1   # comment\n# only a comment\n\nbar -d '{}' \\\n  baz\n```\n";
    assert_eq!(commands(text), ["foo --a 1", "bar -d '{}'   baz"]);
    assert!(Path::new(&repo()).join("scripts/tools.sh").is_file());
}

/// The README's nginx excerpt is lines of the configuration the gateway tests run
/// (`deploy/nginx/barazo-forward-auth.conf`), so what an operator copies is what was tested.
#[test]
fn the_readme_nginx_excerpt_is_the_tested_configuration() {
    let readme = readme();
    let text = section(&readme, "Behind nginx, Caddy or Traefik");
    let start = text.find("```nginx\n").expect("an nginx block") + "```nginx\n".len();
    let excerpt = &text[start..start + text[start..].find("```").expect("the block's end")];
    let tested = std::fs::read_to_string(repo().join("deploy/nginx/barazo-forward-auth.conf"))
        .expect("the nginx example");
    let tested: Vec<&str> = tested.lines().map(str::trim).collect();
    let mut checked = 0;
    for line in excerpt.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line == "}" {
            continue;
        }
        assert!(
            tested.contains(&line),
            "README nginx line not in deploy/nginx/barazo-forward-auth.conf: {line}"
        );
        checked += 1;
    }
    assert!(
        checked >= 15,
        "the excerpt holds the directives ({checked})"
    );
}

/// The commands of `docs/` that need what a test cannot make (certificates of a real PKI,
/// a remote server, minutes of load) are not run; they are read as their programs read
/// them instead: every `barazo-session` command's flags parse as the service's
/// configuration, every grpcurl call names a method the service has, and every script
/// exists.
#[test]
fn docs_commands_name_only_real_flags_methods_and_scripts() {
    let docs = repo().join("docs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&docs).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a page");
        for command in commands(&text) {
            let words: Vec<&str> = command.split_whitespace().collect();
            let program = words[0].rsplit('/').next().unwrap_or_default();
            let at = format!("{}: {command}", path.display());
            match program {
                "barazo-session" => {
                    <barazo_session::config::Config as clap::Parser>::try_parse_from(&words)
                        .unwrap_or_else(|e| panic!("{at}\n{e}"));
                }
                "grpcurl" => {
                    let method = words
                        .iter()
                        .find_map(|w| w.strip_prefix("barazo.session.v1.SessionService/"))
                        .unwrap_or_else(|| panic!("{at}: names no SessionService method"));
                    assert!(
                        barazo_session::rpc::Rpc::from_method(method).is_some(),
                        "{at}: no method {method}"
                    );
                }
                _ if words[0].starts_with("scripts/") => {
                    assert!(repo().join(words[0]).is_file(), "{at}: no such script");
                }
                _ => continue,
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "the docs' commands were found ({checked})");
}
