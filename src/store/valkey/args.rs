//! The Lua scripts' arguments: one struct per script (scripts that read their arguments
//! alike share one), built by both topologies and pushed onto the invocation in one place,
//! [`ScriptArgs::push`], in the order the prelude's readers take them
//! (`scripts/session_json.lua`: `presented_args`, `refresh_args`, `delete_args`,
//! `create_args`, `handle_args`), under the names those readers give them ([`ScriptArgs::named`];
//! `tests/it/parity.rs` checks that each name reads what was pushed for it).
//!
//! Keys are not here: each topology declares its own (a cluster script may name one key),
//! all of them spelled by [`KeyLayout`]; the scripts spell the keys they derive with the
//! prelude's `data_key`, `access_key`, `refresh_key` and `did_key`, from the prefix passed
//! here.
//!
//! Not `Debug`: a presented session id is a live refresh token.

use crate::domain::rotation::{Candidate, Lookup, Presented};
use crate::domain::{ClientFacts, SessionRecord};
use crate::store::{KeyLayout, Lifetimes, PRUNE_SAMPLE};
use redis::{RedisWrite, ScriptInvocation, ToRedisArgs};

/// One script argument, as `ARGV` carries it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Arg<'a> {
    /// Text.
    Text(&'a str),
    /// A whole number (milliseconds, a count).
    Number(u64),
}

impl ToRedisArgs for Arg<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        match self {
            Self::Text(text) => text.write_redis_args(out),
            Self::Number(number) => number.write_redis_args(out),
        }
    }
}

impl std::fmt::Display for Arg<'_> {
    /// The text the script receives.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Text(text) => f.write_str(text),
            Self::Number(number) => write!(f, "{number}"),
        }
    }
}

/// A number as a script argument; a negative one (never passed) reads as 0.
fn number(n: i64) -> Arg<'static> {
    Arg::Number(u64::try_from(n).unwrap_or(0))
}

/// A script's arguments, by name, in the order its reader in the prelude takes them.
pub trait ScriptArgs<'a> {
    /// Every argument with the name the script's reader gives it, in `ARGV` order.
    fn named(&self) -> Vec<(&'static str, Arg<'a>)>;

    /// Pushes the arguments onto `invocation`, in `ARGV` order (after its keys).
    fn push(&self, invocation: &mut impl ArgSink) {
        for (_, arg) in self.named() {
            invocation.push_arg(arg);
        }
    }
}

/// Where a script's arguments go: redis-rs's invocation (standalone), or cluster mode's
/// own (which can fall back to `EVAL`).
pub trait ArgSink {
    /// Appends one argument to `ARGV`.
    fn push_arg(&mut self, arg: Arg<'_>);
}

impl ArgSink for ScriptInvocation<'_> {
    fn push_arg(&mut self, arg: Arg<'_>) {
        self.arg(arg);
    }
}

/// A presented refresh token: `ARGV[1..5]` of `refresh.lua`, `cluster_refresh_data.lua`,
/// `delete.lua` and `revoke_others.lua` (all of it), read by `presented_args`.
#[derive(Clone, Copy)]
pub struct PresentedArgs<'a> {
    /// The key prefix.
    pub prefix: &'a str,
    /// The session id: the token when it is one, or the one its family key names when the
    /// caller looked it up (cluster mode); else empty (the script looks it up).
    pub sid: &'a str,
    /// SHA-256 of a rotated token's family; empty for a session id.
    pub family: &'a str,
    /// SHA-256 of the token; empty when none was presented (RevokeSession, by sid).
    pub token_hash: &'a str,
    /// The reuse grace (ms).
    pub grace_ms: i64,
}

impl<'a> PresentedArgs<'a> {
    /// The token `presented`, judged with `grace_ms`.
    pub fn new(keys: &'a KeyLayout, presented: &'a Presented, grace_ms: i64) -> Self {
        let (sid, family) = match &presented.lookup {
            Lookup::Sid(sid) => (sid.as_str(), ""),
            Lookup::Family(family) => ("", family.as_str()),
        };
        Self {
            prefix: keys.prefix(),
            sid,
            family,
            token_hash: &presented.token_hash,
            grace_ms,
        }
    }

    /// The session `sid`, named without a token (RevokeSession).
    pub fn session(keys: &'a KeyLayout, sid: &'a str) -> Self {
        Self {
            prefix: keys.prefix(),
            sid,
            family: "",
            token_hash: "",
            grace_ms: 0,
        }
    }

    /// The same token, its session `sid` already found (cluster mode reads it first).
    #[must_use]
    pub fn found(self, sid: &'a str) -> Self {
        Self { sid, ..self }
    }
}

impl<'a> ScriptArgs<'a> for PresentedArgs<'a> {
    fn named(&self) -> Vec<(&'static str, Arg<'a>)> {
        vec![
            ("prefix", Arg::Text(self.prefix)),
            ("sid", Arg::Text(self.sid)),
            ("family", Arg::Text(self.family)),
            ("token_hash", Arg::Text(self.token_hash)),
            ("grace", number(self.grace_ms)),
        ]
    }
}

