//! Client connections: a cap on how many are open (past it the listener stops accepting
//! until one closes, so clients that open many connections cannot exhaust memory or file
//! descriptors; each connection may also hold at most `--max-concurrent-streams` streams),
//! and what the server keeps about each one for all of its calls ([`Peer`]).

use crate::transport::handshake::Handshake;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

pin_project_lite::pin_project! {
    /// A client connection holding one of the limited connection slots until it closes,
    /// and closed (its reads fail) if it has not finished its handshake by the deadline.
    pub struct Limited {
        #[pin]
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        peer: Peer,
        handshake: Handshake,
        // Until the handshake is done; then dropped.
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        // Whether the deadline passed (counted once).
        timed_out: bool,
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
        let this = self.project();
        let Some(deadline) = this.deadline.as_mut() else {
            return this.stream.poll_read(cx, buf);
        };
        // Read first: on a busy server the connection may be polled only after its deadline,
        // with a handshake that arrived in time waiting in the socket buffer.
        let before = buf.filled().len();
        let polled = this.stream.poll_read(cx, buf);
        let expired = match &polled {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().get(before..).unwrap_or_default();
                if this.handshake.feed(read) {
                    *this.deadline = None;
                    return polled;
                }
                // A client sending its handshake a byte at a time is still held to it.
                deadline.is_elapsed()
            }
            Poll::Ready(Err(_)) => return polled,
            Poll::Pending => deadline.as_mut().poll(cx).is_ready(),
        };
        if !expired {
            return polled;
        }
        if !*this.timed_out {
            *this.timed_out = true;
            crate::transport::abuse::record(
                crate::transport::abuse::ConnectionEvent::HandshakeTimeout,
            );
        }
        // Anyone can open connections: debug level, so they cannot flood the log.
        tracing::debug!(
            peer = ?this.peer.tcp.remote_addr,
            "connection closed: no HTTP/2 handshake within the handshake timeout"
        );
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no handshake within the handshake timeout",
        )))
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
/// taken, the next accepted connection waits (unserved) for one to free. A failed accept
/// (typically `EMFILE`, out of descriptors) is never handed on: it waits out a backoff
/// before the next accept instead of retrying at once, which would spin a core.
///
/// Each connection must finish its handshake (see [`crate::transport::handshake`]) within
/// `handshake_timeout` of being accepted, or it is closed.
pub fn limit(
    incoming: TcpIncoming,
    max: usize,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<Limited>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(max));
    let backoff = AcceptBackoff::new("grpc");
    incoming
        .then(move |accepted| {
            let slots = slots.clone();
            let backoff = backoff.clone();
            async move {
                let stream = match accepted {
                    Ok(stream) => {
                        backoff.succeeded();
                        stream
                    }
                    Err(err) => {
                        backoff.failed(&err).await;
                        return None;
                    }
                };
                // The semaphore is never closed, so this waits for a slot and never fails.
                let permit = slots.acquire_owned().await.ok()?;
                let peer = Peer::new(stream.connect_info());
                Some(Ok(Limited {
                    stream,
                    permit,
                    peer,
                    handshake: Handshake::Start,
                    // Counted from accept: a slot was just taken.
                    deadline: Some(Box::pin(tokio::time::sleep(handshake_timeout))),
                    timed_out: false,
                }))
            }
        })
        .filter_map(|connection| connection)
}

/// First and longest pause after a failed accept: short enough that a brief shortage
/// costs little, long enough that a lasting one costs no CPU (Go's net/http uses the same).
const BACKOFF_FIRST: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one warning per listener this often while accepts keep failing.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a listener does after a failed accept: wait (doubling up to a second), and warn,
/// at most once per [`WARN_EVERY`] with the count of failures since the last warning.
#[derive(Clone)]
pub struct AcceptBackoff {
    listener: &'static str,
    state: Arc<Mutex<BackoffState>>,
}

#[derive(Default)]
struct BackoffState {
    delay: Option<Duration>,
    last_warning: Option<Instant>,
    unreported: u64,
}

impl AcceptBackoff {
    /// A backoff for the listener named `listener` in its warnings.
    pub fn new(listener: &'static str) -> Self {
        Self {
            listener,
            state: Arc::default(),
        }
    }

    /// An accept succeeded: the next failure starts from the shortest pause again.
    pub fn succeeded(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .delay = None;
    }

    /// An accept failed with `err`: warns (rate-limited) and waits before the next one.
    pub async fn failed(&self, err: &io::Error) {
        let delay = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let delay = state
                .delay
                .map_or(BACKOFF_FIRST, |d| d.saturating_mul(2).min(BACKOFF_MAX));
            state.delay = Some(delay);
            state.unreported += 1;
            crate::transport::abuse::record(crate::transport::abuse::ConnectionEvent::AcceptFailed);
            let due = state
                .last_warning
                .is_none_or(|at| at.elapsed() >= WARN_EVERY);
            if due {
                tracing::warn!(
                    listener = self.listener,
                    error = %err,
                    failures = state.unreported,
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot accept connections (out of file descriptors?); backing off"
                );
                state.last_warning = Some(Instant::now());
                state.unreported = 0;
            }
            delay
        };
        tokio::time::sleep(delay).await;
    }

    /// The pause the next failure would wait.
    #[cfg(test)]
    fn next_delay(&self) -> Duration {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .delay
            .map_or(BACKOFF_FIRST, |d| d.saturating_mul(2).min(BACKOFF_MAX))
    }
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

    #[tokio::test(start_paused = true)]
    async fn failed_accepts_back_off_instead_of_spinning() {
        let backoff = AcceptBackoff::new("test");
        let err = io::Error::from_raw_os_error(24);
        let started = tokio::time::Instant::now();
        for _ in 0..10 {
            backoff.failed(&err).await;
        }
        // 5, 10, 20, ... ms, capped at 1 s: 5+10+20+40+80+160+320+640+1000+1000 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(3275));
        assert_eq!(backoff.next_delay(), BACKOFF_MAX);
        backoff.succeeded();
        assert_eq!(backoff.next_delay(), BACKOFF_FIRST);
    }
}
