//! The Valkey Cluster store: the same key layout, spread over the cluster's slots.
//!
//! A session's three keys (data, access, DID index) hash to different slots, so no script
//! may touch them together. Each operation is a sequence of single-key commands (and
//! single-key scripts) in an order chosen so that no interleaving of concurrent calls, and
//! no call stopped between two steps, leaves (a) a session that validates but is missing
//! from its DID index, (b) a key without a TTL, or (c) a valid access token for a deleted
//! session. The rules that make it so:
//!
//! - **A sid enters its DID index only after its data exists** (create writes data, then
//!   the index, then the access key; refresh extends the index only after reading the
//!   data). So an index member without data is a session that expired or was deleted,
//!   never one being created, and pruning it is always right.
//! - **Nothing removes another call's index member except on that evidence**: delete-all
//!   `SREM`s exactly the members it revoked instead of deleting the index, so a session
//!   created meanwhile stays listed.
//! - **Every write carries its TTL in the same command** (`SET … PX`, and a single-key
//!   script that adds to the index and extends its TTL at once).
//! - **Revocation removes the access key before the data**, and validation needs both
//!   plus a matching hash, so a token of a deleted session never validates.
//! - **The cap is enforced after the new session is whole**: create lists the DID index
//!   only after its own session is indexed, so of concurrent creates the last to list sees
//!   every session of the DID, and each revokes the same least recently refreshed ones (one
//!   order: `refreshedAt`, then the sid); after quiescence no more than the cap are live.
//! - **A refresh token's role is decided where it rotates**: in the single-key script on
//!   the data (with the new access token), so concurrent refreshes with one cookie
//!   converge on one successor and no interleaving leaves two; the family key
//!   (`refresh:<digest>` → sid) is written before the data, like the index, and finds a
//!   session only through data that names the token. Checks before the script (on the
//!   data node's clock) only save work.
//! - **A call runs to its end even when its caller goes away** (client cancel, request
//!   timeout): each operation runs as its own task, so a cancellation cannot stop it
//!   between two steps. Only a crash of the process can; what it leaves then still
//!   expires on its own and never validates.
//!
//! Round trips: validate 2 (`GET` access, then a script reading data and `TIME`); create 3
//! plus 1 `SRANDMEMBER` and 1 `EXISTS` per sampled member (and 1 `SREM` per expired one);
//! with a cap 4 (the last an `SCARD`) while the index holds no more than the cap, else
//! also 1 `SMEMBERS`, 1 `GET` per member (1 `SREM` per expired one) and a revocation per
//! session revoked; refresh 5 and 1 per token dropped; delete 1 (the read script) and a
//! revocation, which is 3 and 1 per access token; delete-all 1 and a revocation per
//! session; list 1 and 1 per member;
//! revoke-in-DID 5; revoke-others 2 and a revocation per other session (counted with
//! `MONITOR` in `tests/it/cluster.rs`).
//!
//! Expiry is judged on the clock of the node holding the session's data (read with it in
//! one single-key script), not on the clock of whichever replica of the service asks.
//!
//! Health: `CLUSTER SLOTS`, a `PING` to each primary it lists, then a read of this
//! service's own key space; any failing means NOT_SERVING.

use super::args::{CreateArgs, PresentedArgs, RefreshArgs, ScriptArgs};
use super::link::ClusterLink;
use super::{Operation, ValkeyOptions, millis, observe, parse_record, time_ms, ttl_ms};
use crate::domain::Lifetimes;
use crate::domain::rotation::{Candidate, Lookup, Presented};
use crate::domain::{ClientFacts, Role, SessionRecord, log_prefix, sha256_hex};
use crate::observe::metrics::Metrics;
use crate::store::{
    ByRefresh, Created, Found, FoundByHash, KeyLayout, PRUNE_SAMPLE, Refresh, Refreshed,
    SessionStore, StoreError,
};
use opentelemetry::context::FutureExt as _;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A point between two steps of an operation, where a test can hold the operation while
/// others run ([`ValkeyClusterStore::with_step_hook`]), to force the interleavings that
/// real races hit only now and then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Create: the index sample is read, nothing pruned yet.
    CreateSampled,
    /// Create: the data is written, the index not yet.
    CreateDataWritten,
    /// Create: data and index are written, the access key not yet.
    CreateIndexed,
    /// Create with a cap: the session is whole and the DID index listed for the cap,
    /// nothing revoked yet.
    CreateCapListed,
    /// Refresh: the data is read, nothing written yet.
    RefreshRead,
    /// Refresh: the new data is written (and the dropped tokens' keys deleted), the new
    /// access key not yet.
    RefreshDataWritten,
    /// Delete-all: the index is listed, nothing revoked yet.
    DeleteAllListed,
    /// Delete: the data is read, nothing revoked yet.
    DeleteRead,
}

