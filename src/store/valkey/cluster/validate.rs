//! ValidateAccessToken: `GET` the access key, then one single-key script reading the data
//! and the node's clock.

use super::Shared;
use crate::store::valkey::Operation;
use crate::store::{Found, StoreError};
use redis::cluster_async::ClusterConnection;
use std::sync::Arc;

impl Shared {
    pub(super) async fn find_by_access_hash(
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
}
