//! `WatchRevocations`: the validation cache's invalidation feed, passed on to callers
//! that cache validation answers themselves (the contract is in the proto and docs/sessions.md).
//!
//! Each stream has its own task and a small bounded buffer; the feed's shared ring
//! ([`crate::cache::EVENT_BUFFER`]) holds what a stream has not taken yet. A consumer that
//! falls behind it gets a `reset` instead of the events it missed, so its memory (and the
//! server's) stays flat whatever the write rate.

use crate::api::error::RequestError;
use crate::cache::{FeedEvents, Invalidation};
use crate::proto::revocation_event::Event;
use crate::proto::{Reset, RevocationEvent};
use std::sync::Arc;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Events a stream holds that its consumer has not read yet (in the channel to tonic).
const STREAM_BUFFER: usize = 64;

/// How long a stream waits for room to tell its consumer that the service is shutting
/// down, before it just ends.
const SHUTDOWN_NOTICE: std::time::Duration = std::time::Duration::from_secs(1);

/// The revocation streams of one replica.
pub struct Revocations {
    feed: Option<Arc<FeedEvents>>,
    streams: Arc<Semaphore>,
    draining: watch::Receiver<bool>,
}

/// What a `WatchRevocations` response streams.
pub type EventStream = ReceiverStream<Result<RevocationEvent, Status>>;

fn event(event: Event) -> RevocationEvent {
    RevocationEvent { event: Some(event) }
}

fn reset() -> RevocationEvent {
    event(Event::Reset(Reset {}))
}

impl Revocations {
    /// Streams fed by the invalidation feed's `feed` events (`None`: this store has none), at most
    /// `max_streams` open at once, each ended with `UNAVAILABLE` when `draining` turns
    /// true (the server is shutting down and must not wait for streams that never end).
    pub fn new(
        feed: Option<Arc<FeedEvents>>,
        max_streams: usize,
        draining: watch::Receiver<bool>,
    ) -> Self {
        Self {
            feed,
            streams: Arc::new(Semaphore::new(max_streams)),
            draining,
        }
    }

    /// Opens one stream: `reset` first, then the feed's events.
    pub fn open(&self) -> Result<EventStream, RequestError> {
        let feed = self.feed.as_ref().ok_or(RequestError::NoRevocationFeed)?;
        if *self.draining.borrow() {
            return Err(RequestError::ShuttingDown);
        }
        let permit = self
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| RequestError::TooManyStreams)?;
        // Subscribed before checking the feed: a break after this check reaches the stream.
        let mut events = feed.subscribe();
        if !feed.is_live() {
            return Err(RequestError::FeedDown);
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let mut draining = self.draining.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if tx.send(Ok(reset())).await.is_err() {
                return;
            }
            loop {
                let next = tokio::select! {
                    // Draining before events: at shutdown the feed also breaks, and the
                    // caller should hear why the stream ends, not that the feed broke.
                    biased;
                    () = tx.closed() => return,
                    // A closed sender (the server gone) counts as draining too.
                    () = async {
                        // The guard it answers with is not `Send`: dropped at once.
                        let _ = draining.wait_for(|draining| *draining).await;
                    } => {
                        // A consumer that reads nothing gets no status, only the end of
                        // the stream, which the contract treats alike.
                        let _ = tokio::time::timeout(
                            SHUTDOWN_NOTICE,
                            tx.send(Err(Status::from(RequestError::ShuttingDown))),
                        )
                        .await;
                        return;
                    }
                    next = events.recv() => next,
                };
                let item = match next {
                    Ok(Invalidation::AccessHash(hash)) => Ok(event(Event::AccessTokenHash(hash))),
                    Ok(Invalidation::SessionKey(key)) => Ok(event(Event::SessionKey(key))),
                    Ok(Invalidation::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        Ok(reset())
                    }
                    Ok(Invalidation::Broken) | Err(broadcast::error::RecvError::Closed) => {
                        Err(Status::from(RequestError::FeedDown))
                    }
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}
