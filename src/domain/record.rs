//! The stored session record, shared byte for byte with the TypeScript AppView, and the
//! rules that read it: which access tokens it accepts, what a presented refresh token is to
//! it, how a refresh adds a tab's token and rotates the refresh token. Pure (no I/O); the
//! Lua prelude (`store/valkey/scripts/session_json.lua`) implements the same rules.

use super::rotation::{Candidate, Lookup, Presented};
use super::tokens::{constant_time_eq, log_prefix, sha256_hex};
use serde::{Deserialize, Serialize};

/// A session as stored under `<prefix>data:<sid>`, shared with the TypeScript AppView.
///
/// Field order and names are the TypeScript object's, so `serde_json::to_string` writes
/// the same bytes as its `JSON.stringify`. Timestamps are integer epoch milliseconds.
/// The facts this service adds (`refreshedAt`, `userAgent`, `ipAddress`) come after the
/// six fields the TypeScript code knows; it drops them when it rewrites a session, so each
/// is optional when read.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    /// The session id, which is also the refresh token (a credential).
    pub sid: String,
    /// The user's DID.
    pub did: String,
    /// The user's handle.
    pub handle: String,
    /// Lowercase hex SHA-256 of the current access token.
    pub access_token_hash: String,
    /// When the current access token expires (epoch ms).
    pub access_token_expires_at: i64,
    /// When the session was created (epoch ms).
    pub created_at: i64,
    /// When the session was last refreshed (epoch ms); absent in sessions the TypeScript
    /// AppView wrote, which count as refreshed when created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed_at: Option<i64>,
    /// The User-Agent of the device that last created or refreshed it; empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_agent: String,
    /// The IP address of that device; empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip_address: String,
    /// The session's other live access tokens (one per browser tab), oldest first; the
    /// newest is `access_token_hash`. Absent in sessions the TypeScript AppView wrote or
    /// rewrote: then only the newest token validates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_tokens: Vec<AccessTokenEntry>,
    /// Refresh-token rotation state; absent until the session's refresh token is rotated
    /// (sessions whose refresh token is still their sid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_family: Option<String>,
    /// SHA-256 of the current refresh token (rotated sessions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_hash: Option<String>,
    /// SHA-256 of the refresh token the current one replaced, honoured within the grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_refresh_token_hash: Option<String>,
    /// When the current refresh token replaced the previous one (epoch ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<i64>,
    /// The nonce the current refresh token was derived with from the previous one, so a
    /// concurrent use of the previous one within the grace gets the same successor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_nonce: Option<String>,
    /// The rotations before the previous one that are still inside the grace, oldest
    /// first, at most [`MAX_EARLIER_ROTATIONS`]: a tab that still holds one of those
    /// tokens gets the current successor too (derived along their nonces).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_rotations: Vec<EarlierRotation>,
}

/// How many rotations before the previous one a session remembers (each 182 bytes of
/// JSON). Rotations happen only when the current token is presented, so more than five
/// inside one grace means five refreshes in a row from tabs that already had the newest
/// cookie; a token pushed out is judged as any old one (reuse). `session_json.lua`'s
/// `MAX_EARLIER_ROTATIONS` is the same.
pub const MAX_EARLIER_ROTATIONS: usize = 4;

/// One rotation still inside the grace: the refresh token hashed `hash` was replaced at
/// `rotated_at` by its successor under `nonce`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EarlierRotation {
    /// SHA-256 of the replaced refresh token.
    pub hash: String,
    /// The nonce its successor was derived with.
    pub nonce: String,
    /// When it was replaced (epoch ms).
    pub rotated_at: i64,
}

/// What a presented refresh token is to the session it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The session's current refresh token.
    Current,
    /// One the session rotated away from less than the grace ago: concurrent use (tabs).
    Grace,
    /// One rotated away from longer ago than the grace: theft; the session is revoked.
    Reuse,
    /// Not a token of this session (its record was rewritten by the TypeScript code).
    Foreign,
}

