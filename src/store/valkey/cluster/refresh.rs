//! RefreshSession and every call that names a session by its refresh token: finding the
//! sid (directly or through the family key), the role judged on the data node's clock, and
//! the refresh itself around `cluster_refresh_data.lua`.

use super::{OwnedRefresh, Shared, Step};
use crate::domain::Lifetimes;
use crate::domain::rotation::{Lookup, Presented};
use crate::domain::{Revocation, Role, SessionRecord, log_prefix, sha256_hex};
use crate::store::valkey::args::{PresentedArgs, RefreshArgs, ScriptArgs};
use crate::store::valkey::{Operation, observe, parse_record, time_ms, ttl_ms};
use crate::store::{ByRefresh, Refreshed, StoreError};
use redis::cluster_async::ClusterConnection;
use std::sync::Arc;

impl Shared {
    pub(super) async fn refresh(
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
                self.revoke(&mut conn, &sid, Revocation::Lifetime).await?;
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
    pub(super) async fn read_on_clock(
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
    pub(super) async fn find_sid(
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
    pub(super) async fn revoke_reused<T>(
        &self,
        conn: &mut ClusterConnection,
        record: &SessionRecord,
    ) -> Result<ByRefresh<T>, StoreError> {
        self.revoke(conn, &record.sid, Revocation::Reuse).await?;
        self.srem(conn, &record.did, &record.sid).await?;
        Ok(ByRefresh::Reused {
            sid: record.sid.clone(),
            did: record.did.clone(),
        })
    }

    /// The live session a presented refresh token names (as for refresh, but judged here,
    /// not in a script: delete and revoke-others only remove). Reuse revokes it.
    pub(super) async fn by_refresh(
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
}
