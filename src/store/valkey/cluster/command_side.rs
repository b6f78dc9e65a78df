//! The cluster store's command side, as the invalidation feed checks it: who owns which
//! slots (`CLUSTER SHARDS`, asked on the store's own connection), a client for any node,
//! and the store's failures.

use super::shards::{Node, Owned, Topology};
use crate::store::valkey::identity::Failures;
use crate::store::valkey::link::ClusterLink;
use crate::store::valkey::{ValkeyOptions, client_at};
use redis::RedisResult;
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
        let topology = Topology::read(&mut conn)
            .await
            .map_err(|err| format!("CLUSTER SHARDS failed: {err}"))?;
        if let Some(slot) = topology.uncovered_slot() {
            return Err(format!("slot {slot} has no online primary"));
        }
        topology
            .ownership()
            .ok_or_else(|| "a shard has no single online primary (a failover under way?)".into())
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
