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
//! revocation, which is 5 and 1 per access token (its `PTTL` and the `SET` of why it ended
//! included; 1 more for a rotated session's family); delete-all 1 and a revocation per
//! session; list 1 and 1 per member; revoke-in-DID 7; revoke-others 2 and a revocation
//! per other session; update-handle 1 and 1 per member (counted with `MONITOR` in
//! `tests/it/cluster.rs`).
//!
//! Expiry is judged on the clock of the node holding the session's data (read with it in
//! one single-key script), not on the clock of whichever replica of the service asks.
//!
//! Health (`health.rs`): `CLUSTER SHARDS` (`shards.rs`), every slot owned by a healthy
//! primary, a `PING` to each owner, then a read of this service's own key space; any
//! failing means NOT_SERVING.

use super::ValkeyOptions;
use super::identity::Failures;
use super::link::ClusterLink;
use crate::domain::Lifetimes;
use crate::domain::rotation::{Candidate, Presented};
use crate::domain::{ClientFacts, Revocation, SessionRecord};
use crate::observe::metrics::Metrics;
use crate::store::{
    ByRefresh, Created, Found, FoundByHash, KeyLayout, Refresh, Refreshed, SessionStore, StoreError,
};
pub use command_side::ClusterCommandSide;
use opentelemetry::context::FutureExt as _;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use script::ClusterScript;
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
    link: Arc<ClusterLink>,
    shared: Arc<Shared>,
    /// Every failed call, after which the topology may have moved: the validation cache's
    /// feed re-checks at once (see [`ClusterCommandSide`]).
    failures: Arc<Failures>,
    /// For the feed's clients of single nodes.
    options: Arc<ValkeyOptions>,
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
    index: ClusterScript,
    read: ClusterScript,
    create_data: ClusterScript,
    refresh_data: ClusterScript,
    update_handle: ClusterScript,
}

impl ClusterScripts {
    fn new() -> Self {
        // The scripts that read or write a session start with the shared prelude (the
        // session rules, their arguments by name, Valkey's clock).
        let bare = |body: &str| ClusterScript::new(body.to_owned());
        let with_json = |body: &str| ClusterScript::new([super::PRELUDE, body].concat());
        Self {
            index: bare(include_str!("../scripts/cluster_index.lua")),
            read: bare(include_str!("../scripts/cluster_read.lua")),
            create_data: with_json(include_str!("../scripts/cluster_create_data.lua")),
            refresh_data: with_json(include_str!("../scripts/cluster_refresh_data.lua")),
            update_handle: with_json(include_str!("../scripts/cluster_update_handle.lua")),
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

mod command_side;
mod commands;
mod create;
mod handle;
mod health;
mod refresh;
mod revoke;
mod script;
pub(crate) mod shards;
mod validate;

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
            link: Arc::new(ClusterLink::new(builder.build()?)),
            failures: Arc::default(),
            options: Arc::new(options.clone()),
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
        if matches!(outcome, Err(StoreError::Unavailable(_))) {
            self.failures.raise();
        }
        outcome
    }

    /// The command side as the validation cache's feed checks it.
    pub fn command_side(&self) -> ClusterCommandSide {
        ClusterCommandSide {
            link: self.link.clone(),
            failures: self.failures.clone(),
            options: self.options.clone(),
        }
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

    async fn delete_all_for_did(&self, did: &str, reason: Revocation) -> Result<u32, StoreError> {
        let did = did.to_owned();
        self.on_link(|shared, conn| shared.delete_all_for_did(conn, did, reason))
            .await
    }

    async fn ended(&self, presented: &Presented) -> Result<Option<Revocation>, StoreError> {
        let id = crate::store::ended::presented_id(presented);
        self.on_link(|shared, conn| shared.ended(conn, id)).await
    }

    async fn update_handle(&self, did: &str, handle: &str) -> Result<u32, StoreError> {
        let (did, handle) = (did.to_owned(), handle.to_owned());
        self.on_link(|shared, conn| shared.update_handle(conn, did, handle))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.on_link(|shared, conn| shared.ping(conn)).await
    }
}
