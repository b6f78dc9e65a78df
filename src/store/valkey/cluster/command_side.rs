//! The cluster store's command side, as the invalidation feed checks it: who owns which
//! slots (`CLUSTER SHARDS`, asked on the store's own connection), which node a slot's
//! commands reach (`CLUSTER MYID` routed as the store routes that slot), a client for any
//! node, and the store's failures.
//!
//! Two views must agree before the cache serves: the topology the feed subscribes to, and
//! the slot map the store's commands follow. A node id (unlike an address) names one
//! node wherever it is reached from.

use super::shards::{Node, Owned, Topology};
use crate::store::valkey::identity::Failures;
use crate::store::valkey::link::ClusterLink;
use crate::store::valkey::{ValkeyOptions, client_at};
use redis::RedisResult;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use std::sync::Arc;

/// See the module docs.
#[derive(Clone)]
pub struct ClusterCommandSide {
    pub(super) link: Arc<ClusterLink>,
    pub(super) failures: Arc<Failures>,
    pub(super) options: Arc<ValkeyOptions>,
}

impl ClusterCommandSide {
    /// Who owns which slots now, as the node the store's connection asks says; `Err` with
    /// why when it cannot say or a shard has no single online primary.
    pub(crate) async fn ownership(&self) -> Result<Vec<Owned>, String> {
        let mut conn = self.link.get().await.map_err(|err| err.to_string())?;
        let answer: redis::Value = redis::cmd("CLUSTER")
            .arg("SHARDS")
            .query_async(&mut conn)
            .await
            .map_err(|err| format!("CLUSTER SHARDS failed: {err}"))?;
        let topology = Topology::parse(&answer).map_err(|err| err.to_string())?;
        if let Some(slot) = topology.uncovered_slot() {
            return Err(format!("slot {slot} has no online primary"));
        }
        topology
            .ownership()
            .ok_or_else(|| "a shard has no single online primary (a failover under way?)".into())
    }

    /// The id of the node the store's commands for `slot` reach first.
    pub(crate) async fn node_for(&self, slot: u16) -> RedisResult<String> {
        let mut conn = self
            .link
            .get()
            .await
            .map_err(|err| redis::RedisError::from(std::io::Error::other(err.to_string())))?;
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
            slot,
            SlotAddr::Master,
        )));
        let mut myid = redis::cmd("CLUSTER");
        myid.arg("MYID");
        let answer = conn.route_command(myid, routing).await?;
        Ok(redis::from_redis_value(answer)?)
    }

    /// A RESP3 client for `node`, with the seeds' credentials and TLS.
    pub(crate) fn client_for(&self, node: &Node) -> RedisResult<redis::Client> {
        client_at(
            &self.options,
            redis::ProtocolVersion::RESP3,
            Some((&node.host, node.port)),
        )
    }

    /// The store's command failures.
    pub fn failures(&self) -> &Failures {
        &self.failures
    }
}
