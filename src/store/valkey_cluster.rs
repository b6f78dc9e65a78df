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
//! - **Refresh** (7–10): `GET data`, `DEL` the old access key (revoked first), `SET data …
//!   XX GET` (only if the session still exists: a concurrent delete wins; it returns the
//!   record it replaced), `DEL` that record's access key if a concurrent refresh wrote it,
//!   the new access key, `GET data` again (and `DEL` the new key if a later refresh has
//!   replaced it), then the index. Concurrent refreshes leave exactly one access key: the
//!   winner's.
//! - **Delete** (4): `GET data`, `DEL` its access key, `DEL` data, `SREM` from the index.
//! - **DeleteAll** (1 + 3 per session + 1): `SMEMBERS`, then per session as in Delete,
//!   then `DEL` the index.
//!
//! Health: `CLUSTER SLOTS`, a `PING` to each primary it lists, then a read of this
//! service's own key space; any failing means NOT_SERVING.

use super::cluster_link::ClusterLink;
use super::valkey::parse_record;
use super::{KeyLayout, Lifetimes, PRUNE_SAMPLE, SessionStore, StoreError};
use crate::session::SessionRecord;
use redis::AsyncCommands;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use std::future::Future;
use std::time::Duration;

/// Session storage in a Valkey Cluster.
pub struct ValkeyClusterStore {
    /// Connected on first use, so the service starts while the cluster is down.
    link: ClusterLink,
    keys: KeyLayout,
}

fn store_error(err: redis::RedisError) -> StoreError {
    StoreError::Unavailable(err)
}

