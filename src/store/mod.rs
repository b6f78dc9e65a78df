//! Session storage: the [`SessionStore`] trait and its two implementations.
//!
//! - [`valkey::ValkeyStore`]: production, the key layout shared with the TypeScript AppView,
//!   one atomic Lua round trip per operation.
//! - [`valkey::ValkeyClusterStore`]: the same layout on Valkey Cluster, single-key
//!   commands in a revocation-safe order.
//! - [`memory::MemoryStore`]: development and the quick start, same semantics and TTLs.
//!
//! The layout (with the default prefix `barazo:session:`):
//! - `data:<sid>` → the [`SessionRecord`] JSON; TTL = session TTL (sliding).
//! - `access:<sha256hex(access token)>` → the sid; TTL = access token TTL. A session holds
//!   up to `--max-access-tokens-per-session` of them (one per tab), each named in its data.
//! - `did:<did>` → SET of the DID's sids; TTL = session TTL.
//! - `refresh:<sha256hex(refresh token family)>` → the sid, for sessions whose refresh
//!   token rotates (see [`crate::domain::rotation`]); TTL = session TTL.

pub(crate) mod ended;
pub mod memory;
pub mod valkey;

use crate::domain::rotation::{Candidate, Presented};
use crate::domain::{ClientFacts, Lifetimes, Revocation, SessionRecord};
use std::future::Future;
use std::time::Duration;

/// Failures of the storage layer. Anything but [`StoreError::CorruptSession`] means the store
/// could not answer, which callers must see as "unavailable", never as "no such session".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached, timed out, or refused the command.
    #[error("session store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store answered with something this service does not understand (a script
    /// returning an unexpected shape): a bug or a foreign writer, not an outage.
    #[error("session store answered unexpectedly: {0}")]
    Protocol(String),
    /// A stored session could not be parsed. The session is treated as nonexistent (fail
    /// closed); the error is logged so an operator can find the foreign writer.
    #[error("stored session {key_prefix}… is corrupt: {reason}")]
    CorruptSession {
        /// First 8 hex chars of the SHA-256 of the sid (never the sid itself).
        key_prefix: String,
        /// What was wrong with it.
        reason: String,
    },
}

impl StoreError {
    /// [`StoreError::Unavailable`] with its cause.
    pub fn unavailable(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Unavailable(cause.into())
    }
}

impl<T> ByRefresh<T> {
    /// The same outcome with the found value mapped.
    pub fn map_found<U>(self, f: impl FnOnce(T) -> U) -> ByRefresh<U> {
        match self {
            Self::Found(value) => ByRefresh::Found(f(value)),
            Self::NotFound => ByRefresh::NotFound,
            Self::Reused { sid, did } => ByRefresh::Reused { sid, did },
            Self::PastLifetime => ByRefresh::PastLifetime,
        }
    }
}

/// What a call naming a session by a refresh token found. Not `Debug`: `sid` may be a live
/// refresh token.
pub enum ByRefresh<T> {
    /// The token is the session's current one (or one rotated away from within the grace).
    Found(T),
    /// No live session has that token (unknown, expired, or rewritten by a writer that
    /// does not know rotation).
    NotFound,
    /// An older refresh token of a live session: reuse, so the whole session was revoked
    /// now. `sid` names it for the warning (as its key's prefix).
    Reused {
        /// The revoked session's id.
        sid: String,
        /// Its user, whom the caller may tell that their session was used from elsewhere.
        did: String,
    },
    /// The session was past its absolute lifetime: it has been revoked now.
    PastLifetime,
}

/// What a create stored, and how many older sessions of the DID it revoked to stay within
/// the cap ([`Lifetimes::max_per_did`]).
#[derive(Debug, Clone)]
pub struct Created {
    /// The record as stored (times on the store's clock).
    pub record: SessionRecord,
    /// Sessions of the same DID revoked for the cap.
    pub revoked: u32,
}

/// The key names of the shared layout under one prefix (both Valkey stores use it): the one
/// place Rust spells them. The scripts spell the keys they derive with the prelude's
/// `data_key`, `access_key`, `refresh_key` and `did_key` (`session_json.lua`).
#[derive(Debug, Clone)]
pub struct KeyLayout {
    prefix: String,
    data_prefix: String,
    access_prefix: String,
}

