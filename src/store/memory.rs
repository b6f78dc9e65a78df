//! The in-memory store: the same semantics as Valkey's (TTLs, sliding window, pruning), in
//! one process, for development and the quick start. Nothing survives a restart.

use super::{Found, Lifetimes, Refresh, SessionStore, StoreError};
use crate::session::SessionRecord;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How often a create sweeps every expired entry out of memory. Lookups already ignore
/// expired entries; the sweep only bounds memory for sessions nobody touches again.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Fallback lifetime if a TTL would overflow the clock (ten years).
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A value with a deadline, like a Valkey key with a TTL.
struct Expiring<T> {
    value: T,
    deadline: Instant,
}

impl<T> Expiring<T> {
    fn new(value: T, ttl: Duration) -> Self {
        let now = Instant::now();
        Self {
            value,
            // The configuration caps TTLs far below any overflow; saturate anyway.
            deadline: now.checked_add(ttl).unwrap_or(now + MAX_TTL),
        }
    }

    fn live(&self, now: Instant) -> bool {
        self.deadline > now
    }
}

/// The three keyspaces of the Valkey layout, as maps.
#[derive(Default)]
struct Keyspace {
    data: HashMap<String, Expiring<SessionRecord>>,
    access: HashMap<String, Expiring<String>>,
    dids: HashMap<String, Expiring<HashSet<String>>>,
    last_sweep: Option<Instant>,
}

impl Keyspace {
    fn live_data(&self, sid: &str, now: Instant) -> Option<&SessionRecord> {
        self.data.get(sid).filter(|e| e.live(now)).map(|e| &e.value)
    }

    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < SWEEP_INTERVAL)
        {
            return;
        }
        self.data.retain(|_, e| e.live(now));
        self.access.retain(|_, e| e.live(now));
        self.dids.retain(|_, e| e.live(now));
        self.last_sweep = Some(now);
    }

    /// Adds `sid` to the DID's index and extends the index TTL, like `SADD` + `PEXPIRE`.
    /// Valkey prunes a random sample of dead members on create; here every member is at
    /// hand, so every dead one is pruned.
    fn index(&mut self, did: &str, sid: &str, ttl: Duration, now: Instant) {
        let (mut members, previous_deadline) = self
            .dids
            .remove(did)
            .filter(|e| e.live(now))
            .map_or((HashSet::new(), now), |e| (e.value, e.deadline));
        members.retain(|member| self.data.get(member).is_some_and(|e| e.live(now)));
        members.insert(sid.to_owned());
        let mut index = Expiring::new(members, ttl);
        // Only ever extended, as in Valkey: the index must outlive every session it lists.
        index.deadline = index.deadline.max(previous_deadline);
        self.dids.insert(did.to_owned(), index);
    }

    /// Removes a session's data and every access key it names; returns its record if it
    /// was live.
    fn remove_session(&mut self, sid: &str, now: Instant) -> Option<SessionRecord> {
        let entry = self.data.remove(sid)?;
        if !entry.live(now) {
            return None;
        }
        for (hash, _) in entry.value.live_tokens() {
            self.access.remove(hash);
        }
        Some(entry.value)
    }
}

