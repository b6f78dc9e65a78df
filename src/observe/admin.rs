//! The admin HTTP listener: `/metrics` for Prometheus, `/livez` and `/readyz` for probes that
//! cannot speak gRPC (or TLS to the gRPC port). Off unless `--metrics-listen` is set.

use crate::observe::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::future::Future as _;
use std::sync::Arc;

/// The OpenMetrics text format, which Prometheus scrapes natively.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The admin routes over the service's metrics.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/livez", get(live))
        .route("/readyz", get(ready))
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], metrics.encode())
}

/// The process runs and answers HTTP: nothing more is checked, so an orchestrator restarts
/// the service only when it is truly stuck, not when Valkey is down.
async fn live() -> &'static str {
    "ok\n"
}

/// Ready while the store answers its health probes, like `grpc.health.v1`, and not once
/// shutdown has begun.
async fn ready(State(metrics): State<Arc<Metrics>>) -> (StatusCode, &'static str) {
    if metrics.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "session store unavailable\n",
        )
    }
}

/// Admin connections open at once: a scraper and a few probes need a handful, and each
/// takes a file descriptor the gRPC port also needs. Past it, new connections wait in the
/// kernel's backlog (which takes no descriptor) until one closes.
pub const MAX_CONNECTIONS: usize = 16;

/// Longest an admin connection may stay open: a scrape or a probe takes milliseconds, so a
/// connection still open after this is idle or hostile, and is closed to free its slot.
pub const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10);

/// The admin listener with a cap on open connections and a lifetime for each.
pub struct AdminListener {
    listener: tokio::net::TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
    backoff: crate::transport::connections::AcceptBackoff,
}

impl AdminListener {
    /// Serves `listener` with at most [`MAX_CONNECTIONS`] connections open at once.
    pub fn new(listener: tokio::net::TcpListener) -> Self {
        Self {
            listener,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            backoff: crate::transport::connections::AcceptBackoff::new("admin"),
        }
    }
}

impl axum::serve::Listener for AdminListener {
    type Io = Timed;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The slot first: without one, the next connection is not even accepted.
        let permit = loop {
            if let Ok(permit) = self.slots.clone().acquire_owned().await {
                break permit;
            }
            // The semaphore is never closed; if it were, wait rather than spin.
            std::future::pending::<()>().await;
        };
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    self.backoff.succeeded();
                    let stream = Timed {
                        stream,
                        deadline: Box::pin(tokio::time::sleep(CONNECTION_LIFETIME)),
                        _permit: permit,
                    };
                    return (stream, addr);
                }
                Err(err) => self.backoff.failed(&err).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

pin_project_lite::pin_project! {
    /// An admin connection that fails its reads and writes once its lifetime is over (hyper
    /// then closes it), and frees its slot when dropped.
    pub struct Timed {
        #[pin]
        stream: tokio::net::TcpStream,
        deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
}

impl Timed {
    fn expired(
        deadline: &mut std::pin::Pin<Box<tokio::time::Sleep>>,
        cx: &mut std::task::Context<'_>,
    ) -> bool {
        deadline.as_mut().poll(cx).is_ready()
    }
}

fn lifetime_over() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "admin connection lifetime over",
    )
}

impl tokio::io::AsyncRead for Timed {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        if Timed::expired(this.deadline, cx) {
            return std::task::Poll::Ready(Err(lifetime_over()));
        }
        this.stream.poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Timed {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.project();
        if Timed::expired(this.deadline, cx) {
            return std::task::Poll::Ready(Err(lifetime_over()));
        }
        this.stream.poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
}
