//! A cap on open client connections: past it the listener stops accepting until one closes,
//! so clients that open many connections cannot exhaust memory or file descriptors (each
//! connection may also hold at most `--max-concurrent-streams` streams).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
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
    }
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
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
            Ok(Limited { stream, permit })
        }
    })
}