/// A [`Refresh`] the operation's own task can own.
struct OwnedRefresh {
    new_access_hash: String,
    previous_access_hash: Option<String>,
    client: Option<ClientFacts>,
    rotation: Option<Candidate>,
}

/// Called at each [`Step`]; the operation waits for the future it returns.
pub type StepHook = Arc<dyn Fn(Step) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Session storage in a Valkey Cluster.
pub struct ValkeyClusterStore {
    /// Connected on first use, so the service starts while the cluster is down.
    link: ClusterLink,
    shared: Arc<Shared>,
}

/// What every operation's task needs.
struct Shared {
    keys: KeyLayout,
    metrics: Arc<Metrics>,
    scripts: ClusterScripts,
    hook: Option<StepHook>,
}

/// The single-key scripts of cluster mode (`scripts/cluster_*.lua`).
struct ClusterScripts {
    index: redis::Script,
    read: redis::Script,
    create_data: redis::Script,
    refresh_data: redis::Script,
}

impl ClusterScripts {
    fn new() -> Self {
        // The scripts that read or write a session start with the shared prelude (the
        // session rules, their arguments by name, Valkey's clock).
        let with_json = |body: &str| redis::Script::new(&[super::PRELUDE, body].concat());
        Self {
            index: redis::Script::new(include_str!("scripts/cluster_index.lua")),
            read: redis::Script::new(include_str!("scripts/cluster_read.lua")),
            create_data: with_json(include_str!("scripts/cluster_create_data.lua")),
            refresh_data: with_json(include_str!("scripts/cluster_refresh_data.lua")),
        }
    }
}

/// A script's round trip, for its metric label and span.
macro_rules! script {
    ($name:literal) => {
        &Operation {
            span_name: concat!("EVALSHA ", $name),
            command: "EVALSHA",
            script: Some($name),
        }
    };
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

/// The round trip names of the commands this store sends.
macro_rules! command {
    ($name:literal) => {
        &Operation {
            span_name: $name,
            command: $name,
            script: None,
        }
    };
}

impl ValkeyClusterStore {
    /// Prepares a store for the cluster reachable through the seed URLs; connects lazily.
    ///
    /// With `ca_pem`, nodes' certificates are verified against it (the seeds are `rediss://`,
    /// and the nodes they lead to are reached with TLS too).
    pub fn new(options: &ValkeyOptions, metrics: Arc<Metrics>) -> Result<Self, redis::RedisError> {
        let mut builder = ClusterClient::builder(options.urls.clone())
            .connection_timeout(options.connect_timeout)
            .response_timeout(options.command_timeout)
            // A failing call fails fast; the next call or health probe tries again.
            .retries(1);
        if let Some(password) = &options.password {
            builder = builder.password(password.clone());
        }
        if let Some(ca) = &options.ca_pem {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            });
        }
        Ok(Self {
            link: ClusterLink::new(builder.build()?),
            shared: Arc::new(Shared {
                keys: KeyLayout::new(&options.key_prefix),
                metrics,
                scripts: ClusterScripts::new(),
                hook: None,
            }),
        })
    }

    #[cfg(feature = "test-hooks")]
    /// The same store, holding each operation at every [`Step`] until `hook`'s future
    /// completes. For tests that force interleavings; production stores have none.
    #[must_use]
    pub fn with_step_hook(mut self, hook: StepHook) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.hook = Some(hook);
        }
        self
    }

    /// Runs one store operation on the shared connection as its own task, so that it runs
    /// to its end even when the caller stops waiting, and tells the link how it went (the
    /// link replaces a connection on which everything fails).
    async fn on_link<T, F, Fut>(&self, operation: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>, ClusterConnection) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let conn = self.link.get().await?;
        // The caller's trace context goes along, so the CLIENT spans stay its children.
        let task =
            operation(self.shared.clone(), conn).with_context(opentelemetry::Context::current());
        let outcome = match tokio::spawn(task).await {
            Ok(outcome) => outcome,
            Err(stopped) => Err(StoreError::unavailable(stopped)),
        };
        self.link.record(&outcome);
        outcome
    }
}

