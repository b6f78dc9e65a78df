//! Starting `barazo-session` servers as child processes, the way they run in production.

use crate::client::Connector;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Any error, for a command-line tool that reports and exits.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How to start one server.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// A label for the report, e.g. `valkey` or `valkey+tracing`.
    pub label: String,
    /// `memory` or `valkey`.
    pub store: String,
    /// The Valkey URL, for the valkey store.
    pub valkey_url: Option<String>,
    /// `standalone` or `cluster`.
    pub valkey_mode: String,
    /// An OTLP endpoint to export every span to (100% sampling), or none for tracing off.
    pub otlp_endpoint: Option<String>,
    /// The server's `--worker-threads`, or its default.
    pub worker_threads: Option<usize>,
    /// The server's `--validation-cache` (`on`/`off`), or its default.
    pub validation_cache: Option<&'static str>,
}

/// A running server, killed on drop.
pub struct Server {
    child: Child,
    /// Its gRPC address.
    pub addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `barazo-session` binary built beside this one.
fn server_binary() -> std::io::Result<std::path::PathBuf> {
    let me = std::env::current_exe()?;
    Ok(me.with_file_name("barazo-session"))
}

impl Server {
    /// Starts a server on a loopback ephemeral port and waits until it reports SERVING.
    pub async fn start(spec: ServerSpec) -> Result<Self, BoxError> {
        let mut cmd = Command::new(server_binary()?);
        cmd.args(["--listen", "127.0.0.1:0", "--store", &spec.store])
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn,barazo_session=info")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Its own process group: a Ctrl-C in the terminal goes to the whole foreground
        // group, and the server must keep serving while this tool deletes its sessions
        // (it is stopped when dropped).
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        if let Some(url) = &spec.valkey_url {
            cmd.args(["--valkey-url", url, "--valkey-mode", &spec.valkey_mode]);
        }
        if let Some(cache) = spec.validation_cache {
            cmd.args(["--validation-cache", cache]);
        }
        if let Some(threads) = spec.worker_threads {
            cmd.args(["--worker-threads", &threads.to_string()]);
        }
        if let Some(endpoint) = &spec.otlp_endpoint {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
                .env("OTEL_TRACES_SAMPLER", "always_on");
        }
        let mut child = cmd.spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                    && event["message"] == "listening"
                    && let Some(addr) = event["addr"].as_str()
                {
                    let _ = addr_tx.send(addr.to_owned());
                }
                // Keep draining so the server never blocks on a full pipe.
            }
        });
        let addr =
            tokio::task::spawn_blocking(move || addr_rx.recv_timeout(Duration::from_secs(20)))
                .await??;
        let server = Self { child, addr };
        server.wait_until_serving().await?;
        Ok(server)
    }

    async fn wait_until_serving(&self) -> Result<(), BoxError> {
        let mut health = HealthClient::new(self.channel().await?);
        let mut updates = health
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner();
        let serving = async {
            while let Some(update) = updates.next().await {
                if update?.status == ServingStatus::Serving as i32 {
                    return Ok::<(), tonic::Status>(());
                }
            }
            Err(tonic::Status::unavailable("health stream ended"))
        };
        tokio::time::timeout(Duration::from_secs(20), serving).await??;
        Ok(())
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A new HTTP/2 connection to the server.
    pub async fn channel(&self) -> Result<Channel, BoxError> {
        Connector::plaintext().channel(&self.addr).await
    }
}
