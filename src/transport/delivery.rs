//! Responses the client does not take: a stream whose response waits on the client's
//! HTTP/2 flow control longer than the call's time limit is reset, so what the server holds
//! for undelivered responses is bounded per connection (at most `--max-concurrent-streams`
//! streams, each for at most the time limit), and the connection's open streams are counted
//! for the idle timeout (`transport/mod.rs`).
//!
//! Why it takes three pieces: hyper runs each HTTP/2 stream as its own task and polls the
//! response body only once the client's window has room, so a client that never opens
//! its window (SETTINGS_INITIAL_WINDOW_SIZE=0) leaves every response, and the task holding
//! it, in memory for as long as the connection lasts; no body wrapper is ever polled again
//! to notice. So [`Streams`], the executor hyper spawns stream tasks with, wraps each task
//! in a [`Deliver`] future with a clock ([`SendClock`], reachable from inside the task);
//! [`DeliveryLayer`] starts the clock when the response is ready and its body marks each
//! frame hyper takes (waiting on the client again) and each time it has nothing to give
//! (waiting on the server: no deadline, e.g. a health Watch between updates). A task whose
//! clock runs past the limit is dropped, and h2 answers a dropped stream with RST_STREAM
//! (CANCEL) and frees what it had queued for it.

use crate::transport::abuse::{ConnectionEvent, record};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tonic::codegen::{Service, http};

tokio::task_local! {
    /// The clock of the stream whose task is being polled (set by [`Deliver`]).
    static CLOCK: Arc<SendClock>;
}

/// How long one stream's response has been waiting on the client, if it is.
#[derive(Debug, Default)]
pub struct SendClock {
    state: Mutex<ClockState>,
}

#[derive(Debug, Default)]
struct ClockState {
    /// Since when the response has had something to send that the client has not taken.
    waiting_since: Option<Instant>,
    /// The call's time limit, once the response exists.
    limit: Option<Duration>,
}

impl SendClock {
    fn update(&self, change: impl FnOnce(&mut ClockState)) {
        change(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// When the stream must be reset, if its response is waiting on the client.
    fn deadline(&self) -> Option<Instant> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Some(state.waiting_since? + state.limit?)
    }
}

/// The open streams of one connection, for its idle timeout: a change between none and
/// some is notified to the connection's task.
#[derive(Debug, Default)]
pub struct Activity {
    open: AtomicUsize,
    changed: Notify,
}

impl Activity {
    /// Streams open now (their task is running).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves after the count went from none to some or back (at least once since the
    /// last call: a change while nobody waited is kept).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    pub(crate) fn opened(self: &Arc<Self>) -> OpenStream {
        if self.open.fetch_add(1, Ordering::AcqRel) == 0 {
            self.changed.notify_one();
        }
        OpenStream(self.clone())
    }
}

/// One open stream, counted until dropped.
#[derive(Debug)]
pub(crate) struct OpenStream(Arc<Activity>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_one();
        }
    }
}

/// The executor hyper runs one connection's stream tasks with: each is counted in the
/// connection's [`Activity`] and gets a send deadline ([`Deliver`]).
#[derive(Debug, Clone)]
pub struct Streams {
    activity: Arc<Activity>,
}

impl Streams {
    /// The executor for a connection whose streams are counted in `activity`.
    pub fn new(activity: Arc<Activity>) -> Self {
        Self { activity }
    }
}

impl<F> hyper::rt::Executor<F> for Streams
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        tokio::spawn(Deliver {
            task,
            clock: Arc::default(),
            timer: None,
            _open: self.activity.opened(),
        });
    }
}

pin_project_lite::pin_project! {
    /// A stream's task, dropped (the stream reset) once its response has waited on the
    /// client past the call's time limit.
    pub struct Deliver<F> {
        #[pin]
        task: F,
        clock: Arc<SendClock>,
        // Made only for a response that is waiting: most calls finish in their first poll.
        timer: Option<Pin<Box<Sleep>>>,
        _open: OpenStream,
    }
}

impl<F: Future> Future for Deliver<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let task = this.task;
        if CLOCK
            .sync_scope(this.clock.clone(), || task.poll(cx))
            .is_ready()
        {
            return Poll::Ready(());
        }
        let Some(deadline) = this.clock.deadline() else {
            return Poll::Pending;
        };
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        ready!(timer.as_mut().poll(cx));
        record(ConnectionEvent::SendTimeout);
        // Anyone can do this: debug level, so it cannot flood the log.
        tracing::debug!("stream reset: its response waited on the client past the time limit");
        Poll::Ready(())
    }
}

/// Starts each response's send clock with the call's time limit (the request timeout, or
/// the caller's shorter `grpc-timeout`) and has its body report progress. Outside a
/// [`Streams`] task (e.g. a service called directly) it changes nothing.
#[derive(Debug, Clone)]
pub struct DeliveryLayer {
    time_limit: Duration,
}

impl DeliveryLayer {
    /// Responses must be taken within `time_limit` (or the caller's shorter deadline).
    pub fn new(time_limit: Duration) -> Self {
        Self { time_limit }
    }
}

impl<S> tower_layer::Layer<S> for DeliveryLayer {
    type Service = Delivered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Delivered {
            inner,
            time_limit: self.time_limit,
        }
    }
}