impl KeyLayout {
    /// The layout under `prefix`, e.g. `barazo:session:`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            data_prefix: format!("{prefix}data:"),
            access_prefix: format!("{prefix}access:"),
        }
    }

    /// The prefix itself (scripts derive the keys they find from it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>data:`, to which a sid is appended.
    pub fn data_prefix(&self) -> &str {
        &self.data_prefix
    }

    /// `<prefix>access:`, to which a token hash is appended.
    pub fn access_prefix(&self) -> &str {
        &self.access_prefix
    }

    /// `<prefix>feed:<name>`: a validation cache feed's marker key (outside the tracked
    /// prefixes, so writing it invalidates nothing).
    pub fn feed_marker(&self, name: &str) -> String {
        format!("{}feed:{name}", self.prefix)
    }

    /// `<prefix>data:<sid>`: the session JSON.
    pub fn data(&self, sid: &str) -> String {
        format!("{}{sid}", self.data_prefix)
    }

    /// `<prefix>access:<sha256 of the access token>`: the sid.
    pub fn access(&self, access_hash: &str) -> String {
        format!("{}{access_hash}", self.access_prefix)
    }

    /// `<prefix>refresh:<sha256 of a rotated refresh token's family>`: the sid.
    pub fn refresh(&self, family_hash: &str) -> String {
        format!("{}refresh:{family_hash}", self.prefix)
    }

    /// `<prefix>ended:<id>`: why a revoked session ended (see [`ended`]).
    pub fn ended(&self, id: &str) -> String {
        format!("{}ended:{id}", self.prefix)
    }

    /// `<prefix>did:<did>`: the DID's set of sids.
    pub fn did(&self, did: &str) -> String {
        format!("{}did:{did}", self.prefix)
    }

    /// An access key no token can hash to (not hex), read by health probes.
    pub fn health_probe(&self) -> String {
        format!("{}access:health-probe", self.prefix)
    }
}

/// A session read for validation, with the time to judge its expiry by.
#[derive(Debug, Clone)]
pub struct Found {
    /// The record as stored.
    pub record: SessionRecord,
    /// The store's clock when it read the record (epoch ms): Valkey's own `TIME`, so that
    /// every replica of the service decides expiry on one clock, whatever its own says.
    pub now_ms: i64,
    /// How long the keys read live on (ms from `now_ms`): the earlier of the data key's and
    /// the access key's remaining TTL, when either expires (cluster mode and the memory
    /// store: the data key's).
    /// Usually the session's and the token's own, but the TypeScript AppView (a shorter
    /// `OAUTH_SESSION_TTL`) or an operator can set less: a cached answer must end with
    /// them, since Valkey announces an expired key only once it reclaims it.
    pub keys_ttl_ms: Option<i64>,
}

impl Found {
    /// When the first of the keys read expires (epoch ms, store clock), if one does.
    pub fn keys_expire_at(&self) -> Option<i64> {
        self.keys_ttl_ms.map(|ttl| self.now_ms.saturating_add(ttl))
    }
}

/// One answer of [`SessionStore::find_by_access_hashes`]: what
/// [`SessionStore::find_by_access_hash`] answers for that hash, except that an outage fails
/// the whole batch instead; the only error an item carries is
/// [`StoreError::CorruptSession`].
pub type FoundByHash = Result<Option<Found>, StoreError>;

/// Splits per-hash answers into a batch's result: any failure but unreadable data (an
/// outage, a protocol error) fails the whole batch, so no token of it reads as invalid
/// because the store could not answer.
pub fn batch_of(answers: Vec<FoundByHash>) -> Result<Vec<FoundByHash>, StoreError> {
    let mut batch = Vec::with_capacity(answers.len());
    for answer in answers {
        match answer {
            Err(err) if !matches!(err, StoreError::CorruptSession { .. }) => return Err(err),
            answer => batch.push(answer),
        }
    }
    Ok(batch)
}

/// What a refresh writes besides the new lifetimes.
#[derive(Clone, Copy)]
pub struct Refresh<'a> {
    /// SHA-256 of the new access token.
    pub new_access_hash: &'a str,
    /// SHA-256 of the refreshing tab's own current token, when it sent a well-formed one:
    /// revoked if it is a live token of this session, ignored otherwise.
    pub previous_access_hash: Option<&'a str>,
    /// New device facts, when the caller sent them.
    pub client: Option<&'a ClientFacts>,
    /// With rotation on: the successor the session moves to when the presented token is
    /// its current one.
    pub rotation: Option<&'a Candidate>,
}

/// A refresh's result: the session as written, with its new access token. When the
/// presented refresh token has a successor (rotated now, or earlier within the grace), the
/// record holds the way to it ([`SessionRecord::successor_path`]).
pub struct Refreshed {
    /// The session with its new access token.
    pub record: SessionRecord,
}

/// How many members of a DID index one create inspects for expired sessions. Bounded so
/// a create costs the same for a user with years of logins; large enough that the index
/// of a user who logs in daily stays near the number of live sessions.
pub const PRUNE_SAMPLE: usize = 16;