impl Shared {
    async fn step(&self, step: Step) {
        if let Some(hook) = &self.hook {
            hook(step).await;
        }
    }

    /// One command as one measured, traced round trip.
    async fn query<T: redis::FromRedisValue>(
        &self,
        conn: &mut ClusterConnection,
        operation: &Operation,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        observe(&self.metrics, operation, None, cmd.query_async(conn)).await
    }

    /// Adds `sid` to the DID index and extends the index's TTL, in one single-key script.
    async fn index(
        &self,
        conn: &mut ClusterConnection,
        did: &str,
        sid: &str,
        lifetimes: Lifetimes,
    ) -> Result<(), StoreError> {
        let mut invocation = self.scripts.index.prepare_invoke();
        invocation
            .key(self.keys.did(did))
            .arg(sid)
            .arg(millis(lifetimes.session));
        let operation = &Operation {
            span_name: "EVALSHA index",
            command: "EVALSHA",
            script: Some("index"),
        };
        let _: i64 = observe(
            &self.metrics,
            operation,
            None,
            invocation.invoke_async(conn),
        )
        .await?;
        Ok(())
    }

    /// The stored session under `sid`: `None` when there is none, `Some(Err)` when it
    /// cannot be read.
    async fn read(
        &self,
        conn: &mut ClusterConnection,
        sid: &str,
    ) -> Result<Option<Result<SessionRecord, StoreError>>, StoreError> {
        let raw: Option<Vec<u8>> = self
            .query(
                conn,
                command!("GET"),
                redis::cmd("GET").arg(self.keys.data(sid)),
            )
            .await?;
        Ok(raw.map(|raw| parse_record(sid, &raw)))
    }

    async fn del(&self, conn: &mut ClusterConnection, key: String) -> Result<(), StoreError> {
        let _: i64 = self
            .query(conn, command!("DEL"), redis::cmd("DEL").arg(key))
            .await?;
        Ok(())
    }

