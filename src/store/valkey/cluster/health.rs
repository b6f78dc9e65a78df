//! The health check: every primary that owns slots answers, every slot has a healthy
//! owner, and this service's own key space can be read.

use super::Shared;
use super::shards::Topology;
use crate::store::StoreError;
use crate::store::valkey::store_error;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use std::sync::Arc;

impl Shared {
    pub(super) async fn ping(
        self: Arc<Self>,
        mut conn: ClusterConnection,
    ) -> Result<(), StoreError> {
        let topology = Topology::read(&mut conn).await?;
        // A slot no healthy primary owns: its sessions can be neither read nor written.
        if let Some(slot) = topology.uncovered_slot() {
            return Err(StoreError::unavailable(format!(
                "slot {slot} has no healthy primary (CLUSTER SHARDS)"
            )));
        }
        // A PING to each owner, by address: a dead node makes its share of the sessions
        // unusable, so the service is not ready. (Not one PING routed to all primaries:
        // redis-rs skips nodes it has no connection to, and answers OK.)
        for owner in topology.owners() {
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: owner.host.clone(),
                port: owner.port,
            });
            conn.route_command(redis::cmd("PING"), routing)
                .await
                .map_err(store_error)?;
        }
        // A read on this service's own key space, as in standalone mode: it also fails while
        // the cluster reports itself down (CLUSTERDOWN), which PING does not show.
        let _: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.keys.health_probe())
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}
