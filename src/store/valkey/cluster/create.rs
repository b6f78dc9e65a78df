//! CreateSession: the data, then the index, then the access key; the sample of the index
//! pruned; the cap per DID enforced after the new session is whole.

use super::{Shared, Step};
use crate::domain::Lifetimes;
use crate::domain::{Revocation, SessionRecord};
use crate::store::valkey::args::{CreateArgs, ScriptArgs};
use crate::store::valkey::{Operation, observe, parse_record};
use crate::store::{Created, PRUNE_SAMPLE, StoreError};
use redis::cluster_async::ClusterConnection;
use std::sync::Arc;

impl Shared {
    pub(super) async fn create(
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
    pub(super) async fn prune_sample(
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
    pub(super) async fn cap(
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
            if self.revoke(conn, &sid, Revocation::Cap).await?.is_some() {
                revoked = revoked.saturating_add(1);
            }
            // As delete-all: exactly the members handled leave the index.
            self.srem(conn, did, &sid).await?;
        }
        Ok(revoked)
    }
}
