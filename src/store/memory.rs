//! The in-memory store: the same semantics as Valkey's (TTLs, sliding window, pruning), in
//! one process, for development and the quick start. Nothing survives a restart.

use super::{
    ByRefresh, Created, Found, FoundByHash, Refresh, Refreshed, SessionStore, StoreError, ended,
};
use crate::domain::Lifetimes;
use crate::domain::rotation::{Lookup, Presented};
use crate::domain::{Revocation, Role, SessionRecord};
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
    /// `refresh:<family hash>` → sid, for sessions whose refresh token rotates.
    families: HashMap<String, Expiring<String>>,
    /// `ended:<id>` → why a revoked session ended (see [`crate::store::ended`]).
    ended: HashMap<String, Expiring<Revocation>>,
    last_sweep: Option<Instant>,
}

impl Keyspace {
    /// The session `access_hash` points to, with the process's clock (one process, one
    /// clock: the memory store's is the process's).
    fn find(&self, access_hash: &str, now: Instant) -> Option<Found> {
        let sid = self.access.get(access_hash).filter(|e| e.live(now))?;
        let data = self.data.get(&sid.value).filter(|e| e.live(now))?;
        // Only the data's: nothing but this store sets its keys' lives, and the access key's
        // is the token's own (read on another clock here, it would come out a millisecond
        // early).
        let ttl = data.deadline.saturating_duration_since(now).as_millis();
        Some(Found {
            record: data.value.clone(),
            now_ms: crate::domain::now_ms(),
            keys_ttl_ms: Some(i64::try_from(ttl).unwrap_or(i64::MAX)),
        })
    }

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
        self.families.retain(|_, e| e.live(now));
        self.ended.retain(|_, e| e.live(now));
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

    /// Revokes the least recently refreshed live sessions of `did` until `keep` are left
    /// (the cap, before a new session is added). Returns how many it revoked. The order of
    /// `session_json.lua`'s `cap_order`.
    fn cap(&mut self, did: &str, keep: usize, now: Instant) -> u32 {
        let Some(index) = self.dids.get(did).filter(|e| e.live(now)) else {
            return 0;
        };
        let mut live: Vec<(i64, String)> = index
            .value
            .iter()
            .filter_map(|sid| self.live_data(sid, now))
            .filter(|record| record.did == did)
            .map(|record| (record.last_refreshed(), record.sid.clone()))
            .collect();
        if live.len() <= keep {
            return 0;
        }
        // Oldest first; the sid breaks a tie, as in the Valkey stores.
        live.sort();
        let excess = live.len() - keep;
        let mut revoked = 0u32;
        for (_, sid) in live.into_iter().take(excess) {
            if self.remove_session(&sid, now, Revocation::Cap).is_some() {
                revoked = revoked.saturating_add(1);
            }
            if let Some(index) = self.dids.get_mut(did) {
                index.value.remove(&sid);
            }
        }
        revoked
    }

    /// Removes a session's data and every access key it names, and remembers why for as
    /// long as its data would have lived; returns its record if it was live.
    fn remove_session(
        &mut self,
        sid: &str,
        now: Instant,
        reason: Revocation,
    ) -> Option<SessionRecord> {
        let entry = self.data.remove(sid)?;
        if !entry.live(now) {
            return None;
        }
        for (hash, _) in entry.value.live_tokens() {
            self.access.remove(hash);
        }
        if let Some(family) = &entry.value.refresh_family {
            self.families.remove(family);
        }
        for id in ended::ids(sid, entry.value.refresh_family.as_deref()) {
            let remembered = Expiring {
                value: reason,
                deadline: entry.deadline,
            };
            self.ended.insert(id, remembered);
        }
        Some(entry.value)
    }

    /// Revokes a session and takes it out of its DID index: what `session_json.lua`'s
    /// `revoke_session` deletes.
    fn revoke(&mut self, sid: &str, now: Instant, reason: Revocation) -> Option<SessionRecord> {
        let record = self.remove_session(sid, now, reason)?;
        if let Some(index) = self.dids.get_mut(&record.did) {
            index.value.remove(sid);
        }
        Some(record)
    }