/// Session storage in process memory, see the module docs.
#[derive(Default)]
pub struct MemoryStore {
    keyspace: Mutex<Keyspace>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Keyspace> {
        // No code path panics while holding the lock, so a poisoned lock still holds
        // consistent maps: keep serving rather than failing every call.
        self.keyspace.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SessionStore for MemoryStore {
    async fn create(
        &self,
        record: &SessionRecord,
        lifetimes: Lifetimes,
    ) -> Result<SessionRecord, StoreError> {
        let now = Instant::now();
        let mut ks = self.lock();
        ks.sweep(now);
        ks.data.insert(
            record.sid.clone(),
            Expiring::new(record.clone(), lifetimes.session),
        );
        ks.access.insert(
            record.access_token_hash.clone(),
            Expiring::new(record.sid.clone(), lifetimes.access_token),
        );
        ks.index(&record.did, &record.sid, lifetimes.session, now);
        // One process, one clock: the record keeps the times it was given.
        Ok(record.clone())
    }

    async fn find_by_access_hash(&self, access_hash: &str) -> Result<Option<Found>, StoreError> {
        let now = Instant::now();
        let ks = self.lock();
        let Some(sid) = ks.access.get(access_hash).filter(|e| e.live(now)) else {
            return Ok(None);
        };
        // One process, one clock: the memory store's is the process's.
        Ok(ks.live_data(&sid.value, now).cloned().map(|record| Found {
            record,
            now_ms: crate::session::now_ms(),
        }))
    }

    async fn refresh(
        &self,
        sid: &str,
        refresh: &Refresh<'_>,
        lifetimes: Lifetimes,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let now = Instant::now();
        let now_ms = crate::session::now_ms();
        let mut ks = self.lock();
        let Some(mut record) = ks.live_data(sid, now).cloned() else {
            return Ok(None);
        };
        let lifetimes = match lifetimes.deadline_ms(record.created_at) {
            // Past its absolute deadline: the session ends now.
            Some(deadline) if deadline <= now_ms => {
                ks.remove_session(sid, now);
                if let Some(index) = ks.dids.get_mut(&record.did) {
                    index.value.remove(sid);
                }
                return Ok(None);
            }
            Some(deadline) => {
                let left = u64::try_from(deadline - now_ms).unwrap_or(0);
                lifetimes.capped(Duration::from_millis(left))
            }
            None => lifetimes,
        };
        let access_ttl_ms = i64::try_from(lifetimes.access_token.as_millis()).unwrap_or(i64::MAX);
        let removed = record.add_access_token(
            refresh.new_access_hash,
            now_ms.saturating_add(access_ttl_ms),
            refresh.previous_access_hash,
            lifetimes.tokens.max_access_tokens,
            now_ms,
        );
        for hash in &removed {
            ks.access.remove(hash);
        }
        record.refreshed_at = Some(now_ms);
        if let Some(client) = refresh.client {
            record.user_agent.clone_from(&client.user_agent);
            record.ip_address.clone_from(&client.ip_address);
        }
        ks.access.insert(
            refresh.new_access_hash.to_owned(),
            Expiring::new(sid.to_owned(), lifetimes.access_token),
        );
        ks.data.insert(
            sid.to_owned(),
            Expiring::new(record.clone(), lifetimes.session),
        );
        ks.index(&record.did, sid, lifetimes.session, now);
        Ok(Some(record))
    }

    async fn list_for_did(&self, did: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let now = Instant::now();
        let ks = self.lock();
        let Some(index) = ks.dids.get(did).filter(|e| e.live(now)) else {
            return Ok(Vec::new());
        };
        Ok(index
            .value
            .iter()
            .filter_map(|sid| ks.live_data(sid, now))
            .filter(|record| record.did == did)
            .cloned()
            .collect())
    }

    async fn revoke_in_did(&self, did: &str, sid: &str) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut ks = self.lock();
        if ks
            .live_data(sid, now)
            .is_none_or(|record| record.did != did)
        {
            return Ok(false);
        }
        ks.remove_session(sid, now);
        if let Some(index) = ks.dids.get_mut(did) {
            index.value.remove(sid);
        }
        Ok(true)
    }

    async fn revoke_others(&self, sid: &str) -> Result<Option<u32>, StoreError> {
        let now = Instant::now();
        let mut ks = self.lock();
        let Some(did) = ks.live_data(sid, now).map(|record| record.did.clone()) else {
            return Ok(None);
        };
        let others: Vec<String> = ks
            .dids
            .get(&did)
            .map(|index| index.value.iter().filter(|m| *m != sid).cloned().collect())
            .unwrap_or_default();
        let mut revoked = 0u32;
        for other in &others {
            if ks.remove_session(other, now).is_some() {
                revoked = revoked.saturating_add(1);
            }
            if let Some(index) = ks.dids.get_mut(&did) {
                index.value.remove(other);
            }
        }
        Ok(Some(revoked))
    }

    async fn delete(&self, sid: &str) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut ks = self.lock();
        let Some(record) = ks.remove_session(sid, now) else {
            return Ok(false);
        };
        if let Some(index) = ks.dids.get_mut(&record.did) {
            index.value.remove(sid);
        }
        Ok(true)
    }

    async fn delete_all_for_did(&self, did: &str) -> Result<u32, StoreError> {
        let now = Instant::now();
        let mut ks = self.lock();
        let Some(index) = ks.dids.remove(did).filter(|e| e.live(now)) else {
            return Ok(0);
        };
        let removed = index
            .value
            .iter()
            .filter(|sid| ks.remove_session(sid, now).is_some())
            .count();
        Ok(u32::try_from(removed).unwrap_or(u32::MAX))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