/// One of a session's older live access tokens, as stored in `accessTokens`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessTokenEntry {
    /// Lowercase hex SHA-256 of the token.
    pub hash: String,
    /// When it expires (epoch ms).
    pub expires_at: i64,
}

/// Prints the sid (a credential) and the access token hash (a storage key) only as 8-char
/// prefixes of hashes, so a stray `{:?}` cannot leak them.
impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("session_key", &log_prefix(&sha256_hex(&self.sid)))
            .field("did", &self.did)
            .field("handle", &self.handle)
            .field("access_token_hash", &log_prefix(&self.access_token_hash))
            .field("access_token_expires_at", &self.access_token_expires_at)
            .field("created_at", &self.created_at)
            .field("other_access_tokens", &self.access_tokens.len())
            .field("rotated", &self.refresh_token_hash.is_some())
            .finish()
    }
}

impl SessionRecord {
    /// When the session was last refreshed, or created if never. The rule of
    /// `session_json.lua`'s `last_refreshed`.
    pub fn last_refreshed(&self) -> i64 {
        self.refreshed_at.unwrap_or(self.created_at)
    }

    /// Gives this record `handle` if it is a session of `did`, and whether it is; whether
    /// it changed is the caller's to see. The rule of `session_json.lua`'s `rename`.
    pub fn rename(&mut self, did: &str, handle: &str) -> bool {
        if self.did != did {
            return false;
        }
        handle.clone_into(&mut self.handle);
        true
    }