    /// The live session a presented refresh token names, and what the token is to it.
    /// Reuse revokes the session here and now; a foreign token finds nothing.
    fn by_refresh(
        &mut self,
        presented: &Presented,
        grace_ms: i64,
        now: Instant,
    ) -> ByRefresh<(SessionRecord, Role)> {
        let sid = match &presented.lookup {
            Lookup::Sid(sid) => Some(sid.clone()),
            Lookup::Family(family) => self
                .families
                .get(family)
                .filter(|e| e.live(now))
                .map(|e| e.value.clone()),
        };
        let Some(record) = sid.and_then(|sid| self.live_data(&sid, now).cloned()) else {
            return ByRefresh::NotFound;
        };
        match record.role_of(presented, crate::domain::now_ms(), grace_ms) {
            Role::Foreign => ByRefresh::NotFound,
            Role::Reuse => {
                self.revoke(&record.sid, now, Revocation::Reuse);
                ByRefresh::Reused {
                    sid: record.sid,
                    did: record.did,
                }
            }
            role => ByRefresh::Found((record, role)),
        }
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
    ) -> Result<Created, StoreError> {
        let now = Instant::now();
        let mut ks = self.lock();
        ks.sweep(now);
        // Room for the new session first: at most the cap minus one others stay.
        let revoked = lifetimes.max_per_did.map_or(0, |cap| {
            let keep = usize::try_from(cap.get() - 1).unwrap_or(usize::MAX);
            ks.cap(&record.did, keep, now)
        });
        ks.data.insert(
            record.sid.clone(),
            Expiring::new(record.clone(), lifetimes.session),
        );
        ks.access.insert(
            record.access_token_hash.clone(),
            Expiring::new(record.sid.clone(), lifetimes.access_token),
        );
        if let Some(family) = &record.refresh_family {
            ks.families.insert(
                family.clone(),
                Expiring::new(record.sid.clone(), lifetimes.session),
            );
        }
        ks.index(&record.did, &record.sid, lifetimes.session, now);
        // One process, one clock: the record keeps the times it was given.
        Ok(Created {
            record: record.clone(),
            revoked,
        })
    }

    async fn find_by_access_hash(&self, access_hash: &str) -> Result<Option<Found>, StoreError> {
        let now = Instant::now();
        Ok(self.lock().find(access_hash, now))
    }

    async fn find_by_access_hashes(
        &self,
        access_hashes: &[String],
    ) -> Result<Vec<FoundByHash>, StoreError> {
        let now = Instant::now();
        // One lock for the batch: every answer comes from one state, as one script's would.
        let ks = self.lock();
        Ok(access_hashes
            .iter()
            .map(|hash| Ok(ks.find(hash, now)))
            .collect())
    }