    async fn set_px(
        &self,
        conn: &mut ClusterConnection,
        key: String,
        value: &str,
        ttl: std::time::Duration,
    ) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("PX").arg(millis(ttl));
        let _: () = self.query(conn, command!("SET"), &cmd).await?;
        Ok(())
    }

    async fn create(
        self: Arc<Self>,
        mut conn: ClusterConnection,
        record: SessionRecord,
        lifetimes: Lifetimes,
    ) -> Result<Created, StoreError> {
        let index = self.keys.did(&record.did);
        // Without a cap, prune a bounded sample of members whose session is gone (with
        // one, the cap's pass below reads every member and prunes them all). Sound because
        // a sid joins the index only after its data exists (below): a member without data
        // expired or was deleted; it is never one that another create is writing.
        if lifetimes.max_per_did.is_none() {
            self.prune_sample(&mut conn, &index).await?;
        }
        // Data first: unusable on its own (nobody holds the sid or a token yet), and the
        // proof of life that pruning relies on. Stamped on its node's clock.
        let mut invocation = self.scripts.create_data.prepare_invoke();
        invocation.key(self.keys.data(&record.sid));
        CreateArgs {
            prefix: self.keys.prefix(),
            record: &record,
            lifetimes,
        }
        .push(&mut invocation);
        let json: Vec<u8> = observe(
            &self.metrics,
            script!("create_data"),
            None,
            invocation.invoke_async(&mut conn),
        )
        .await?;
        let stored = parse_record(&record.sid, &json)?;
        self.step(Step::CreateDataWritten).await;
        // Then the index: listed before any token can validate.
        self.index(&mut conn, &record.did, &record.sid, lifetimes)
            .await?;
        self.step(Step::CreateIndexed).await;
        // The refresh token's family key, before the caller can hold the token.
        if let Some(family) = &record.refresh_family {
            self.set_px(
                &mut conn,
                self.keys.refresh(family),
                &record.sid,
                lifetimes.session,
            )
            .await?;
        }
        self.set_px(
            &mut conn,
            self.keys.access(&record.access_token_hash),
            &record.sid,
            lifetimes.access_token,
        )
        .await?;
        let revoked = match lifetimes.max_per_did {
            Some(cap) => self.cap(&mut conn, &record.did, cap.get()).await?,
            None => 0,
        };
        Ok(Created {
            record: stored,
            revoked,
        })
    }

    /// Removes from a DID index up to [`PRUNE_SAMPLE`] random members whose data is gone.
    async fn prune_sample(
        &self,
        conn: &mut ClusterConnection,
        index: &str,
    ) -> Result<(), StoreError> {
        let mut sample_cmd = redis::cmd("SRANDMEMBER");
        sample_cmd.arg(index).arg(PRUNE_SAMPLE);
        let sample: Vec<String> = self
            .query(conn, command!("SRANDMEMBER"), &sample_cmd)
            .await?;
        self.step(Step::CreateSampled).await;
        for member in sample {
            let mut exists = redis::cmd("EXISTS");
            exists.arg(self.keys.data(&member));
            let exists: bool = self.query(conn, command!("EXISTS"), &exists).await?;
            if !exists {
                let mut srem = redis::cmd("SREM");
                srem.arg(index).arg(&member);
                let _: i64 = self.query(conn, command!("SREM"), &srem).await?;
            }
        }
        Ok(())
    }

    /// The cap, after a create: when the DID index holds more than `cap` members, reads
    /// every one (pruning those whose data is gone) and revokes the least recently
    /// refreshed live sessions beyond `cap`. (At most `cap` members: at most `cap` live
    /// sessions, one `SCARD` and nothing else; the index then stays within the cap plus
    /// concurrent logins, so no sampled pruning is needed.)
    /// Every create of the DID lists the index after indexing its own session, so the last
    /// of concurrent creates to list sees them all, and all of them rank sessions in one
    /// order (`refreshedAt`, else `createdAt`; then the sid; an unreadable record first):
    /// they revoke the same oldest ones, never a session another one keeps for the cap.
    /// The order of `session_json.lua`'s `cap_order`, which `create.lua` sorts by.
    /// Returns how many this call revoked.
    async fn cap(
        &self,
        conn: &mut ClusterConnection,
        did: &str,
        cap: u32,
    ) -> Result<u32, StoreError> {
        let keep = usize::try_from(cap).unwrap_or(usize::MAX);
        let mut scard = redis::cmd("SCARD");
        scard.arg(self.keys.did(did));
        let indexed: usize = self.query(conn, command!("SCARD"), &scard).await?;
        if indexed <= keep {
            return Ok(0);
        }
        let members = self.members(conn, did).await?;
        self.step(Step::CreateCapListed).await;
        let mut live: Vec<(i64, String)> = Vec::with_capacity(members.len());
        for member in members {
            match self.read(conn, &member).await? {
                Some(Ok(record)) if record.did == did => {
                    live.push((record.last_refreshed(), member));
                }
                // Gone: expired or revoked (a member is added only after its data exists);
                // or another DID's (a foreign writer): it leaves this index, nothing else.
                None | Some(Ok(_)) => self.srem(conn, did, &member).await?,
                // Unreadable: never usable again, so it goes first.
                Some(Err(_)) => live.push((i64::MIN, member)),
            }
        }
        if live.len() <= keep {
            return Ok(0);
        }
        live.sort();
        let excess = live.len() - keep;
        let mut revoked = 0u32;
        for (_, sid) in live.into_iter().take(excess) {
            if self.revoke(conn, &sid).await?.is_some() {
                revoked = revoked.saturating_add(1);
            }
            // As delete-all: exactly the members handled leave the index.
            self.srem(conn, did, &sid).await?;
        }
        Ok(revoked)
    }

    async fn find_by_access_hash(
        self: Arc<Self>,
        mut conn: ClusterConnection,
        access_hash: String,
    ) -> Result<Option<Found>, StoreError> {
        let sid: Option<String> = self
            .query(
                &mut conn,
                command!("GET"),
                redis::cmd("GET").arg(self.keys.access(&access_hash)),
            )
            .await?;
        let Some(sid) = sid else {
            return Ok(None);
        };
        // The data and the clock of the node that holds it, in one single-key script.
        let Some((record, now_ms, keys_ttl_ms)) = self.read_on_clock(&mut conn, &sid).await? else {
            return Ok(None);
        };
        Ok(Some(Found {
            record: record?,
            now_ms,
            keys_ttl_ms,
        }))
    }

    async fn refresh(
        self: Arc<Self>,
        mut conn: ClusterConnection,
        presented: Presented,
        refresh: OwnedRefresh,
        lifetimes: Lifetimes,
    ) -> Result<ByRefresh<Refreshed>, StoreError> {
        let Some(sid) = self.find_sid(&mut conn, &presented).await? else {
            return Ok(ByRefresh::NotFound);
        };
        let Some((record, now, _)) = self.read_on_clock(&mut conn, &sid).await? else {
            return Ok(ByRefresh::NotFound);
        };
        // An unreadable session is refused before anything is written.
        let record = record?;
        // A first look at the token's role, on the data node's clock (the script decides
        // again, atomically): an old token revokes the session without writing first.
        match record.role_of(&presented, now, lifetimes.tokens.grace_ms()) {
            Role::Foreign => return Ok(ByRefresh::NotFound),
            Role::Reuse => return self.revoke_reused(&mut conn, &record).await,
            Role::Current | Role::Grace => {}
        }
        self.step(Step::RefreshRead).await;
        // The index first, so that it outlives the data the refresh is about to extend
        // (stopping in between leaves an index that lives longer, never shorter). SADD
        // heals an index that lost this member; the data existed a moment ago, so this is
        // not a member pruning could take for one being created.
        self.index(&mut conn, &record.did, &sid, lifetimes).await?;
        // The family key too, for the same reason: the family the session has, or the one
        // a session id moves to if this token is still its current one (if the script
        // then decides otherwise, that key names a family no token of the session has: it
        // finds nothing and expires).
        let family = record.refresh_family.clone().or_else(|| {
            refresh
                .rotation
                .as_ref()
                .map(|candidate| candidate.family_hash.clone())
        });
        if let Some(family) = &family {
            self.set_px(
                &mut conn,
                self.keys.refresh(family),
                &sid,
                lifetimes.session,
            )
            .await?;
        }
        // Only while the session exists, so a concurrent delete is never undone; stamped
        // on the data node's clock; the token list is computed there from the data as it
        // is at that moment, so concurrent refreshes keep each other's tokens. The tokens it
        // drops (the tab's previous one, expired ones, the oldest past the cap) stop
        // validating with that write: the data no longer names them.
        let mut invocation = self.scripts.refresh_data.prepare_invoke();
        invocation.key(self.keys.data(&sid));
        RefreshArgs {
            presented: PresentedArgs::new(&self.keys, &presented, lifetimes.tokens.grace_ms())
                .found(&sid),
            new_hash: &refresh.new_access_hash,
            lifetimes,
            client: refresh.client.as_ref(),
            previous_hash: refresh.previous_access_hash.as_deref(),
            candidate: refresh.rotation.as_ref(),
        }
        .push(&mut invocation);
        let written: Option<Vec<Vec<u8>>> = observe(
            &self.metrics,
            script!("refresh_data"),
            None,
            invocation.invoke_async(&mut conn),
        )
        .await?;
        let Some(written) = written else {
            return Ok(ByRefresh::NotFound);
        };
        let (json, access_ttl_ms, removed) = match written.as_slice() {
            [status, json, ttl, removed @ ..] if status == b"ok" => {
                let ttl = std::str::from_utf8(ttl)
                    .ok()
                    .and_then(|ttl| ttl.parse::<u64>().ok())
                    .ok_or_else(|| {
                        StoreError::Protocol(
                            "refresh_data answered a TTL that is not a number".into(),
                        )
                    })?;
                (json, ttl, removed)
            }
            [status] if status == b"expired" => {
                // Past its absolute deadline: the session ends now, every token with it.
                self.revoke(&mut conn, &sid).await?;
                self.srem(&mut conn, &record.did, &sid).await?;
                return Ok(ByRefresh::PastLifetime);
            }
            [status] if status == b"reuse" => {
                // Rotated past this token since it was read: an old token after all.
                return self.revoke_reused(&mut conn, &record).await;
            }
            [status] if status == b"corrupt" => {
                // Replaced by something unreadable since it was read: nothing was written.
                return Err(StoreError::CorruptSession {
                    key_prefix: log_prefix(&sha256_hex(&sid)).to_owned(),
                    reason: "unreadable when rewritten".to_owned(),
                });
            }
            _ => {
                return Err(StoreError::Protocol(
                    "refresh_data answered an unexpected shape".into(),
                ));
            }
        };
        let record = parse_record(&sid, json)?;
        // The dropped tokens' keys go now rather than at their TTL.
        for hash in removed {
            self.del(&mut conn, self.keys.access(&String::from_utf8_lossy(hash)))
                .await?;
        }
        self.step(Step::RefreshDataWritten).await;
        // The token lives no longer than the session's deadline (the script said how long).
        self.set_px(
            &mut conn,
            self.keys.access(&refresh.new_access_hash),
            &sid,
            std::time::Duration::from_millis(access_ttl_ms),
        )
        .await?;
        // Still listed? A delete may have removed the data since, or a later refresh
        // dropped this token past the cap (deleting a key that was not written yet); then
        // the key just written must not stay behind.
        let still_listed = self.read(&mut conn, &sid).await?.is_some_and(|now| {
            now.is_ok_and(|now| {
                now.live_tokens()
                    .any(|(hash, _)| hash == refresh.new_access_hash)
            })
        });
        if !still_listed {
            self.del(&mut conn, self.keys.access(&refresh.new_access_hash))
                .await?;
        }
        Ok(ByRefresh::Found(Refreshed { record }))
    }

    /// The stored session under `sid` (as [`Shared::read`]) and the clock of the node that
    /// holds it, in one single-key script.
    async fn read_on_clock(
        &self,
        conn: &mut ClusterConnection,
        sid: &str,
    ) -> Result<Option<(Result<SessionRecord, StoreError>, i64, Option<i64>)>, StoreError> {
        let mut invocation = self.scripts.read.prepare_invoke();
        invocation.key(self.keys.data(sid));
        let found: Option<(Vec<u8>, String, String, i64)> = observe(
            &self.metrics,
            script!("read"),
            None,
            invocation.invoke_async(conn),
        )
        .await?;
        let Some((raw, seconds, micros, ttl)) = found else {
            return Ok(None);
        };
        Ok(Some((
            parse_record(sid, &raw),
            time_ms(&seconds, &micros)?,
            ttl_ms(ttl),
        )))
    }

    /// The sid a presented refresh token names: itself, or its family key's value. As
    /// `session_json.lua`'s `find_sid`.
    async fn find_sid(
        &self,
        conn: &mut ClusterConnection,
        presented: &Presented,
    ) -> Result<Option<String>, StoreError> {
        match &presented.lookup {
            Lookup::Sid(sid) => Ok(Some(sid.clone())),
            Lookup::Family(family) => {
                self.query(
                    conn,
                    command!("GET"),
                    redis::cmd("GET").arg(self.keys.refresh(family)),
                )
                .await
            }
        }
    }

    /// Revokes a session whose old refresh token was presented (reuse).
    async fn revoke_reused<T>(
        &self,
        conn: &mut ClusterConnection,
        record: &SessionRecord,
    ) -> Result<ByRefresh<T>, StoreError> {
        self.revoke(conn, &record.sid).await?;
        self.srem(conn, &record.did, &record.sid).await?;
        Ok(ByRefresh::Reused {
            sid: record.sid.clone(),
        })
    }

    /// The live session a presented refresh token names (as for refresh, but judged here,
    /// not in a script: delete and revoke-others only remove). Reuse revokes it.
    async fn by_refresh(
        &self,
        conn: &mut ClusterConnection,
        presented: &Presented,
        grace_ms: i64,
    ) -> Result<ByRefresh<Result<SessionRecord, StoreError>>, StoreError> {
        let Some(sid) = self.find_sid(conn, presented).await? else {
            return Ok(ByRefresh::NotFound);
        };
        let Some((record, now, _)) = self.read_on_clock(conn, &sid).await? else {
            return Ok(ByRefresh::NotFound);
        };
        let Ok(record) = record else {
            // Unreadable: found (a logout still removes it), for a session id only.
            return Ok(match presented.lookup {
                Lookup::Sid(_) => ByRefresh::Found(record),
                Lookup::Family(_) => ByRefresh::NotFound,
            });
        };
        // The grace is judged on the data node's clock, whatever this replica's says.
        Ok(match record.role_of(presented, now, grace_ms) {
            Role::Foreign => ByRefresh::NotFound,
            Role::Reuse => self.revoke_reused(conn, &record).await?,
            Role::Current | Role::Grace => ByRefresh::Found(Ok(record)),
        })
    }

    /// Revokes one session: its access key first, then its data. Returns what was stored
    /// (`None`: no session existed). What `session_json.lua`'s `revoke_session` deletes,
    /// command by command (the caller takes it out of its DID index).
    async fn revoke(
        &self,
        conn: &mut ClusterConnection,
        sid: &str,
    ) -> Result<Option<Result<SessionRecord, StoreError>>, StoreError> {
        let Some(record) = self.read(conn, sid).await? else {
            return Ok(None);
        };
        self.step(Step::DeleteRead).await;
        // Every access token of the session goes, then its data. A corrupt record is
        // removed all the same (its access keys, unknown, expire on their own and never
        // validate without the data).
        if let Ok(record) = &record {
            for (hash, _) in record.live_tokens() {
                self.del(conn, self.keys.access(hash)).await?;
            }
            if let Some(family) = &record.refresh_family {
                self.del(conn, self.keys.refresh(family)).await?;
            }
        }
        self.del(conn, self.keys.data(sid)).await?;
        Ok(Some(record))
    }

    async fn delete(
        self: Arc<Self>,
        mut conn: ClusterConnection,
        presented: Presented,
        grace_ms: i64,
    ) -> Result<ByRefresh<String>, StoreError> {
        let record = match self.by_refresh(&mut conn, &presented, grace_ms).await? {
            ByRefresh::Found(record) => record,
            other => return Ok(other.map_found(|_| String::new())),
        };
        let sid = match &record {
            Ok(record) => record.sid.clone(),
            Err(_) => presented.sid().unwrap_or_default().to_owned(),
        };
        let Some(record) = self.revoke(&mut conn, &sid).await? else {
            return Ok(ByRefresh::NotFound);
        };
        if let Ok(record) = record {
            self.srem(&mut conn, &record.did, &sid).await?;
        }
        Ok(ByRefresh::Found(sid))
    }

    /// The DID index's members.
    async fn members(
        &self,
        conn: &mut ClusterConnection,
        did: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(self.keys.did(did));
        self.query(conn, command!("SMEMBERS"), &smembers).await
    }

    async fn srem(
        &self,
        conn: &mut ClusterConnection,
        did: &str,
        sid: &str,
    ) -> Result<(), StoreError> {
        let mut srem = redis::cmd("SREM");
        srem.arg(self.keys.did(did)).arg(sid);
        let _: i64 = self.query(conn, command!("SREM"), &srem).await?;
        Ok(())
    }

    async fn list_for_did(
        self: Arc<Self>,
        mut conn: ClusterConnection,
        did: String,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut found = Vec::new();
        for sid in self.members(&mut conn, &did).await? {
            if let Some(Ok(record)) = self.read(&mut conn, &sid).await?
                && record.did == did
            {
                found.push(record);
            }
        }
        Ok(found)
    }

    async fn revoke_in_did(
        self: Arc<Self>,
        mut conn: ClusterConnection,
        did: String,
        sid: String,
    ) -> Result<bool, StoreError> {
        let Some(Ok(record)) = self.read(&mut conn, &sid).await? else {
            return Ok(false);
        };
        if record.did != did {
            return Ok(false);
        }
        self.revoke(&mut conn, &sid).await?;
        self.srem(&mut conn, &did, &sid).await?;
        Ok(true)
    }

    async fn revoke_others(
        self: Arc<Self>,
        mut conn: ClusterConnection,
        presented: Presented,
        grace_ms: i64,
    ) -> Result<ByRefresh<u32>, StoreError> {
        let own = match self.by_refresh(&mut conn, &presented, grace_ms).await? {
            ByRefresh::Found(Ok(own)) => own,
            ByRefresh::Found(Err(_)) | ByRefresh::NotFound => return Ok(ByRefresh::NotFound),
            ByRefresh::Reused { sid } => return Ok(ByRefresh::Reused { sid }),
            ByRefresh::PastLifetime => return Ok(ByRefresh::PastLifetime),
        };
        let mut revoked = 0u32;
        for other in self.members(&mut conn, &own.did).await? {
            if other == own.sid {
                continue;
            }
            if self.revoke(&mut conn, &other).await?.is_some() {
                revoked = revoked.saturating_add(1);
            }
            // As delete-all: exactly the members handled leave the index.
            self.srem(&mut conn, &own.did, &other).await?;
        }
        Ok(ByRefresh::Found(revoked))
    }

    async fn delete_all_for_did(
        self: Arc<Self>,
        mut conn: ClusterConnection,
        did: String,
    ) -> Result<u32, StoreError> {
        let index = self.keys.did(&did);
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(&index);
        let members: Vec<String> = self
            .query(&mut conn, command!("SMEMBERS"), &smembers)
            .await?;
        self.step(Step::DeleteAllListed).await;
        let mut deleted = 0u32;
        for sid in members {
            if self.revoke(&mut conn, &sid).await?.is_some() {
                deleted = deleted.saturating_add(1);
            }
            // Exactly the members handled here leave the index (not the whole key): a
            // session created meanwhile stays listed for the next takedown to find.
            let mut srem = redis::cmd("SREM");
            srem.arg(&index).arg(&sid);
            let _: i64 = self.query(&mut conn, command!("SREM"), &srem).await?;
        }
        Ok(deleted)
    }

    async fn ping(self: Arc<Self>, mut conn: ClusterConnection) -> Result<(), StoreError> {
        // A PING to each primary the cluster lists, by address: a dead node makes its share
        // of the sessions unusable, so the service is not ready. (Not one PING routed to
        // all primaries: redis-rs skips nodes it has no connection to, and answers OK.)
        let slots: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .map_err(super::store_error)?;
        for (host, port) in primaries(&slots)? {
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
            conn.route_command(redis::cmd("PING"), routing)
                .await
                .map_err(super::store_error)?;
        }
        // A read on this service's own key space, as in standalone mode: it also fails while
        // the cluster reports itself down (CLUSTERDOWN), which PING does not show.
        let _: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.keys.health_probe())
            .query_async(&mut conn)
            .await
            .map_err(super::store_error)?;
        Ok(())
    }
}

