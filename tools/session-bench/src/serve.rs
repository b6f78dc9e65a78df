//! `session-bench floor` and `session-bench sink`: the tool's servers on their own, for a
//! load generator other than this tool (h2load, BENCHMARKS.md) to drive or to export to.
//!
//! Each prints `listening <addr>` on stdout once bound (so `--listen 127.0.0.1:0` can be
//! used from a script) and serves until SIGINT or SIGTERM.

use crate::floor::Floor;
use crate::sink::Sink;
use barazo_session::transport::{DeliveryLayer, Transport};
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::server::TcpIncoming;
use tower_layer::Layer as _;

/// A server run on its own.
#[derive(Clone, Debug, clap::Subcommand)]
pub(crate) enum Serve {
    /// No load: serve a storeless floor, answering ValidateAccessToken and
    /// ValidateAccessTokens with a fixed valid answer as large as the real server's (no
    /// store, cache, policy, metrics, spans or logs), with the real server's HTTP/2 settings.
    /// Prints `listening <addr>`; serves until SIGINT or SIGTERM.
    Floor {
        /// Address to listen on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Who serves the connections: `tonic`, tonic's own server (the floor: any
        /// tonic service pays this); `service`, the real server's connection handling
        /// (barazo_session::transport: hyper with its delivery tracking and backstop), so
        /// that what remains between the floor and the server is its per-call layers and
        /// handler.
        #[arg(long, value_enum, default_value_t = FloorTransport::Tonic)]
        transport: FloorTransport,
    },
    /// No load: an OTLP/gRPC trace receiver that counts export requests and spans without
    /// decoding them (for OTEL_EXPORTER_OTLP_ENDPOINT of a server under another load
    /// tool). Prints `listening <addr>`; on SIGINT or SIGTERM prints its counts and exits.
    Sink {
        /// Address to listen on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

/// Who serves the floor's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FloorTransport {
    Tonic,
    Service,
}

/// Serves until SIGINT or SIGTERM.
pub(crate) async fn run(serve: &Serve) -> ExitCode {
    match serve_until_stopped(serve).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("session-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_until_stopped(serve: &Serve) -> std::io::Result<()> {
    let (Serve::Floor { listen, .. } | Serve::Sink { listen }) = serve;
    // No Nagle delay on small answers, as the real server's listener (server.rs).
    let incoming = TcpIncoming::bind(*listen)?.with_nodelay(Some(true));
    let addr = incoming.local_addr()?;
    let stopped = barazo_session::server::shutdown_signal()?;
    // The real server's defaults (config/mod.rs): 100 streams per connection, keepalive
    // pings every 30 s with 10 s to answer; tonic's HTTP/2 settings otherwise, as the real
    // server keeps them (transport.rs).
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(100)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening {addr}")?;
    stdout.flush()?;
    let served = match serve {
        Serve::Floor {
            transport: FloorTransport::Service,
            ..
        } => {
            // The real server's outermost layer, which its request stack adds over the routes.
            let floor = DeliveryLayer::new(REQUEST_TIMEOUT).layer(Floor::new());
            service_transport().serve(incoming, floor, stopped).await;
            Ok(())
        }
        Serve::Floor { .. } => {
            builder
                .add_service(Floor::new())
                .serve_with_incoming_shutdown(incoming, stopped)
                .await
        }
        Serve::Sink { .. } => {
            let sink = Sink::default();
            let served = builder
                .add_service(sink.clone())
                .serve_with_incoming_shutdown(incoming, stopped)
                .await;
            println!(
                "export requests accepted: {}; spans received: {}",
                sink.exports(),
                sink.spans()
            );
            served
        }
    };
    served.map_err(std::io::Error::other)
}

/// The real server's default request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The real server's connection handling with its defaults (server.rs, `transport`):
/// plaintext, a 5 s request timeout (the backstop a second later), 5 minutes' idleness.
fn service_transport() -> Transport {
    let request_timeout = REQUEST_TIMEOUT;
    Transport {
        tls: None,
        handshake_timeout: Duration::from_secs(5),
        max_concurrent_streams: 100,
        keepalive_interval: Duration::from_secs(30),
        keepalive_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(300),
        backstop: request_timeout + Duration::from_secs(1),
    }
}
