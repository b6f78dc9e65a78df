//! Serving the HTTP listener's connections: HTTP/1.1 or HTTP/2 (whichever the gateway
//! speaks, by ALPN with TLS or by the first bytes without), TLS and mTLS with the gRPC
//! listener's settings, the client certificate's identities in every request
//! ([`CallerCertificate`]), a cap on open connections, a deadline for the TLS handshake and
//! for each request's headers, and on shutdown a drain of the open connections.

use super::caller::CallerCertificate;
use crate::transport::connections::AcceptBackoff;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::codegen::Service as _;

/// How the HTTP listener serves connections.
pub(crate) struct HttpListener {
    pub(crate) listener: TcpListener,
    /// TLS (with ALPN `h2` and `http/1.1`) when the service has it.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// Connections open at once; more wait in the kernel's backlog.
    pub(crate) max_connections: usize,
    /// Longest a TLS handshake, and a request's headers, may take.
    pub(crate) handshake_timeout: Duration,
}

impl HttpListener {
    /// Serves `app` until `shutdown` resolves; then stops accepting and waits until every
    /// open connection has finished its requests and closed.
    pub(crate) async fn serve(self, app: Router, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let backoff = AcceptBackoff::new("http");
        let settings = Arc::new(Settings {
            tls: self.tls,
            handshake_timeout: self.handshake_timeout,
        });
        tokio::pin!(shutdown);
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
            let connection = connection(stream, settings.clone(), app.clone(), graceful.watcher());
            tokio::spawn(async move {
                connection.await;
                drop(permit);
            });
        }
        drop(self.listener);
        graceful.shutdown().await;
    }
}

struct Settings {
    tls: Option<tokio_rustls::TlsAcceptor>,
    handshake_timeout: Duration,
}

/// The next connection, once a slot is free.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> std::io::Result<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    // The semaphore is never closed, so this waits for a slot and never fails.
    let permit = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(std::io::Error::other)?;
    let (stream, _) = listener.accept().await?;
    Ok((stream, permit))
}

/// One connection, from the TLS handshake to its close.
async fn connection(
    stream: tokio::net::TcpStream,
    settings: Arc<Settings>,
    app: Router,
    watcher: Watcher,
) {
    let Some(tls) = &settings.tls else {
        return http(
            stream,
            CallerCertificate::default(),
            &settings,
            app,
            watcher,
        )
        .await;
    };
    match tokio::time::timeout(settings.handshake_timeout, tls.accept(stream)).await {
        Ok(Ok(stream)) => {
            let certificate = CallerCertificate::of(stream.get_ref().1.peer_certificates());
            http(stream, certificate, &settings, app, watcher).await;
        }
        // Anyone can fail a handshake: debug level, as on the gRPC listener.
        Ok(Err(err)) => tracing::debug!(error = %err, "HTTP listener: TLS handshake failed"),
        Err(_) => tracing::debug!("HTTP listener: TLS handshake timed out"),
    }
}

/// HTTP/1.1 or HTTP/2 over an established connection until it closes.
async fn http<IO>(
    io: IO,
    certificate: CallerCertificate,
    settings: &Settings,
    app: Router,
    watcher: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(certificate.clone());
            let mut app = app.clone();
            async move { app.call(request.map(axum::body::Body::new)).await }
        });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.handshake_timeout);
    builder.http2().timer(TokioTimer::new());
    let served = builder.serve_connection(TokioIo::new(io), service);
    if let Err(err) = watcher.watch(served).await {
        tracing::debug!(error = %err, "HTTP listener: connection ended with an error");
    }
}