impl SessionStore for ValkeyClusterStore {
    async fn create(
        &self,
        record: &SessionRecord,
        lifetimes: Lifetimes,
    ) -> Result<Created, StoreError> {
        let record = record.clone();
        self.on_link(|shared, conn| shared.create(conn, record, lifetimes))
            .await
    }

    async fn find_by_access_hash(&self, access_hash: &str) -> Result<Option<Found>, StoreError> {
        let access_hash = access_hash.to_owned();
        self.on_link(|shared, conn| shared.find_by_access_hash(conn, access_hash))
            .await
    }

    async fn find_by_access_hashes(
        &self,
        access_hashes: &[String],
    ) -> Result<Vec<FoundByHash>, StoreError> {
        let access_hashes = access_hashes.to_vec();
        self.on_link(|shared, conn| async move {
            // Every lookup at once: the cluster connection pipelines the concurrent commands
            // bound for one node on its connection to that node.
            let lookups = access_hashes
                .into_iter()
                .map(|hash| shared.clone().find_by_access_hash(conn.clone(), hash));
            crate::store::batch_of(futures_util::future::join_all(lookups).await)
        })
        .await
    }

    async fn refresh(
        &self,
        presented: &Presented,
        refresh: &Refresh<'_>,
        lifetimes: Lifetimes,
    ) -> Result<ByRefresh<Refreshed>, StoreError> {
        let presented = presented.clone();
        let refresh = OwnedRefresh {
            new_access_hash: refresh.new_access_hash.to_owned(),
            previous_access_hash: refresh.previous_access_hash.map(str::to_owned),
            client: refresh.client.cloned(),
            rotation: refresh.rotation.cloned(),
        };
        self.on_link(|shared, conn| shared.refresh(conn, presented, refresh, lifetimes))
            .await
    }

    async fn list_for_did(&self, did: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let did = did.to_owned();
        self.on_link(|shared, conn| shared.list_for_did(conn, did))
            .await
    }

    async fn revoke_in_did(&self, did: &str, sid: &str) -> Result<bool, StoreError> {
        let (did, sid) = (did.to_owned(), sid.to_owned());
        self.on_link(|shared, conn| shared.revoke_in_did(conn, did, sid))
            .await
    }

    async fn revoke_others(
        &self,
        presented: &Presented,
        grace: Duration,
    ) -> Result<ByRefresh<u32>, StoreError> {
        let presented = presented.clone();
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        self.on_link(|shared, conn| shared.revoke_others(conn, presented, grace_ms))
            .await
    }

    async fn delete(
        &self,
        presented: &Presented,
        grace: Duration,
    ) -> Result<ByRefresh<String>, StoreError> {
        let presented = presented.clone();
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        self.on_link(|shared, conn| shared.delete(conn, presented, grace_ms))
            .await
    }

    async fn delete_all_for_did(&self, did: &str) -> Result<u32, StoreError> {
        let did = did.to_owned();
        self.on_link(|shared, conn| shared.delete_all_for_did(conn, did))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.on_link(|shared, conn| shared.ping(conn)).await
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
