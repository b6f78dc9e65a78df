//! The Valkey Cluster store: the same key layout, spread over the cluster's slots.
//!
//! A session's three keys (data, access, DID index) hash to different slots, so no script
//! may touch them together. Each operation is a sequence of single-key commands in an order
//! that keeps revocation immediate and leaves, after a crash between steps, at worst an
//! expiring orphan, never a valid token for a deleted session:
//!
//! - **Validate** (2 round trips): `GET access` → sid, `GET data:<sid>`; valid only if the
//!   data names this token's hash, as in standalone mode.
//! - **Create** (3–4): index first (`SADD` + TTL), then data, then the access key, so a
//!   session is in its DID's index before it can be used. Pruning checks a sample of index
//!   members with `EXISTS`, one round trip each (a bounded sample, [`PRUNE_SAMPLE`]).
//! - **Refresh** (4): `GET data`, `DEL` the old access key (revoked first), `SET data … XX`
//!   (only if the session still exists: a concurrent delete wins), then the new access key
//!   and the index TTL. Two concurrent refreshes leave one valid token; the loser's access
//!   key is an orphan that never validates and expires with the access TTL.
//! - **Delete** (4): `GET data`, `DEL` its access key, `DEL` data, `SREM` from the index.
//! - **DeleteAll** (1 + 3 per session + 1): `SMEMBERS`, then per session as in Delete,
//!   then `DEL` the index.
//!
//! Health: `PING` to every primary, then a read of this service's own key space; either
//! failing means NOT_SERVING.

use super::valkey::parse_record;
use super::{KeyLayout, Lifetimes, PRUNE_SAMPLE, SessionStore, StoreError};
use crate::session::SessionRecord;
use redis::AsyncCommands;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Session storage in a Valkey Cluster.
pub struct ValkeyClusterStore {
    client: ClusterClient,
    /// Connected on first use, so the service starts while the cluster is down.
    conn: OnceCell<ClusterConnection>,
    /// When the last attempt at the first connection failed.
    last_failure: Mutex<Option<Instant>>,
    keys: KeyLayout,
}

fn store_error(err: redis::RedisError) -> StoreError {
    StoreError::Unavailable(err)
}

/// Longest wait for the first connection to the cluster (topology discovery included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// After a failed first connection, calls in this window fail at once without a new attempt.
const CONNECT_RETRY_AFTER: Duration = Duration::from_millis(500);

