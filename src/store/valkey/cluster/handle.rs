//! UpdateHandle: the DID index's members (`SMEMBERS`), then one single-key script per
//! session that renames it in place (`cluster_update_handle.lua`: its TTL kept, nothing else
//! changed). Each session changes atomically; a session revoked meanwhile is not brought
//! back (the script writes only data it has just read), and a concurrent refresh keeps the
//! new handle (it rewrites the data as it is when its own script runs).

use super::Shared;
use crate::store::StoreError;
use crate::store::valkey::args::{HandleArgs, ScriptArgs};
use crate::store::valkey::{Operation, observe};
use redis::cluster_async::ClusterConnection;
use std::sync::Arc;

impl Shared {
    pub(super) async fn update_handle(
        self: Arc<Self>,
        mut conn: ClusterConnection,
        did: String,
        handle: String,
    ) -> Result<u32, StoreError> {
        let sids: Vec<String> = self
            .query(
                &mut conn,
                command!("SMEMBERS"),
                redis::cmd("SMEMBERS").arg(self.keys.did(&did)),
            )
            .await?;
        let mut updated = 0u32;
        for sid in sids {
            let mut invocation = self.scripts.update_handle.prepare_invoke();
            invocation.key(self.keys.data(&sid));
            HandleArgs {
                prefix: self.keys.prefix(),
                did: &did,
                handle: &handle,
                sid: &sid,
            }
            .push(&mut invocation);
            let renamed: i64 = observe(
                &self.metrics,
                script!("update_handle"),
                None,
                invocation.invoke_async(&mut conn),
            )
            .await?;
            if renamed == 1 {
                updated = updated.saturating_add(1);
            }
        }
        Ok(updated)
    }
}
