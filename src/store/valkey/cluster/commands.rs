//! The single-key commands every operation is made of, each timed and traced, and the
//! test hook between steps.

use super::{Shared, Step};
use crate::domain::Lifetimes;
use crate::domain::SessionRecord;
use crate::store::StoreError;
use crate::store::valkey::{Operation, millis, observe, parse_record};
use redis::cluster_async::ClusterConnection;

impl Shared {
    pub(super) async fn step(&self, step: Step) {
        if let Some(hook) = &self.hook {
            hook(step).await;
        }
    }

    /// One command as one measured, traced round trip.
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        conn: &mut ClusterConnection,
        operation: &Operation,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        observe(&self.metrics, operation, None, cmd.query_async(conn)).await
    }

    /// Adds `sid` to the DID index and extends the index's TTL, in one single-key script.
    pub(super) async fn index(
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
    pub(super) async fn read(
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

    pub(super) async fn del(
        &self,
        conn: &mut ClusterConnection,
        key: String,
    ) -> Result<(), StoreError> {
        let _: i64 = self
            .query(conn, command!("DEL"), redis::cmd("DEL").arg(key))
            .await?;
        Ok(())
    }

    pub(super) async fn set_px(
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

    /// The DID index's members.
    pub(super) async fn members(
        &self,
        conn: &mut ClusterConnection,
        did: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(self.keys.did(did));
        self.query(conn, command!("SMEMBERS"), &smembers).await
    }

    pub(super) async fn srem(
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
}
