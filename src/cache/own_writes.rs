//! This replica's own writes, shown in its validations at once rather than when Valkey's
//! invalidation for them arrives on the feed.

use super::ValidationCache;
use crate::domain::rotation::{Lookup, Presented};
use crate::domain::{Lifetimes, Revocation, SessionRecord};
use crate::store::{
    ByRefresh, Created, Found, FoundByHash, Refresh, Refreshed, SessionStore, StoreError,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A store that tells a [`ValidationCache`] about this replica's own writes, so they show
/// in this replica's validations at once. Every operation goes straight to the inner
/// store; validations are answered from the cache by
/// [`crate::api::validation::AccessTokens`].
pub struct OwnWrites<S> {
    inner: S,
    cache: Arc<ValidationCache>,
}

impl<S> OwnWrites<S> {
    /// `inner`, reporting its writes to `cache`.
    pub fn new(inner: S, cache: Arc<ValidationCache>) -> Self {
        Self { inner, cache }
    }

    /// Runs one write and drops what it may have changed: the sessions `touched` names in
    /// its answer, everything when it failed (it may have happened all the same), when
    /// `touched` cannot name them, or when the call is dropped mid-write.
    async fn write<T>(
        &self,
        write: impl Future<Output = Result<T, StoreError>>,
        touched: impl FnOnce(&T) -> Touched,
    ) -> Result<T, StoreError> {
        let in_flight = InFlight(Some(&self.cache));
        let written = write.await;
        in_flight.answered();
        match written.as_ref().map(touched) {
            Ok(Touched::Nothing) => {}
            Ok(Touched::Session(sid)) => self.cache.forget_session(&sid),
            Ok(Touched::Unknown) | Err(_) => self.cache.forget_all(),
        }
        written
    }
}

/// Armed while a write is in flight: dropped armed (the call cancelled by its deadline or
/// its caller mid-write), it drops every answer, since the write may have landed in Valkey
/// and which sessions it touched is not known.
struct InFlight<'a>(Option<&'a ValidationCache>);

impl InFlight<'_> {
    /// The write answered: [`OwnWrites::write`] takes it from here.
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(cache) = self.0 {
            cache.forget_all();
        }
    }
}

/// Which cached sessions a write of this replica's changed.
enum Touched {
    /// None (e.g. a refresh token that found no session).
    Nothing,
    /// The session with this id.
    Session(String),
    /// Some not known here.
    Unknown,
}

/// `count` sessions this replica cannot name: none, or some.
fn unnamed(count: u32) -> Touched {
    if count == 0 {
        Touched::Nothing
    } else {
        Touched::Unknown
    }
}

/// The session a presented refresh token names by itself, when it does (a session id
/// does; a rotated token names a family, which only the store resolves).
fn named_session(presented: &Presented) -> Touched {
    match &presented.lookup {
        Lookup::Sid(sid) => Touched::Session(sid.clone()),
        _ => Touched::Unknown,
    }
}

impl<S: SessionStore> SessionStore for OwnWrites<S> {
    async fn create(
        &self,
        record: &SessionRecord,
        lifetimes: Lifetimes,
    ) -> Result<Created, StoreError> {
        // A new session has no cached answers; only sessions revoked for the cap matter.
        self.write(self.inner.create(record, lifetimes), |created| {
            unnamed(created.revoked)
        })
        .await
    }

    async fn find_by_access_hash(&self, access_hash: &str) -> Result<Option<Found>, StoreError> {
        self.inner.find_by_access_hash(access_hash).await
    }

    async fn find_by_access_hashes(
        &self,
        access_hashes: &[String],
    ) -> Result<Vec<FoundByHash>, StoreError> {
        self.inner.find_by_access_hashes(access_hashes).await
    }

    async fn refresh(
        &self,
        presented: &Presented,
        refresh: &Refresh<'_>,
        lifetimes: Lifetimes,
    ) -> Result<ByRefresh<Refreshed>, StoreError> {
        self.write(
            self.inner.refresh(presented, refresh, lifetimes),
            |answer| match answer {
                ByRefresh::Found(refreshed) => Touched::Session(refreshed.record.sid.clone()),
                ByRefresh::Reused { sid, .. } => Touched::Session(sid.clone()),
                ByRefresh::NotFound => Touched::Nothing,
                ByRefresh::PastLifetime => named_session(presented),
            },
        )
        .await
    }

    async fn delete(
        &self,
        presented: &Presented,
        grace: Duration,
    ) -> Result<ByRefresh<String>, StoreError> {
        self.write(self.inner.delete(presented, grace), |answer| match answer {
            ByRefresh::NotFound => Touched::Nothing,
            ByRefresh::Found(sid) | ByRefresh::Reused { sid, .. } => Touched::Session(sid.clone()),
            ByRefresh::PastLifetime => named_session(presented),
        })
        .await
    }

    async fn delete_all_for_did(&self, did: &str, reason: Revocation) -> Result<u32, StoreError> {
        self.write(self.inner.delete_all_for_did(did, reason), |&count| {
            unnamed(count)
        })
        .await
    }

    async fn update_handle(&self, did: &str, handle: &str) -> Result<u32, StoreError> {
        // The sessions are not named here; handle changes are rare next to validations.
        self.write(self.inner.update_handle(did, handle), |&count| {
            unnamed(count)
        })
        .await
    }

    async fn list_for_did(&self, did: &str) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.list_for_did(did).await
    }

    async fn ended(&self, presented: &Presented) -> Result<Option<Revocation>, StoreError> {
        self.inner.ended(presented).await
    }

    async fn revoke_in_did(&self, did: &str, sid: &str) -> Result<bool, StoreError> {
        self.write(self.inner.revoke_in_did(did, sid), |_| {
            Touched::Session(sid.to_owned())
        })
        .await
    }

    async fn revoke_others(
        &self,
        presented: &Presented,
        grace: Duration,
    ) -> Result<ByRefresh<u32>, StoreError> {
        self.write(
            self.inner.revoke_others(presented, grace),
            |answer| match answer {
                ByRefresh::Found(0) | ByRefresh::NotFound => Touched::Nothing,
                ByRefresh::Reused { sid, .. } => Touched::Session(sid.clone()),
                _ => Touched::Unknown,
            },
        )
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