fn unreachable(reason: &'static str) -> StoreError {
    StoreError::Unavailable(redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        reason,
    )))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ValkeyClusterStore {
    /// Prepares a store for the cluster reachable through `seeds`; connects lazily.
    ///
    /// With `ca_pem`, nodes' certificates are verified against it (the seeds are `rediss://`,
    /// and the nodes they lead to are reached with TLS too).
    pub fn new(
        seeds: &[String],
        password: Option<&str>,
        ca_pem: Option<Vec<u8>>,
        key_prefix: &str,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Self, redis::RedisError> {
        let mut builder = ClusterClient::builder(seeds.to_vec())
            .connection_timeout(connect_timeout)
            .response_timeout(command_timeout)
            // A failing call fails fast; the next call or health probe tries again.
            .retries(1);
        if let Some(password) = password {
            builder = builder.password(password);
        }
        if let Some(ca) = ca_pem {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca),
            });
        }
        Ok(Self {
            client: builder.build()?,
            conn: OnceCell::new(),
            last_failure: Mutex::new(None),
            keys: KeyLayout::new(key_prefix),
        })
    }

    async fn conn(&self) -> Result<ClusterConnection, StoreError> {
        if let Some(conn) = self.conn.get() {
            return Ok(conn.clone());
        }
        self.conn
            .get_or_try_init(|| async {
                // Callers wait in line for the first connection; when an attempt has just
                // failed, the rest fail at once instead of each making (and waiting out) its
                // own attempt. The health task keeps trying on its interval.
                if self
                    .last_failure
                    .lock()
                    .is_ok_and(|failed| failed.is_some_and(|at| at.elapsed() < CONNECT_RETRY_AFTER))
                {
                    return Err(unreachable("the cluster was unreachable moments ago"));
                }
                let attempt =
                    tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_connection())
                        .await
                        .map_err(|_| unreachable("connecting to the cluster timed out"))
                        .and_then(|conn| conn.map_err(store_error));
                if attempt.is_err()
                    && let Ok(mut failed) = self.last_failure.lock()
                {
                    *failed = Some(Instant::now());
                }
                attempt
            })
            .await
            .cloned()
    }

    /// Adds a member to a DID index and extends (never shortens) its TTL.
    async fn index(
        &self,
        conn: &mut ClusterConnection,
        did: &str,
        sid: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.keys.did(did);
        let _: i64 = conn.sadd(&key, sid).await.map_err(store_error)?;
        let current: i64 = conn.pttl(&key).await.map_err(store_error)?;
        let wanted = millis(ttl);
        if current < i64::try_from(wanted).unwrap_or(i64::MAX) {
            let _: bool = conn
                .pexpire(&key, i64::try_from(wanted).unwrap_or(i64::MAX))
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    async fn read(
        &self,
        conn: &mut ClusterConnection,
        sid: &str,
    ) -> Result<Option<Result<SessionRecord, StoreError>>, StoreError> {
        let json: Option<String> = conn.get(self.keys.data(sid)).await.map_err(store_error)?;
        Ok(json.map(|json| parse_record(sid, &json)))
    }
}

impl SessionStore for ValkeyClusterStore {
    async fn create(&self, record: &SessionRecord, lifetimes: Lifetimes) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let index = self.keys.did(&record.did);
        // Prune a bounded sample of members whose session expired.
        let sample: Vec<String> = conn
            .srandmember_multiple(&index, PRUNE_SAMPLE as isize)
            .await
            .map_err(store_error)?;
        for member in sample {
            let exists: bool = conn
                .exists(self.keys.data(&member))
                .await
                .map_err(store_error)?;
            if !exists {
                let _: i64 = conn.srem(&index, &member).await.map_err(store_error)?;
            }
        }
        self.index(&mut conn, &record.did, &record.sid, lifetimes.session)
            .await?;
        let _: () = conn
            .pset_ex(
                self.keys.data(&record.sid),
                record.to_json(),
                millis(lifetimes.session),
            )
            .await
            .map_err(store_error)?;
        let _: () = conn
            .pset_ex(
                self.keys.access(&record.access_token_hash),
                &record.sid,
                millis(lifetimes.access_token),
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn find_by_access_hash(
        &self,
        access_hash: &str,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let sid: Option<String> = conn
            .get(self.keys.access(access_hash))
            .await
            .map_err(store_error)?;
        let Some(sid) = sid else {
            return Ok(None);
        };
        self.read(&mut conn, &sid).await?.transpose()
    }

    async fn refresh(
        &self,
        sid: &str,
        new_access_hash: &str,
        access_expires_at_ms: i64,
        lifetimes: Lifetimes,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let Some(record) = self.read(&mut conn, sid).await? else {
            return Ok(None);
        };
        let mut record = record?;
        // Revoke the old token first: whatever happens next, it no longer validates.
        let _: i64 = conn
            .del(self.keys.access(&record.access_token_hash))
            .await
            .map_err(store_error)?;
        record.access_token_hash = new_access_hash.to_owned();
        record.access_token_expires_at = access_expires_at_ms;
        // XX: only while the session exists, so a concurrent delete is never undone.
        let written: Option<String> = redis::cmd("SET")
            .arg(self.keys.data(sid))
            .arg(record.to_json())
            .arg("PX")
            .arg(millis(lifetimes.session))
            .arg("XX")
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        if written.is_none() {
            return Ok(None);
        }
        let _: () = conn
            .pset_ex(
                self.keys.access(new_access_hash),
                sid,
                millis(lifetimes.access_token),
            )
            .await
            .map_err(store_error)?;
        self.index(&mut conn, &record.did, sid, lifetimes.session)
            .await?;
        Ok(Some(record))
    }

    async fn delete(&self, sid: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let Some(record) = self.read(&mut conn, sid).await? else {
            return Ok(false);
        };
        // Revoke the access token first, then the session; a corrupt record is removed all
        // the same (its access key, unknown, expires on its own and never validates).
        if let Ok(record) = &record {
            let _: i64 = conn
                .del(self.keys.access(&record.access_token_hash))
                .await
                .map_err(store_error)?;
        }
        let _: i64 = conn.del(self.keys.data(sid)).await.map_err(store_error)?;
        if let Ok(record) = &record {
            let _: i64 = conn
                .srem(self.keys.did(&record.did), sid)
                .await
                .map_err(store_error)?;
        }
        Ok(true)
    }

    async fn delete_all_for_did(&self, did: &str) -> Result<u32, StoreError> {
        let mut conn = self.conn().await?;
        let index = self.keys.did(did);
        let members: Vec<String> = conn.smembers(&index).await.map_err(store_error)?;
        let mut deleted = 0u32;
        for sid in members {
            let Some(record) = self.read(&mut conn, &sid).await? else {
                continue;
            };
            if let Ok(record) = &record {
                let _: i64 = conn
                    .del(self.keys.access(&record.access_token_hash))
                    .await
                    .map_err(store_error)?;
            }
            let _: i64 = conn.del(self.keys.data(&sid)).await.map_err(store_error)?;
            deleted = deleted.saturating_add(1);
        }
        let _: i64 = conn.del(&index).await.map_err(store_error)?;
        Ok(deleted)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        // PING goes to every primary (redis-rs routes it so, and fails if any node fails): a
        // dead node makes a third of the sessions unusable, so the service is not ready.
        let _: () = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        // A read on this service's own key space, as in standalone mode: it also fails while
        // the cluster reports itself down (CLUSTERDOWN), which PING does not show.
        let _: Option<String> = conn
            .get(self.keys.health_probe())
            .await
            .map_err(store_error)?;
        Ok(())
    }
}