    /// The steps of `session_json.lua`'s `refresh_record`, in the same order.
    async fn refresh(
        &self,
        presented: &Presented,
        refresh: &Refresh<'_>,
        lifetimes: Lifetimes,
    ) -> Result<ByRefresh<Refreshed>, StoreError> {
        let now = Instant::now();
        let now_ms = crate::domain::now_ms();
        let mut ks = self.lock();
        let (mut record, role) = match ks.by_refresh(presented, lifetimes.tokens.grace_ms(), now) {
            ByRefresh::Found(found) => found,
            ByRefresh::NotFound => return Ok(ByRefresh::NotFound),
            ByRefresh::Reused { sid, did } => return Ok(ByRefresh::Reused { sid, did }),
            ByRefresh::PastLifetime => return Ok(ByRefresh::PastLifetime),
        };
        let sid = record.sid.clone();
        let sid = sid.as_str();
        let lifetimes = match lifetimes.deadline_ms(record.created_at) {
            // Past its absolute deadline: the session ends now.
            Some(deadline) if deadline <= now_ms => {
                ks.revoke(sid, now, Revocation::Lifetime);
                return Ok(ByRefresh::PastLifetime);
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
        if let (Role::Current, Some(candidate)) = (role, refresh.rotation) {
            record.rotate(
                &presented.token_hash,
                candidate,
                now_ms,
                lifetimes.tokens.grace_ms(),
            );
        }
        if let Some(family) = &record.refresh_family {
            ks.families.insert(
                family.clone(),
                Expiring::new(sid.to_owned(), lifetimes.session),
            );
        }
        ks.data.insert(
            sid.to_owned(),
            Expiring::new(record.clone(), lifetimes.session),
        );
        ks.index(&record.did, sid, lifetimes.session, now);
        Ok(ByRefresh::Found(Refreshed { record }))
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

    async fn update_handle(&self, did: &str, handle: &str) -> Result<u32, StoreError> {
        let now = Instant::now();
        let mut ks = self.lock();
        let Some(index) = ks.dids.get(did).filter(|e| e.live(now)) else {
            return Ok(0);
        };
        let sids: Vec<String> = index.value.iter().cloned().collect();
        let mut updated = 0u32;
        for sid in sids {
            // In place: the entry keeps its expiry.
            if let Some(entry) = ks.data.get_mut(&sid).filter(|e| e.live(now))
                && entry.value.rename(did, handle)
            {
                updated = updated.saturating_add(1);
            }
        }
        Ok(updated)
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
        ks.remove_session(sid, now, Revocation::User);
        if let Some(index) = ks.dids.get_mut(did) {
            index.value.remove(sid);
        }
        Ok(true)
    }

    async fn revoke_others(
        &self,
        presented: &Presented,
        grace: Duration,
    ) -> Result<ByRefresh<u32>, StoreError> {
        let now = Instant::now();
        let mut ks = self.lock();
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let own = match ks.by_refresh(presented, grace_ms, now) {
            ByRefresh::Found((own, _)) => own,
            ByRefresh::NotFound => return Ok(ByRefresh::NotFound),
            ByRefresh::Reused { sid, did } => return Ok(ByRefresh::Reused { sid, did }),
            ByRefresh::PastLifetime => return Ok(ByRefresh::PastLifetime),
        };
        let others: Vec<String> = ks
            .dids
            .get(&own.did)
            .map(|index| {
                index
                    .value
                    .iter()
                    .filter(|m| **m != own.sid)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut revoked = 0u32;
        for other in &others {
            if ks.remove_session(other, now, Revocation::Others).is_some() {
                revoked = revoked.saturating_add(1);
            }
            if let Some(index) = ks.dids.get_mut(&own.did) {
                index.value.remove(other);
            }
        }
        Ok(ByRefresh::Found(revoked))
    }

    async fn delete(
        &self,
        presented: &Presented,
        grace: Duration,
    ) -> Result<ByRefresh<String>, StoreError> {
        let now = Instant::now();
        let mut ks = self.lock();
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        Ok(match ks.by_refresh(presented, grace_ms, now) {
            ByRefresh::Found((record, _)) => {
                ks.revoke(&record.sid, now, Revocation::Logout);
                ByRefresh::Found(record.sid)
            }
            other => other.map_found(|_| String::new()),
        })
    }

    async fn delete_all_for_did(&self, did: &str, reason: Revocation) -> Result<u32, StoreError> {
        let now = Instant::now();
        let mut ks = self.lock();
        let Some(index) = ks.dids.remove(did).filter(|e| e.live(now)) else {
            return Ok(0);
        };
        let removed = index
            .value
            .iter()
            .filter(|sid| ks.remove_session(sid, now, reason).is_some())
            .count();
        Ok(u32::try_from(removed).unwrap_or(u32::MAX))
    }

    async fn ended(&self, presented: &Presented) -> Result<Option<Revocation>, StoreError> {
        let now = Instant::now();
        let ks = self.lock();
        Ok(ks
            .ended
            .get(&ended::presented_id(presented))
            .filter(|e| e.live(now))
            .map(|e| e.value))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
