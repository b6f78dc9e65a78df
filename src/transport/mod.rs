//! Serving the accepted connections: TLS when configured, HTTP/2 with the limits tonic's
//! server applied, the connection's identity in every request, a time backstop per call,
//! the idle timeout (GOAWAY), and graceful shutdown.
//!
//! The service serves each connection itself with hyper rather than through tonic's
//! `serve_with_incoming`, because closing an idle connection needs its hyper connection
//! (`graceful_shutdown`, which sends GOAWAY) and its count of open streams, and resetting
//! responses that are never taken needs the executor its streams run on
//! ([`crate::transport::delivery`]); tonic keeps both to itself. What tonic 0.14's server did is
//! kept: the same HTTP/2 settings, `TlsConnectInfo<Peer>` (TLS) or `Peer` (plaintext) in
//! each request's extensions, `CANCELLED "Timeout expired"` past the backstop, and on
//! shutdown the listener closed at once, then every connection sent GOAWAY and drained.

//!
//! The rest of the connection layer lives beside it: [`connections`] (the cap, accept
//! back-off, slow handshakes), [`handshake`], [`delivery`] (responses never taken),
//! [`abuse`] (connection-level events, counted not logged) and [`descriptors`] (the fd
//! limit).

pub(crate) mod abuse;
pub(crate) mod connections;
pub(crate) mod delivery;
pub(crate) mod descriptors;
pub(crate) mod grpc_timeout;
pub(crate) mod handshake;

