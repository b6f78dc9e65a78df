//! Serving the HTTP listener's connections with the gRPC listener's guards:
//! - a cap on open connections, with back-off when accepts fail;
//! - a deadline for the first bytes (plaintext) or the TLS handshake, then for each
//!   HTTP/1.1 request's headers, so a silent connection cannot hold a slot;
//! - the protocol the TLS handshake agreed (ALPN `h2` or `http/1.1`), or without TLS the
//!   one the first bytes show;
//! - HTTP/2 with the gRPC listener's stream cap and keepalive pings;
//! - the idle timeout: a connection without a request in progress for
//!   `--idle-connection-timeout` is closed (GOAWAY on HTTP/2), so a client that only
//!   answers pings cannot hold a slot for ever;
//! - the client certificate's identities in every request ([`CallerCertificate`]);
//! - on shutdown: no new connection, the requests in progress answered, then each
//!   connection closed.

use super::caller::CallerCertificate;
use crate::transport::connections::AcceptBackoff;
use crate::transport::delivery::Activity;
use crate::transport::hold_open;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tonic::codegen::Service as _;

/// How the HTTP listener serves connections.
pub(crate) struct HttpListener {
    pub(crate) listener: TcpListener,
    /// TLS (with ALPN `h2` and `http/1.1`) when the service has it.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// Connections open at once; more wait in the kernel's backlog.
    pub(crate) max_connections: usize,
    /// How each connection is held to account.
    pub(crate) limits: ConnectionLimits,
}

/// The time and stream limits of one connection (the gRPC listener's settings).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// Longest wait for a connection's first bytes or TLS handshake, and for a request's
    /// headers on HTTP/1.1.
    pub(crate) handshake_timeout: Duration,
    /// Longest a connection may stay open without a request in progress.
    pub(crate) idle_timeout: Duration,
    /// HTTP/2 streams open at once on one connection.
    pub(crate) max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval and the wait for its answer.
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
}

impl HttpListener {
    /// Serves `app` until `shutdown` resolves; then stops accepting and returns once every
    /// open connection has answered its requests in progress and closed.
    pub(crate) async fn serve(self, app: Router, shutdown: impl Future<Output = ()>) {
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let backoff = AcceptBackoff::new("http");
        let tls = self.tls.map(Arc::new);
        // Every connection holds a receiver until it has closed.
        let (stop_tx, stop_rx) = watch::channel(());
        let mut shutdown = pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = accept(&self.listener, &slots) => accepted,
            };
            let (stream, permit) = match accepted {
                Ok(accepted) => {
                    backoff.succeeded();
                    accepted
                }
                Err(err) => {
                    backoff.failed(&err).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let connection = connection(
                stream,
                tls.clone(),
                app.clone(),
                self.limits,
                stop_rx.clone(),
            );
            tokio::spawn(async move {
                connection.await;
                drop(permit);
            });
        }
        drop(self.listener);
        drop(stop_rx);
        let _ = stop_tx.send(());
        stop_tx.closed().await;
    }
}

/// The next connection, once a slot is free.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> std::io::Result<(TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    // The semaphore is never closed, so this waits for a slot and never fails.
    let permit = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(std::io::Error::other)?;
    let (stream, _) = listener.accept().await?;
    Ok((stream, permit))
}

/// Which HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    /// Plaintext: whichever the first bytes show (the HTTP/2 preface or not).
    Either,
}

/// One connection, from its first bytes or TLS handshake to its close.
async fn connection(
    stream: TcpStream,
    tls: Option<Arc<tokio_rustls::TlsAcceptor>>,
    app: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<()>,
) {
    let Some(tls) = tls else {
        // A client that connects and sends nothing is no client: closed at the deadline.
        let mut first = [0u8; 1];
        let waited = tokio::select! {
            waited = tokio::time::timeout(limits.handshake_timeout, stream.peek(&mut first)) => waited,
            _ = stop.changed() => return,
        };
        if !matches!(waited, Ok(Ok(1..))) {
            tracing::debug!("HTTP listener: no request within the handshake timeout");
            return;
        }
        let certificate = CallerCertificate::default();
        return http(stream, Protocol::Either, certificate, app, limits, stop).await;
    };
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(limits.handshake_timeout, tls.accept(stream)) => accepted,
        _ = stop.changed() => return,
    };
    match accepted {
        Ok(Ok(stream)) => {
            let session = stream.get_ref().1;
            let certificate = CallerCertificate::of(session.peer_certificates());
            // RFC 9113 §3.2: HTTP/2 over TLS is what ALPN agreed, never a guess.
            let protocol = match session.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            };
            http(stream, protocol, certificate, app, limits, stop).await;
        }
        // Anyone can fail a handshake: debug level, as on the gRPC listener.
        Ok(Err(err)) => tracing::debug!(error = %err, "HTTP listener: TLS handshake failed"),
        Err(_) => tracing::debug!("HTTP listener: TLS handshake timed out"),
    }
}

/// HTTP over an established connection until it closes: when the client closes it, after
/// the idle timeout, or when the server stops.
async fn http<IO>(
    io: IO,
    protocol: Protocol,
    certificate: CallerCertificate,
    app: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    // Without a client certificate nothing is inserted: a request's first extension costs
    // an allocation, and the handlers read a missing one as no certificate.
    let certificate = (!certificate.0.is_empty()).then_some(certificate);
    let counted = activity.clone();
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            if let Some(certificate) = &certificate {
                request.extensions_mut().insert(certificate.clone());
            }
            let mut app = app.clone();
            // In progress until its answer is made (the answers are small and whole).
            let in_progress = counted.opened();
            async move {
                let answer = app.call(request.map(axum::body::Body::new)).await;
                drop(in_progress);
                answer
            }
        });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    let builder = match protocol {
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
        Protocol::Either => builder,
    };
    let connection = pin!(builder.serve_connection(TokioIo::new(io), service));
    hold_open(
        connection,
        &activity,
        &mut stop,
        limits.idle_timeout,
        limits.keepalive_timeout,
    )
    .await;
}
