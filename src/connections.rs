//! Client connections: a cap on how many are open (past it the listener stops accepting
//! until one closes, so clients that open many connections cannot exhaust memory or file
//! descriptors; each connection may also hold at most `--max-concurrent-streams` streams),
//! and what the server keeps about each one for all of its calls ([`Peer`]).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

pin_project_lite::pin_project! {
    /// A client connection holding one of the limited connection slots until it closes.
    pub struct Limited {
        #[pin]
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        peer: Peer,
    }
}

/// What the server knows about the client of one connection; tonic puts it in the
/// extensions of every request on the connection (inside `TlsConnectInfo` with TLS).
///
/// It replaces tonic's `TcpConnectInfo` there, so `tonic::Request::remote_addr` finds
/// nothing: use [`Peer::tcp`].
#[derive(Debug, Clone)]
pub struct Peer {
    tcp: TcpConnectInfo,
    /// The caller's certificate identities, filled on the connection's first call; shared
    /// by every clone made for the connection's requests.
    identities: Arc<OnceLock<Vec<String>>>,
}

impl Peer {
    /// A peer with nothing known yet about its identities.
    pub fn new(tcp: TcpConnectInfo) -> Self {
        Self {
            tcp,
            identities: Arc::default(),
        }
    }

    /// The connection's addresses.
    pub fn tcp(&self) -> &TcpConnectInfo {
        &self.tcp
    }

    /// The caller's certificate identities: `parse` runs on the connection's first call
    /// only, since the certificate cannot change while the connection lasts.
    pub fn identities(&self, parse: impl FnOnce() -> Vec<String>) -> &[String] {
        self.identities.get_or_init(parse)
    }
}

impl Connected for Limited {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().stream.poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The accepted connections of `incoming`, at most `max` open at once. When all slots are
/// taken, the next accepted connection waits (unserved) for one to free.
pub fn limit(
    incoming: TcpIncoming,
    max: usize,
) -> impl Stream<Item = io::Result<Limited>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(max));
    incoming.then(move |accepted| {
        let slots = slots.clone();
        async move {
            let stream = accepted?;
            let permit = slots
                .acquire_owned()
                .await
                // The semaphore is never closed.
                .map_err(|_| io::Error::other("connection slots closed"))?;
            let peer = Peer::new(stream.connect_info());
            Ok(Limited {
                stream,
                permit,
                peer,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn identities_are_parsed_once_per_connection() {
        let parses = AtomicUsize::new(0);
        let parse = || {
            parses.fetch_add(1, Ordering::SeqCst);
            vec!["spiffe://barazo/appview".to_owned()]
        };
        let tcp = TcpConnectInfo {
            local_addr: None,
            remote_addr: None,
        };
        let connection = Peer::new(tcp.clone());
        // tonic clones the connection's info into each request on it.
        let first_call = connection.clone();
        let second_call = connection.clone();
        assert_eq!(first_call.identities(parse), ["spiffe://barazo/appview"]);
        assert_eq!(second_call.identities(parse), ["spiffe://barazo/appview"]);
        assert_eq!(parses.load(Ordering::SeqCst), 1);
        // Another connection parses its own certificate.
        let other = Peer::new(tcp);
        assert_eq!(other.identities(Vec::new), [] as [String; 0]);
        assert_eq!(first_call.identities(Vec::new), ["spiffe://barazo/appview"]);
        assert_eq!(parses.load(Ordering::SeqCst), 1);
    }
}