/// What the service needs from storage. Every method is atomic: a concurrent call sees
/// either all of another call's effects or none.
pub trait SessionStore: Send + Sync + 'static {
    /// Stores a new session, its access key (and, when its record has a
    /// `refresh_family`, its `refresh:` key), and adds it to its DID index (restarting the
    /// index TTL). Without a cap, prunes up to [`PRUNE_SAMPLE`] expired members from that
    /// index; with one, every expired member once the index reaches the cap. With
    /// [`Lifetimes::max_per_did`], revokes the DID's least recently refreshed sessions (as
    /// [`SessionStore::delete`] does) so that, the new one included, no more than the cap
    /// stay live; the new session itself is always stored. The
    /// Valkey stores stamp `created_at` and `access_token_expires_at` on Valkey's clock
    /// (one clock for every replica); returns the record as stored.
    fn create(
        &self,
        record: &SessionRecord,
        lifetimes: Lifetimes,
    ) -> impl Future<Output = Result<Created, StoreError>> + Send;

    /// Looks up the session an access key points to. Returns the record as stored and the
    /// store's own clock; the caller decides whether `access_hash` is still its current,
    /// unexpired token.
    fn find_by_access_hash(
        &self,
        access_hash: &str,
    ) -> impl Future<Output = Result<Option<Found>, StoreError>> + Send;

    /// [`SessionStore::find_by_access_hash`] for many hashes at once, one answer per hash in
    /// their order: one round trip in standalone Valkey, concurrent reads in cluster mode.
    /// Any failure to answer fails the whole batch (see [`FoundByHash`]).
    fn find_by_access_hashes(
        &self,
        access_hashes: &[String],
    ) -> impl Future<Output = Result<Vec<FoundByHash>, StoreError>> + Send;

    /// Adds an access token to a session (see [`SessionRecord::add_access_token`]): the new
    /// hash, whose expiry is the store's clock plus `lifetimes.access_token`, becomes the
    /// newest; `refresh.previous_access_hash`, when it is a live token of this session, is
    /// revoked at once, as are the oldest past `lifetimes.tokens.max_access_tokens`; the
    /// session and DID index TTLs restart. [`ByRefresh::NotFound`] when no session has that
    /// token; a session past its absolute lifetime is revoked ([`ByRefresh::PastLifetime`]).
    /// `client`, when given, replaces the stored device facts; `refreshedAt` becomes now.
    ///
    /// The session is the one `presented` names, judged by [`SessionRecord::role_of`]: the
    /// current token (rotated to `refresh.rotation` when given) or one the session rotated
    /// away from less than `lifetimes.tokens.reuse_grace` ago (no new rotation; the record
    /// names its way to the current one) refresh it; an older one revokes the whole session ([`ByRefresh::Reused`]).
    fn refresh(
        &self,
        presented: &Presented,
        refresh: &Refresh<'_>,
        lifetimes: Lifetimes,
    ) -> impl Future<Output = Result<ByRefresh<Refreshed>, StoreError>> + Send;

    /// Removes the session `presented` names (its current refresh token, or the previous
    /// one within `grace`), every access key, its refresh key and its DID index entry.
    /// An older token revokes it all the same, as reuse. Found: the revoked session's id
    /// (what a rotated token names only through the store; the validation cache drops that
    /// session's answers by it).
    fn delete(
        &self,
        presented: &Presented,
        grace: Duration,
    ) -> impl Future<Output = Result<ByRefresh<String>, StoreError>> + Send;

    /// Removes every session in a DID's index and the index itself, remembering `reason`
    /// for each. Returns how many sessions existed.
    fn delete_all_for_did(
        &self,
        did: &str,
        reason: Revocation,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;

    /// Why the session a presented refresh token named was revoked, while the store still
    /// remembers it (as long as the session would have lived; see [`ended`]). Every
    /// revocation is remembered with its reason; a session that expired is not.
    fn ended(
        &self,
        presented: &Presented,
    ) -> impl Future<Output = Result<Option<Revocation>, StoreError>> + Send;

    /// Gives every live, readable session in a DID's index whose record names that DID the
    /// handle `handle`, each in one atomic step that keeps the rest of the record and its
    /// TTL (one already carrying it is not rewritten). How many carry it now.
    fn update_handle(
        &self,
        did: &str,
        handle: &str,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;

    /// The live sessions in a DID's index whose record names that DID, in no particular
    /// order. Unreadable records are left out.
    fn list_for_did(
        &self,
        did: &str,
    ) -> impl Future<Output = Result<Vec<SessionRecord>, StoreError>> + Send;

    /// Revokes the session `sid` only if it is a live session of `did` (its access key,
    /// data and index entry go, as in [`SessionStore::delete`]). Whether it did.
    fn revoke_in_did(
        &self,
        did: &str,
        sid: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Revokes every session of the DID of the session `presented` names (as for
    /// [`SessionStore::delete`]) except that one; how many others were revoked. An older
    /// refresh token revokes that session instead, as reuse.
    fn revoke_others(
        &self,
        presented: &Presented,
        grace: Duration,
    ) -> impl Future<Output = Result<ByRefresh<u32>, StoreError>> + Send;

    /// Checks that the store answers; drives the health status.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