/// A service behind a [`DeliveryLayer`].
#[derive(Debug, Clone)]
pub struct Delivered<S> {
    inner: S,
    time_limit: Duration,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Delivered<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Unpin,
{
    type Response = http::Response<Tracked<ResBody>>;
    type Error = S::Error;
    type Future = DeliveredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let limit = crate::transport::grpc_timeout::from_headers(request.headers())
            .map_or(self.time_limit, |caller| caller.min(self.time_limit));
        DeliveredFuture {
            inner: self.inner.call(request),
            limit,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of a [`Delivered`] service, its body tracked.
    pub struct DeliveredFuture<F> {
        #[pin]
        inner: F,
        limit: Duration,
    }
}

impl<F, B, E> Future for DeliveredFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Body<Data = Bytes> + Unpin,
{
    type Output = Result<http::Response<Tracked<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let clock = CLOCK.try_with(Arc::clone).ok();
        if let Some(clock) = &clock {
            // The headers go out at once (HTTP/2 does not flow-control them); the body
            // waits for the client's window from now.
            let limit = *this.limit;
            clock.update(|state| {
                state.limit = Some(limit);
                state.waiting_since = Some(Instant::now());
            });
        }
        let (parts, body) = response.into_parts();
        let body = Tracked::taking_ready_frames(body, cx, clock);
        Poll::Ready(Ok(http::Response::from_parts(parts, body)))
    }
}

/// Most data a response body gives up at once (see [`Tracked`]): far above any answer of
/// this service, so a unary call's whole answer is taken.
const READY_BYTES: usize = 64 * 1024;

/// A response body that tells its stream's [`SendClock`] who is waiting on whom.
///
/// Whatever the body has ready when the response is made (a unary call's whole answer) is
/// taken at once and its data copied to its exact size, and the body is dropped if that
/// was all: a response waiting on a client that does not read then holds its few bytes,
/// not the encoder's buffer (tonic allocates 8 KiB per response).
pub struct Tracked<B: Body> {
    ready: VecDeque<Result<Frame<Bytes>, B::Error>>,
    /// The rest of the body; `None` once it has ended.
    rest: Option<B>,
    clock: Option<Arc<SendClock>>,
}

impl<B: Body<Data = Bytes> + Unpin> Tracked<B> {
    fn taking_ready_frames(
        mut body: B,
        cx: &mut Context<'_>,
        clock: Option<Arc<SendClock>>,
    ) -> Self {
        let mut ready = VecDeque::new();
        let mut taken = 0;
        while taken < READY_BYTES {
            match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => {
                            taken += data.len();
                            Frame::data(Bytes::copy_from_slice(&data))
                        }
                        Err(trailers) => trailers,
                    };
                    ready.push_back(Ok(frame));
                }
                Poll::Ready(Some(Err(err))) => {
                    ready.push_back(Err(err));
                    break;
                }
                Poll::Ready(None) => {
                    return Self {
                        ready,
                        rest: None,
                        clock,
                    };
                }
                Poll::Pending => break,
            }
        }
        Self {
            ready,
            rest: Some(body),
            clock,
        }
    }
}

// Nothing in it is pinned: the rest of the body is polled through `Pin::new` (it is `Unpin`).
impl<B: Body> Unpin for Tracked<B> {}

impl<B: Body + Default> Default for Tracked<B> {
    fn default() -> Self {
        Self {
            ready: VecDeque::new(),
            rest: Some(B::default()),
            clock: None,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = match this.ready.pop_front() {
            Some(frame) => Poll::Ready(Some(frame)),
            None => match &mut this.rest {
                Some(rest) => Pin::new(rest).poll_frame(cx),
                None => Poll::Ready(None),
            },
        };
        if let Some(clock) = &this.clock {
            let waiting_since = match &polled {
                // hyper takes this frame and comes back once the client has room again.
                Poll::Ready(Some(Ok(_))) => Some(Instant::now()),
                // Nothing to send now (the server is producing), or nothing more at all.
                Poll::Pending | Poll::Ready(None | Some(Err(_))) => None,
            };
            clock.update(|state| state.waiting_since = waiting_since);
        }
        if let Poll::Ready(None) = polled {
            this.rest = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.rest {
            None if self.ready.is_empty() => SizeHint::with_exact(0),
            // Unknown, as tonic's own bodies say (an exact size would become content-length).
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn open_streams_are_counted_and_changes_notified() {
        let activity = Arc::new(Activity::default());
        let first = activity.opened();
        // The change happened while nobody waited: it is kept.
        activity.changed().await;
        assert_eq!(activity.open(), 1);
        let second = activity.opened();
        drop(first);
        assert_eq!(activity.open(), 1);
        drop(second);
        activity.changed().await;
        assert_eq!(activity.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_whose_response_waits_past_the_limit_is_dropped() {
        let activity = Arc::new(Activity::default());
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        // A stream task: its response is ready (the clock starts), then its body is never
        // polled again, as hyper does under a zero window.
        let task = async move {
            let _dropped = dropped_tx;
            let clock = CLOCK.with(Arc::clone);
            clock.update(|state| {
                state.limit = Some(Duration::from_secs(5));
                state.waiting_since = Some(Instant::now());
            });
            std::future::pending::<()>().await;
        };
        let started = Instant::now();
        hyper::rt::Executor::execute(&Streams::new(activity.clone()), task);
        let _ = dropped_rx.await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // Its count is gone with it.
        tokio::task::yield_now().await;
        assert_eq!(activity.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_waiting_on_the_server_is_not_dropped() {
        let activity = Arc::new(Activity::default());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let task = async move {
            let clock = CLOCK.with(Arc::clone);
            clock.update(|state| {
                state.limit = Some(Duration::from_secs(5));
                state.waiting_since = None;
            });
            tokio::time::sleep(Duration::from_secs(60)).await;
            let _ = done_tx.send(());
        };
        hyper::rt::Executor::execute(&Streams::new(activity), task);
        assert!(done_rx.await.is_ok(), "ran to its end");
    }
}