use crate::transport::abuse::{ConnectionEvent, record};
use crate::transport::delivery::{Activity, Streams};
pub use crate::transport::delivery::{Delivered, DeliveryLayer};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::transport::server::Connected;

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file holds no certificate or key where one is needed, or cannot be parsed.
    #[error("cannot read the {what} as PEM")]
    Pem {
        /// Which file.
        what: &'static str,
        /// The parser's reason.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate chain holds no certificate.
    #[error("the TLS certificate file holds no certificate")]
    NoCertificate,
    /// rustls refused the certificate, key or client CA.
    #[error("rustls refused the TLS settings")]
    Rustls(#[from] rustls::Error),
    /// The client CA bundle cannot verify client certificates.
    #[error("cannot verify client certificates with the client CA")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

/// ALPN of the gRPC listener: HTTP/2 only.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN of the HTTP listener: HTTP/2 or HTTP/1.1, whichever the gateway speaks.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The TLS settings of a listener, as tonic built them: the server's certificate chain
/// and key, the `alpn` protocols, and with a client CA, a client certificate from it
/// required.
pub fn tls_acceptor(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem = |what| move |source| TlsError::Pem { what, source };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("TLS certificate"))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(pem("TLS key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                roots.add(cert.map_err(pem("client CA"))?)?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// How connections are served.
#[derive(Clone)]
pub struct Transport {
    /// TLS on the listener, if configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Longest a TLS handshake may take (the connection's own handshake deadline, in
    /// `connections.rs`, also covers it).
    pub handshake_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Keepalive pings: how often, and how long to wait for the answer.
    pub keepalive_interval: Duration,
    /// See `keepalive_interval`.
    pub keepalive_timeout: Duration,
    /// A connection with no open stream this long is closed with GOAWAY.
    pub idle_timeout: Duration,
    /// The longest a call may run before the handler answers (the service's own time
    /// limit answers DEADLINE_EXCEEDED first); the caller's shorter `grpc-timeout` wins.
    pub backstop: Duration,
}

/// What the transport serves: the request stack (`server::request_stack`), cloned per
/// connection, never failing (errors are gRPC statuses in its responses).
pub trait Stack<B>:
    Service<
        http::Request<Body>,
        Response = http::Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> Stack<B> for S where
    S: Service<
            http::Request<Body>,
            Response = http::Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A response body hyper can send on an HTTP/2 stream.
pub trait ResponseBody:
    hyper::body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Default
    + Send
    + 'static
{
}

impl<B> ResponseBody for B where
    B: hyper::body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Default
        + Send
        + 'static
{
}

impl Transport {
    /// Serves the connections of `incoming` with `service` until `shutdown` resolves; then
    /// drops `incoming` (the listener closes), asks every connection to finish (GOAWAY) and
    /// returns once all are closed.
    pub async fn serve<I, IO, S, B, F>(self, incoming: I, service: S, shutdown: F)
    where
        I: Stream<Item = std::io::Result<IO>>,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IO::ConnectInfo: Clone + Send + Sync + 'static,
        S: Stack<B>,
        B: ResponseBody,
        F: Future<Output = ()>,
    {
        let this = Arc::new(self);
        let (stop_tx, stop_rx) = watch::channel(());
        {
            let mut incoming = pin!(incoming);
            let mut shutdown = pin!(shutdown);
            loop {
                tokio::select! {
                    () = &mut shutdown => break,
                    next = incoming.next() => match next {
                        Some(Ok(io)) => {
                            let connection = this.clone().connection(io, service.clone(), stop_rx.clone());
                            tokio::spawn(connection);
                        }
                        // Failed accepts are handled (backoff, count) by `connections::limit`.
                        Some(Err(_)) => {}
                        None => break,
                    },
                }
            }
        }
        // Every connection holds a receiver: tell them, then wait until all have closed.
        drop(stop_rx);
        let _ = stop_tx.send(());
        stop_tx.closed().await;
    }

    /// One connection, from the TLS handshake to its close.
    async fn connection<IO, S, B>(
        self: Arc<Self>,
        io: IO,
        service: S,
        mut stop: watch::Receiver<()>,
    ) where
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IO::ConnectInfo: Clone + Send + Sync + 'static,
        S: Stack<B>,
        B: ResponseBody,
    {
        let Some(tls) = &self.tls else {
            let info = io.connect_info();
            return self.http2(io, info, service, stop).await;
        };
        let accept = tokio::time::timeout(self.handshake_timeout, tls.accept(io));
        let accepted = tokio::select! {
            accepted = accept => accepted,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok(Ok(io)) => {
                let info = io.connect_info();
                self.http2(io, info, service, stop).await;
            }
            // Anyone can fail a handshake: debug level, as tonic logged it.
            Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        }
    }

    /// HTTP/2 over an established connection, until it closes: GOAWAY once it has had no
    /// open stream for the idle timeout, or when the server stops.
    async fn http2<IO, Info, S, B>(
        &self,
        io: IO,
        info: Info,
        service: S,
        mut stop: watch::Receiver<()>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        Info: Clone + Send + Sync + 'static,
        S: Stack<B>,
        B: ResponseBody,
    {
        let activity = Arc::new(Activity::default());
        let mut builder = hyper::server::conn::http2::Builder::new(Streams::new(activity.clone()));
        // tonic 0.14's settings (transport/server/mod.rs, `serve_internal`): hyper's
        // defaults for windows, frame and header sizes, and these.
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .adaptive_window(false);
        let service = PerConnection {
            inner: service,
            info,
            backstop: self.backstop,
        };
        let connection = pin!(builder.serve_connection(TokioIo::new(io), service));
        hold_open(
            connection,
            &activity,
            &mut stop,
            self.idle_timeout,
            self.keepalive_timeout,
        )
        .await;
        drop(stop);
    }
}

/// The service of one connection: puts the connection's info into each request (where
/// `authz/` finds the client certificate), and answers `CANCELLED "Timeout expired"` when
/// a call outlives the backstop, as tonic's server did.
struct PerConnection<S, Info> {
    inner: S,
    info: Info,
    backstop: Duration,
}

impl<S, Info, B> hyper::service::Service<http::Request<hyper::body::Incoming>>
    for PerConnection<S, Info>
where
    // Spelled out, not `Stack<B>`: `B` is bound here only through `Response`.
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    Info: Clone + Send + Sync + 'static,
    B: Default + Send + 'static,
{
    type Response = http::Response<B>;
    type Error = Infallible;
    type Future = Backstop<S::Future, B>;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(self.info.clone());
        let limit = crate::transport::grpc_timeout::from_headers(request.headers())
            .map_or(self.backstop, |caller| caller.min(self.backstop));
        // Every layer's `poll_ready` is always ready (tonic's routes and ours).
        let mut inner = self.inner.clone();
        // Boxed: the stream's task then holds only a pointer once the call has answered,
        // not room for the whole call (what a client that never reads its answers pins).
        Backstop(Box::pin(Bounded {
            call: inner.call(request),
            sleep: tokio::time::sleep(limit),
            _body: std::marker::PhantomData,
        }))
    }
}

pin_project_lite::pin_project! {
    /// A call and its backstop timer.
    pub struct Bounded<F, B> {
        #[pin]
        call: F,
        #[pin]
        sleep: tokio::time::Sleep,
        _body: std::marker::PhantomData<fn() -> B>,
    }
}

/// A call bounded by the backstop.
pub struct Backstop<F, B>(Pin<Box<Bounded<F, B>>>);

impl<F, B> Future for Backstop<F, B>
where
    F: Future<Output = Result<http::Response<B>, Infallible>>,
    B: Default,
{
    type Output = Result<http::Response<B>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.0.as_mut().project();
        if let ready @ Poll::Ready(_) = this.call.poll(cx) {
            return ready;
        }
        if this.sleep.poll(cx).is_ready() {
            let timed_out = tonic::Status::cancelled("Timeout expired").into_http::<B>();
            return Poll::Ready(Ok(timed_out));
        }
        Poll::Pending
    }
}

/// Serves `connection` until it closes: when the client closes it; after `idle_timeout`
/// without an open request (counted in `activity`), then closed gracefully (GOAWAY on
/// HTTP/2) with `keepalive_timeout` for the client to finish (h2 waits for the answer to a
/// ping before it closes, so a client that never answers is cut off then); or when `stop`
/// changes (the server's drain, whose deadline bounds what follows). Shared by the gRPC
/// and the HTTP listener.
pub(crate) async fn hold_open<C>(
    mut connection: Pin<&mut C>,
    activity: &Activity,
    stop: &mut watch::Receiver<()>,
    idle_timeout: Duration,
    keepalive_timeout: Duration,
) where
    C: hyper_util::server::graceful::GracefulConnection,
    C::Error: std::fmt::Display,
{
    let timer = tokio::time::sleep(idle_timeout);
    let mut timer = pin!(timer);
    let mut timer_armed = true;
    let mut closing_idle = false;
    let mut stopping = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(err) = served {
                    // Anyone can make a connection fail: debug level.
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                break;
            }
            _ = stop.changed(), if !stopping => {
                // A connection already closing for idleness keeps its own, shorter cut-off.
                stopping = true;
                timer_armed = closing_idle;
                connection.as_mut().graceful_shutdown();
            }
            () = activity.changed(), if !stopping && !closing_idle => {
                timer_armed = activity.open() == 0;
                if timer_armed {
                    timer.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                }
            }
            () = timer.as_mut(), if timer_armed => {
                if closing_idle {
                    break;
                }
                closing_idle = true;
                record(ConnectionEvent::IdleClose);
                tracing::debug!("connection closed: no open request within the idle timeout");
                connection.as_mut().graceful_shutdown();
                timer.as_mut().reset(tokio::time::Instant::now() + keepalive_timeout);
            }
        }
    }
}