    /// Parses stored JSON. Any shape other than the six fields with the right types fails:
    /// the caller treats that session as invalid (fail closed). The Valkey stores read a
    /// record with it through `store::valkey::parse_record`, whose Lua twin is
    /// `session_json.lua`'s `record_readable` (how every script reads a record).
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The JSON the TypeScript AppView would write for this record: the bytes
    /// `session_json.lua`'s `record_json` writes.
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings and integers into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default() // allow-unwrap: infallible, see above
    }

    /// Whether `access_hash` is one of this session's live, unexpired access tokens (the
    /// newest or one of the others).
    ///
    /// The access key alone is not enough: a revoked or orphaned key still points at the
    /// sid for a while, so the hashes in the data are the authority. Every entry is
    /// compared, without an early exit.
    pub fn accepts_access_hash(&self, access_hash: &str, now_ms: i64) -> bool {
        self.live_tokens().fold(false, |found, (hash, expires_at)| {
            let matches = constant_time_eq(hash.as_bytes(), access_hash.as_bytes());
            found | (matches & (expires_at > now_ms))
        })
    }

    /// What the presented refresh token is to this session (its data, found by the
    /// token's lookup), judged at `now_ms` with a grace of `grace_ms` for the previous one.
    /// The rules of `session_json.lua`'s `refresh_role`.
    pub fn role_of(&self, presented: &Presented, now_ms: i64, grace_ms: i64) -> Role {
        let Some(current) = &self.refresh_token_hash else {
            // Never rotated: the sid is the refresh token. A family token finding such a
            // record means a writer that does not know rotation (the TypeScript code)
            // rewrote it: not this session's any more.
            return match &presented.lookup {
                Lookup::Sid(sid) if *sid == self.sid => Role::Current,
                _ => Role::Foreign,
            };
        };
        if let Lookup::Family(family) = &presented.lookup
            && self.refresh_family.as_ref() != Some(family)
        {
            return Role::Foreign;
        }
        if constant_time_eq(current.as_bytes(), presented.token_hash.as_bytes()) {
            return Role::Current;
        }
        // Every rotated-away token is compared, without an early exit.
        let in_grace = self
            .rotations()
            .fold(false, |found, (hash, _, rotated_at)| {
                let matches = constant_time_eq(hash.as_bytes(), presented.token_hash.as_bytes());
                found | (matches & (now_ms.saturating_sub(rotated_at) < grace_ms))
            });
        if in_grace { Role::Grace } else { Role::Reuse }
    }

    /// The rotations the session remembers, oldest first, the previous one last: the
    /// replaced token's hash, the nonce its successor was derived with, when.
    /// `session_json.lua`'s `rotations`.
    fn rotations(&self) -> impl Iterator<Item = (&str, &str, i64)> {
        let previous = match (
            &self.previous_refresh_token_hash,
            &self.rotation_nonce,
            self.rotated_at,
        ) {
            (Some(hash), Some(nonce), Some(at)) => Some((hash.as_str(), nonce.as_str(), at)),
            _ => None,
        };
        self.earlier_rotations
            .iter()
            .map(|r| (r.hash.as_str(), r.nonce.as_str(), r.rotated_at))
            .chain(previous)
    }

    /// The nonces that lead from the refresh token hashed `presented_hash` to the current
    /// one, in order (see [`crate::domain::rotation::successor_along`]); `None` when the session
    /// did not rotate away from that token.
    pub fn successor_path(&self, presented_hash: &str) -> Option<Vec<&str>> {
        let steps: Vec<(&str, &str, i64)> = self.rotations().collect();
        let start = steps
            .iter()
            .position(|(hash, _, _)| *hash == presented_hash)?;
        Some(steps[start..].iter().map(|(_, nonce, _)| *nonce).collect())
    }

    /// Moves the session to `candidate`'s successor of the current refresh token
    /// (`presented_hash`) at `now_ms`; the previous rotation joins the earlier ones, which
    /// keep those inside `grace_ms` (at most [`MAX_EARLIER_ROTATIONS`]). Returns whether
    /// the session had no family yet (its `refresh:` key is to be written). The rules of
    /// `session_json.lua`'s `rotate`.
    pub fn rotate(
        &mut self,
        presented_hash: &str,
        candidate: &Candidate,
        now_ms: i64,
        grace_ms: i64,
    ) -> bool {
        let new_family = self.refresh_family.is_none();
        if new_family {
            self.refresh_family = Some(candidate.family_hash.clone());
        }
        let mut earlier: Vec<EarlierRotation> = self
            .rotations()
            .map(|(hash, nonce, rotated_at)| EarlierRotation {
                hash: hash.to_owned(),
                nonce: nonce.to_owned(),
                rotated_at,
            })
            .collect();
        // Only from the oldest end, so the rest still chains up to the current token.
        let stale = earlier
            .iter()
            .take_while(|r| now_ms.saturating_sub(r.rotated_at) >= grace_ms)
            .count()
            .max(earlier.len().saturating_sub(MAX_EARLIER_ROTATIONS));
        earlier.drain(..stale);
        self.earlier_rotations = earlier;
        self.previous_refresh_token_hash = Some(presented_hash.to_owned());
        self.refresh_token_hash = Some(candidate.successor_hash.clone());
        self.rotated_at = Some(now_ms);
        self.rotation_nonce = Some(candidate.nonce.clone());
        new_family
    }

    /// Every access token the record names, oldest first, the newest last: the hash and
    /// its expiry (expired ones included). `session_json.lua`'s `live_tokens`.
    pub fn live_tokens(&self) -> impl Iterator<Item = (&str, i64)> {
        self.access_tokens
            .iter()
            .map(|e| (e.hash.as_str(), e.expires_at))
            .chain(std::iter::once((
                self.access_token_hash.as_str(),
                self.access_token_expires_at,
            )))
    }

    /// Makes `new_hash` (expiring at `expires_at`) the newest access token: the previous
    /// newest joins the others; `previous`, when it is one of them, is dropped, as are
    /// expired ones and, past `max_tokens`, the oldest. Returns the hashes dropped (their
    /// access keys are to be deleted). The rules of `session_json.lua`'s `add_access_token`.
    pub fn add_access_token(
        &mut self,
        new_hash: &str,
        expires_at: i64,
        previous: Option<&str>,
        max_tokens: usize,
        now_ms: i64,
    ) -> Vec<String> {
        let mut removed = Vec::new();
        let mut keep = Vec::new();
        let newest = AccessTokenEntry {
            hash: std::mem::take(&mut self.access_token_hash),
            expires_at: self.access_token_expires_at,
        };
        for entry in std::mem::take(&mut self.access_tokens)
            .into_iter()
            .chain(std::iter::once(newest))
        {
            if entry.hash.is_empty() {
                continue;
            }
            if entry.expires_at <= now_ms || Some(entry.hash.as_str()) == previous {
                removed.push(entry.hash);
            } else {
                keep.push(entry);
            }
        }
        let room = max_tokens.max(1) - 1;
        if keep.len() > room {
            removed.extend(keep.drain(..keep.len() - room).map(|e| e.hash));
        }
        self.access_tokens = keep;
        self.access_token_hash = new_hash.to_owned();
        self.access_token_expires_at = expires_at;
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tokens::sha256_hex;

    #[test]
    fn record_json_has_the_typescript_shape() {
        let record = SessionRecord {
            sid: "s".into(),
            did: "did:plc:abc".into(),
            handle: "alice.test".into(),
            access_token_hash: "h".into(),
            access_token_expires_at: 1_764_358_000_000,
            created_at: 1_764_357_100_000,
            ..Default::default()
        };
        assert_eq!(
            record.to_json(),
            r#"{"sid":"s","did":"did:plc:abc","handle":"alice.test","accessTokenHash":"h","accessTokenExpiresAt":1764358000000,"createdAt":1764357100000}"#
        );
        assert_eq!(SessionRecord::from_json(&record.to_json()).unwrap(), record);
        let debug = format!("{record:?}");
        assert!(!debug.contains("\"s\""), "no sid in {debug}");
    }

    #[test]
    fn record_json_refuses_wrong_shapes() {
        for json in [
            "",
            "not json",
            "[]",
            r#"{"sid":"s"}"#,
            r#"{"sid":"s","did":"d","handle":"h","accessTokenHash":"x","accessTokenExpiresAt":"soon","createdAt":1}"#,
            r#"{"sid":"s","did":"d","handle":"h","accessTokenHash":"x","accessTokenExpiresAt":1.5,"createdAt":1}"#,
            r#"{"sid":"s","did":null,"handle":"h","accessTokenHash":"x","accessTokenExpiresAt":1,"createdAt":1}"#,
        ] {
            assert!(SessionRecord::from_json(json).is_err(), "{json}");
        }
    }

    #[test]
    fn record_accepts_only_its_current_unexpired_hash() {
        let record = SessionRecord {
            sid: "s".into(),
            did: "did:plc:abc".into(),
            handle: "alice.test".into(),
            access_token_hash: sha256_hex("t"),
            access_token_expires_at: 2_000,
            created_at: 1_000,
            ..Default::default()
        };
        assert!(record.accepts_access_hash(&sha256_hex("t"), 1_999));
        assert!(!record.accepts_access_hash(&sha256_hex("t"), 2_000));
        assert!(!record.accepts_access_hash(&sha256_hex("u"), 1_000));
        assert!(!record.accepts_access_hash("", 1_000));
    }

    #[test]
    fn tabs_add_tokens_up_to_the_cap_and_revoke_only_their_own() {
        let mut record = SessionRecord {
            sid: "s".into(),
            access_token_hash: "a".into(),
            access_token_expires_at: 100,
            ..Default::default()
        };
        assert!(record.add_access_token("b", 110, None, 3, 50).is_empty());
        assert!(
            record
                .add_access_token("c", 120, Some("unknown"), 3, 50)
                .is_empty()
        );
        assert!(!record.accepts_access_hash("", 0));
        assert!(record.accepts_access_hash("a", 99) && record.accepts_access_hash("c", 99));
        assert!(
            !record.accepts_access_hash("a", 100),
            "each token expires on its own"
        );
        // Past the cap the oldest goes; a tab's own previous token goes at once.
        assert_eq!(record.add_access_token("d", 130, None, 3, 50), ["a"]);
        assert_eq!(record.add_access_token("e", 140, Some("c"), 3, 50), ["c"]);
        let hashes: Vec<&str> = record.live_tokens().map(|(h, _)| h).collect();
        assert_eq!(hashes, ["b", "d", "e"], "oldest first, the newest last");
        assert_eq!(record.access_token_hash, "e");
        // Expired ones are dropped; a cap of 1 is "each refresh revokes the previous".
        assert_eq!(record.add_access_token("f", 150, None, 3, 115), ["b"]);
        assert_eq!(
            record.add_access_token("g", 160, None, 1, 115),
            ["d", "e", "f"]
        );
        assert!(record.access_tokens.is_empty());
        let json = record.to_json();
        assert!(!json.contains("accessTokens"), "{json}");
    }

    #[test]
    fn rotations_inside_the_grace_chain_up_to_the_current_token() {
        use crate::domain::rotation::{self, Candidate, Presented};
        let grace = 10_000;
        let first = rotation::first_token().expect("rng");
        let mut record = SessionRecord {
            sid: "s".into(),
            refresh_family: Some(rotation::family_hash(&first)),
            refresh_token_hash: Some(sha256_hex(&first)),
            ..Default::default()
        };
        let mut cookies = vec![first];
        for at in [1_000, 2_000, 3_000, 4_000, 5_000, 6_000] {
            let current = cookies.last().expect("a cookie").clone();
            let candidate = Candidate::new(&current).expect("rng");
            assert!(!record.rotate(&sha256_hex(&current), &candidate, at, grace));
            cookies.push(rotation::successor(&current, &candidate.nonce));
            assert_eq!(
                record.refresh_token_hash,
                Some(sha256_hex(cookies.last().expect("a cookie")))
            );
        }
        let role = |cookie: &str, now| {
            record.role_of(&Presented::parse(cookie).expect("token"), now, grace)
        };
        assert_eq!(role(&cookies[6], 6_000), Role::Current);
        // The previous and four earlier: each reaches the current token.
        assert_eq!(record.earlier_rotations.len(), MAX_EARLIER_ROTATIONS);
        for cookie in &cookies[1..6] {
            assert_eq!(role(cookie, 6_500), Role::Grace);
            let path = record.successor_path(&sha256_hex(cookie)).expect("a path");
            assert_eq!(rotation::successor_along(cookie, &path), cookies[6]);
        }
        // Pushed out by the bound; and each one's own rotation time counts.
        assert_eq!(role(&cookies[0], 6_500), Role::Reuse);
        assert!(record.successor_path(&sha256_hex(&cookies[0])).is_none());
        assert_eq!(role(&cookies[1], 12_000), Role::Reuse, "rotated at 2 000");
        assert_eq!(role(&cookies[2], 12_000), Role::Grace, "rotated at 3 000");
        // The next rotation forgets those older than the grace, from the oldest end.
        let candidate = Candidate::new(&cookies[6]).expect("rng");
        record.rotate(&sha256_hex(&cookies[6]), &candidate, 14_500, grace);
        let kept: Vec<i64> = record
            .earlier_rotations
            .iter()
            .map(|r| r.rotated_at)
            .collect();
        assert_eq!(kept, [5_000, 6_000]);
        assert_eq!(record.rotated_at, Some(14_500));
    }

    #[test]
    fn records_without_the_new_fields_still_parse_and_write_only_what_they_hold() {
        let six = r#"{"sid":"s","did":"did:plc:a","handle":"a.test","accessTokenHash":"h","accessTokenExpiresAt":2,"createdAt":1}"#;
        let record = SessionRecord::from_json(six).expect("the TypeScript shape");
        assert_eq!(record.last_refreshed(), 1);
        assert_eq!(
            record.to_json(),
            six,
            "nothing added to a TypeScript session"
        );
    }
}