/// A refresh: the arguments of `refresh.lua` (standalone) and `cluster_refresh_data.lua`
/// (cluster), read by `refresh_args`.
#[derive(Clone, Copy)]
pub struct RefreshArgs<'a> {
    /// The refresh token presented.
    pub presented: PresentedArgs<'a>,
    /// SHA-256 of the new access token.
    pub new_hash: &'a str,
    /// The lifetimes: the session and access token TTLs, the absolute lifetime, the most
    /// access tokens per session.
    pub lifetimes: Lifetimes,
    /// New device facts, when the caller sent them.
    pub client: Option<&'a ClientFacts>,
    /// SHA-256 of the refreshing tab's own current access token, if it sent one.
    pub previous_hash: Option<&'a str>,
    /// With rotation on, the successor the session moves to when the token is its current one.
    pub candidate: Option<&'a Candidate>,
}

impl<'a> ScriptArgs<'a> for RefreshArgs<'a> {
    fn named(&self) -> Vec<(&'static str, Arg<'a>)> {
        let client = self.client;
        let candidate = self.candidate;
        let text = |value: Option<&'a str>| Arg::Text(value.unwrap_or(""));
        let mut named = self.presented.named();
        named.extend([
            ("new_hash", Arg::Text(self.new_hash)),
            (
                "session_ttl",
                Arg::Number(super::millis(self.lifetimes.session)),
            ),
            (
                "access_ttl",
                Arg::Number(super::millis(self.lifetimes.access_token)),
            ),
            (
                "replace_client",
                Arg::Text(if client.is_some() { "1" } else { "0" }),
            ),
            ("user_agent", text(client.map(|c| c.user_agent.as_str()))),
            ("ip_address", text(client.map(|c| c.ip_address.as_str()))),
            ("max_lifetime", Arg::Number(self.lifetimes.max_ms())),
            ("previous_hash", text(self.previous_hash)),
            (
                "max_tokens",
                Arg::Number(
                    u64::try_from(self.lifetimes.tokens.max_access_tokens).unwrap_or(u64::MAX),
                ),
            ),
            ("nonce", text(candidate.map(|c| c.nonce.as_str()))),
            (
                "successor_hash",
                text(candidate.map(|c| c.successor_hash.as_str())),
            ),
            (
                "successor_family",
                text(candidate.map(|c| c.family_hash.as_str())),
            ),
        ]);
        named
    }
}

/// A revocation by refresh token (DeleteSession) or by sid within a DID (RevokeSession):
/// the arguments of `delete.lua`, read by `delete_args`.
#[derive(Clone, Copy)]
pub struct DeleteArgs<'a> {
    /// The refresh token presented, or the session named by sid.
    pub presented: PresentedArgs<'a>,
    /// With a sid and no token: the DID the session must be of; else empty.
    pub did: &'a str,
}

impl<'a> ScriptArgs<'a> for DeleteArgs<'a> {
    fn named(&self) -> Vec<(&'static str, Arg<'a>)> {
        let mut named = self.presented.named();
        named.push(("did", Arg::Text(self.did)));
        named
    }
}

/// A handle change: the arguments of `update_handle.lua` (every session of the DID) and
/// `cluster_update_handle.lua` (one session), read by `handle_args`.
#[derive(Clone, Copy)]
pub struct HandleArgs<'a> {
    /// The key prefix.
    pub prefix: &'a str,
    /// The DID whose sessions take the handle.
    pub did: &'a str,
    /// The new handle.
    pub handle: &'a str,
    /// Cluster mode: the one session to rename; standalone: empty.
    pub sid: &'a str,
}

impl<'a> ScriptArgs<'a> for HandleArgs<'a> {
    fn named(&self) -> Vec<(&'static str, Arg<'a>)> {
        vec![
            ("prefix", Arg::Text(self.prefix)),
            ("did", Arg::Text(self.did)),
            ("handle", Arg::Text(self.handle)),
            ("sid", Arg::Text(self.sid)),
        ]
    }
}

/// A new session: the arguments of `create.lua` (standalone) and `cluster_create_data.lua`
/// (cluster, which leaves the index, its pruning and the cap to its caller), read by
/// `create_args`.
#[derive(Clone, Copy)]
pub struct CreateArgs<'a> {
    /// The key prefix.
    pub prefix: &'a str,
    /// The record to store (its times are stamped on Valkey's clock instead).
    pub record: &'a SessionRecord,
    /// The session and access token TTLs, and the most sessions per DID.
    pub lifetimes: Lifetimes,
}

impl<'a> ScriptArgs<'a> for CreateArgs<'a> {
    fn named(&self) -> Vec<(&'static str, Arg<'a>)> {
        let record = self.record;
        vec![
            ("prefix", Arg::Text(self.prefix)),
            ("sid", Arg::Text(&record.sid)),
            ("did", Arg::Text(&record.did)),
            ("handle", Arg::Text(&record.handle)),
            ("access_hash", Arg::Text(&record.access_token_hash)),
            ("user_agent", Arg::Text(&record.user_agent)),
            ("ip_address", Arg::Text(&record.ip_address)),
            (
                "family",
                Arg::Text(record.refresh_family.as_deref().unwrap_or("")),
            ),
            (
                "refresh_hash",
                Arg::Text(record.refresh_token_hash.as_deref().unwrap_or("")),
            ),
            (
                "session_ttl",
                Arg::Number(super::millis(self.lifetimes.session)),
            ),
            (
                "access_ttl",
                Arg::Number(super::millis(self.lifetimes.access_token)),
            ),
            (
                "prune_sample",
                Arg::Number(u64::try_from(PRUNE_SAMPLE).unwrap_or(u64::MAX)),
            ),
            (
                "max_per_did",
                Arg::Number(u64::from(self.lifetimes.max_per_did())),
            ),
        ]
    }
}