/// The primaries' addresses in a `CLUSTER SLOTS` answer: each entry is `[first slot, last
/// slot, [host, port, id, …] of the primary, replicas…]`.
fn primaries(slots: &redis::Value) -> Result<Vec<(String, u16)>, StoreError> {
    use redis::Value;
    let malformed = || StoreError::Protocol("unexpected CLUSTER SLOTS answer".to_owned());
    let Value::Array(ranges) = slots else {
        return Err(malformed());
    };
    let mut found = Vec::new();
    for range in ranges {
        let Value::Array(range) = range else {
            return Err(malformed());
        };
        let Some(Value::Array(primary)) = range.get(2) else {
            return Err(malformed());
        };
        let host = match primary.first() {
            Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
            Some(Value::SimpleString(host)) => host.clone(),
            _ => return Err(malformed()),
        };
        let port = match primary.get(1) {
            Some(Value::Int(port)) => u16::try_from(*port).map_err(|_| malformed())?,
            _ => return Err(malformed()),
        };
        if !found.contains(&(host.clone(), port)) {
            found.push((host, port));
        }
    }
    Ok(found)
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
            link: ClusterLink::new(builder.build()?),
            keys: KeyLayout::new(key_prefix),
        })
    }

    /// Runs one store operation on the shared connection and tells the link how it went
    /// (the link replaces a connection on which everything fails).
    async fn on_link<T, F, Fut>(&self, operation: F) -> Result<T, StoreError>
    where
        F: FnOnce(ClusterConnection) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let conn = self.link.get().await?;
        let outcome = operation(conn).await;
        self.link.record(&outcome);
        outcome
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
        self.on_link(|mut conn| async move {
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
        })
        .await
    }

    async fn find_by_access_hash(
        &self,
        access_hash: &str,
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.on_link(|mut conn| async move {
            let sid: Option<String> = conn
                .get(self.keys.access(access_hash))
                .await
                .map_err(store_error)?;
            let Some(sid) = sid else {
                return Ok(None);
            };
            self.read(&mut conn, &sid).await?.transpose()
        })
        .await
    }

    async fn refresh(
        &self,
        sid: &str,
        new_access_hash: &str,
        access_expires_at_ms: i64,
        lifetimes: Lifetimes,
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.on_link(|mut conn| async move {
            let Some(record) = self.read(&mut conn, sid).await? else {
                return Ok(None);
            };
            let mut record = record?;
            let read_hash =
                std::mem::replace(&mut record.access_token_hash, new_access_hash.to_owned());
            // Revoke the old token first: whatever happens next, it no longer validates.
            let _: i64 = conn
                .del(self.keys.access(&read_hash))
                .await
                .map_err(store_error)?;
            record.access_token_expires_at = access_expires_at_ms;
            // XX: only while the session exists, so a concurrent delete is never undone.
            // GET: the record this write replaced, to clean up after a concurrent refresh.
            let replaced: Option<String> = redis::cmd("SET")
                .arg(self.keys.data(sid))
                .arg(record.to_json())
                .arg("PX")
                .arg(millis(lifetimes.session))
                .arg("XX")
                .arg("GET")
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            let Some(replaced) = replaced else {
                return Ok(None);
            };
            // Concurrent refreshes of one session (several tabs) each read, revoke and write;
            // the data's last writer wins. Each one then removes the access key of the
            // refresh it replaced, and its own key if a later one replaced it in turn, so
            // exactly the winner's key remains (no orphan until the access TTL).
            if let Ok(previous) = parse_record(sid, &replaced)
                && previous.access_token_hash != read_hash
                && previous.access_token_hash != new_access_hash
            {
                let _: i64 = conn
                    .del(self.keys.access(&previous.access_token_hash))
                    .await
                    .map_err(store_error)?;
            }
            let _: () = conn
                .pset_ex(
                    self.keys.access(new_access_hash),
                    sid,
                    millis(lifetimes.access_token),
                )
                .await
                .map_err(store_error)?;
            let still_ours = self
                .read(&mut conn, sid)
                .await?
                .is_some_and(|now| now.is_ok_and(|now| now.access_token_hash == new_access_hash));
            if !still_ours {
                let _: i64 = conn
                    .del(self.keys.access(new_access_hash))
                    .await
                    .map_err(store_error)?;
            }
            self.index(&mut conn, &record.did, sid, lifetimes.session)
                .await?;
            Ok(Some(record))
        })
        .await
    }

    async fn delete(&self, sid: &str) -> Result<bool, StoreError> {
        self.on_link(|mut conn| async move {
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
        })
        .await
    }

    async fn delete_all_for_did(&self, did: &str) -> Result<u32, StoreError> {
        self.on_link(|mut conn| async move {
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
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.on_link(|mut conn| async move {
            // A PING to each primary the cluster lists, by address: a dead node makes its share
            // of the sessions unusable, so the service is not ready. (Not one PING routed to
            // all primaries: redis-rs skips nodes it has no connection to, and answers OK.)
            let slots: redis::Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            for (host, port) in primaries(&slots)? {
                let routing =
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                conn.route_command(redis::cmd("PING"), routing)
                    .await
                    .map_err(store_error)?;
            }
            // A read on this service's own key space, as in standalone mode: it also fails while
            // the cluster reports itself down (CLUSTERDOWN), which PING does not show.
            let _: Option<String> = conn
                .get(self.keys.health_probe())
                .await
                .map_err(store_error)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::primaries;
    use redis::Value;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn primaries_are_read_from_cluster_slots_once_each() {
        let slots = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(99),
                node("10.0.0.1", 6379),
                node("10.0.0.9", 6379),
            ]),
            Value::Array(vec![
                Value::Int(100),
                Value::Int(199),
                node("10.0.0.2", 6380),
            ]),
            Value::Array(vec![
                Value::Int(200),
                Value::Int(299),
                node("10.0.0.1", 6379),
            ]),
        ]);
        let found = primaries(&slots).map_err(|e| e.to_string());
        assert_eq!(
            found,
            Ok(vec![
                ("10.0.0.1".to_owned(), 6379),
                ("10.0.0.2".to_owned(), 6380)
            ])
        );
    }

    #[test]
    fn a_malformed_answer_is_an_error_not_an_empty_list() {
        assert!(primaries(&Value::Nil).is_err());
        assert!(primaries(&Value::Array(vec![Value::Array(vec![Value::Int(0)])])).is_err());
        assert!(
            primaries(&Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(1),
                node("h", 70_000),
            ])]))
            .is_err()
        );
    }
}
