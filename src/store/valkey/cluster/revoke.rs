//! Revocations (access keys first, then the data) and the calls made of them: logout,
//! revoke-in-DID, revoke-others, delete-all, and the listing of a DID's sessions.

use super::{Shared, Step};
use crate::domain::rotation::Presented;
use crate::domain::{Revocation, SessionRecord};
use crate::store::ended;
use crate::store::valkey::Operation;
use crate::store::{ByRefresh, StoreError};
use redis::cluster_async::ClusterConnection;
use std::sync::Arc;
use std::time::Duration;

impl Shared {
    /// Revokes one session: why first (remembered for as long as its data would have
    /// lived), then its access keys, then its data. Returns what was stored (`None`: no
    /// session existed). What `session_json.lua`'s `revoke_session` does, command by command
    /// (the caller takes it out of its DID index).
    pub(super) async fn revoke(
        &self,
        conn: &mut ClusterConnection,
        sid: &str,
        reason: Revocation,
    ) -> Result<Option<Result<SessionRecord, StoreError>>, StoreError> {
        let Some(record) = self.read(conn, sid).await? else {
            return Ok(None);
        };
        self.step(Step::DeleteRead).await;
        // How long the session had: why it ended is remembered that long (below).
        let ttl_ms: i64 = self
            .query(
                conn,
                command!("PTTL"),
                redis::cmd("PTTL").arg(self.keys.data(sid)),
            )
            .await?;
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
        self.remember_end(conn, sid, &record, reason, ttl_ms).await;
        Ok(Some(record))
    }

    /// Remembers why session `sid` ended for `ttl_ms` (what its data had left), once its
    /// keys are gone; as `session_json.lua`'s `remember_end`, never failing the revocation
    /// (an explanation must not stop one, and it has happened by now).
    async fn remember_end(
        &self,
        conn: &mut ClusterConnection,
        sid: &str,
        record: &Result<SessionRecord, StoreError>,
        reason: Revocation,
        ttl_ms: i64,
    ) {
        let Ok(ttl) = u64::try_from(ttl_ms) else {
            return;
        };
        if ttl == 0 {
            return;
        }
        let family = record
            .as_ref()
            .ok()
            .and_then(|r| r.refresh_family.as_deref());
        for id in ended::ids(sid, family) {
            let written = self
                .set_px(
                    conn,
                    self.keys.ended(&id),
                    reason.as_str(),
                    Duration::from_millis(ttl),
                )
                .await;
            if let Err(err) = written {
                tracing::debug!(error = %err, "why a session ended could not be remembered");
            }
        }
    }

    pub(super) async fn delete(
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
        let Some(record) = self.revoke(&mut conn, &sid, Revocation::Logout).await? else {
            return Ok(ByRefresh::NotFound);
        };
        if let Ok(record) = record {
            self.srem(&mut conn, &record.did, &sid).await?;
        }
        Ok(ByRefresh::Found(sid))
    }

    pub(super) async fn ended(
        self: Arc<Self>,
        mut conn: ClusterConnection,
        id: String,
    ) -> Result<Option<Revocation>, StoreError> {
        let label: Option<String> = self
            .query(
                &mut conn,
                command!("GET"),
                redis::cmd("GET").arg(self.keys.ended(&id)),
            )
            .await?;
        Ok(label.as_deref().and_then(Revocation::parse))
    }

    pub(super) async fn list_for_did(
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

    pub(super) async fn revoke_in_did(
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
        self.revoke(&mut conn, &sid, Revocation::User).await?;
        self.srem(&mut conn, &did, &sid).await?;
        Ok(true)
    }

    pub(super) async fn revoke_others(
        self: Arc<Self>,
        mut conn: ClusterConnection,
        presented: Presented,
        grace_ms: i64,
    ) -> Result<ByRefresh<u32>, StoreError> {
        let own = match self.by_refresh(&mut conn, &presented, grace_ms).await? {
            ByRefresh::Found(Ok(own)) => own,
            ByRefresh::Found(Err(_)) | ByRefresh::NotFound => return Ok(ByRefresh::NotFound),
            ByRefresh::Reused { sid, did } => return Ok(ByRefresh::Reused { sid, did }),
            ByRefresh::PastLifetime => return Ok(ByRefresh::PastLifetime),
        };
        let mut revoked = 0u32;
        for other in self.members(&mut conn, &own.did).await? {
            if other == own.sid {
                continue;
            }
            if self
                .revoke(&mut conn, &other, Revocation::Others)
                .await?
                .is_some()
            {
                revoked = revoked.saturating_add(1);
            }
            // As delete-all: exactly the members handled leave the index.
            self.srem(&mut conn, &own.did, &other).await?;
        }
        Ok(ByRefresh::Found(revoked))
    }

    pub(super) async fn delete_all_for_did(
        self: Arc<Self>,
        mut conn: ClusterConnection,
        did: String,
        reason: Revocation,
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
            if self.revoke(&mut conn, &sid, reason).await?.is_some() {
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
}
