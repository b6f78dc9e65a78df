//! What a session shows its callers: the facts every `Session` message and every ext_authz
//! `OK` is built from. Packed small and free of credentials (no session id, which is or
//! finds the refresh token; no token hashes), so that the validation cache
//! ([`crate::cache`]) can hold tens of thousands of them and hand each out without copying.

use crate::domain::Lifetimes;
use crate::domain::SessionRecord;
use sha2::{Digest, Sha256};

/// The caller-visible facts of one session, as of the read that produced them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// DID ‖ handle ‖ User-Agent ‖ IP address in one allocation: a cached answer costs two
    /// allocations (this and the view itself), not five.
    text: Box<str>,
    /// Where the handle, the User-Agent and the IP address start in `text`.
    starts: [u32; 3],
    /// SHA-256 of the session id: the non-secret `session_key`.
    session_key: [u8; 32],
    created_at: i64,
    refreshed_at: i64,
    access_token_expires_at: i64,
    expires_at: i64,
}

impl SessionView {
    /// The view of `record`; `lifetimes` decides its `expires_at` (the earlier of the
    /// sliding expiry and the absolute deadline).
    pub fn of(record: &SessionRecord, lifetimes: &Lifetimes) -> Self {
        let session_ttl_ms = i64::try_from(lifetimes.session.as_millis()).unwrap_or(i64::MAX);
        let sliding = record.last_refreshed().saturating_add(session_ttl_ms);
        let expires_at = lifetimes
            .deadline_ms(record.created_at)
            .map_or(sliding, |deadline| sliding.min(deadline));
        let parts = [
            record.did.as_str(),
            &record.handle,
            &record.user_agent,
            &record.ip_address,
        ];
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut starts = [0u32; 3];
        for (i, part) in parts.iter().enumerate() {
            if let Some(start) = i.checked_sub(1).and_then(|i| starts.get_mut(i)) {
                // Text longer than 4 GiB cannot come out of one Valkey value's JSON here
                // (a record is refused far earlier); saturating keeps the accessors in range.
                *start = u32::try_from(text.len()).unwrap_or(u32::MAX);
            }
            text.push_str(part);
        }
        Self {
            text: text.into_boxed_str(),
            starts,
            session_key: Sha256::digest(record.sid.as_bytes()).into(),
            created_at: record.created_at,
            refreshed_at: record.last_refreshed(),
            access_token_expires_at: record.access_token_expires_at,
            expires_at,
        }
    }

    /// The same view as seen through one of the session's access tokens: its
    /// `access_token_expires_at` is that token's own expiry (a tab's older token may expire
    /// before the newest), so that a caller caching the answer stops at the right time.
    pub fn for_token(mut self, access_token_expires_at: i64) -> Self {
        self.access_token_expires_at = access_token_expires_at;
        self
    }

    /// Part `i` of the packed text (0 DID, 1 handle, 2 User-Agent, 3 IP address).
    fn part(&self, i: usize) -> &str {
        let at = |i: usize| -> usize {
            match i.checked_sub(1) {
                None => 0,
                Some(i) => self.starts.get(i).map_or(self.text.len(), |&s| s as usize),
            }
        };
        self.text.get(at(i)..at(i + 1)).unwrap_or_default()
    }

    /// The user's DID.
    pub fn did(&self) -> &str {
        self.part(0)
    }

    /// The user's handle.
    pub fn handle(&self) -> &str {
        self.part(1)
    }

    /// The User-Agent of the device that last created or refreshed the session; empty
    /// when unknown.
    pub fn user_agent(&self) -> &str {
        self.part(2)
    }

    /// The IP address of that device; empty when unknown.
    pub fn ip_address(&self) -> &str {
        self.part(3)
    }

    /// SHA-256 of the session id.
    pub fn session_key_bytes(&self) -> &[u8; 32] {
        &self.session_key
    }

    /// The session key as callers see it: lowercase hex SHA-256 of the session id.
    pub fn session_key(&self) -> String {
        crate::domain::lower_hex(&self.session_key)
    }

    /// When the session was created (epoch ms).
    pub fn created_at(&self) -> i64 {
        self.created_at
    }

    /// When the session was last refreshed, or created if never (epoch ms).
    pub fn refreshed_at(&self) -> i64 {
        self.refreshed_at
    }

    /// When the access token expires (epoch ms): the newest token's, or the presented one's
    /// in a validation's answer ([`SessionView::for_token`]).
    pub fn access_token_expires_at(&self) -> i64 {
        self.access_token_expires_at
    }

    /// When the session ends unless refreshed (epoch ms): the earlier of the sliding expiry
    /// and the absolute deadline.
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::sha256_hex;
    use std::time::Duration;

    fn record() -> SessionRecord {
        SessionRecord {
            sid: "a".repeat(64),
            did: "did:plc:alice".into(),
            handle: "alice.test".into(),
            access_token_hash: "b".repeat(64),
            access_token_expires_at: 2_000,
            created_at: 1_000,
            refreshed_at: Some(1_500),
            user_agent: "Firefox".into(),
            ip_address: "192.0.2.1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn packs_and_unpacks_every_part() {
        let lifetimes = Lifetimes::for_tests(Duration::from_secs(10), None);
        let view = SessionView::of(&record(), &lifetimes);
        assert_eq!(view.did(), "did:plc:alice");
        assert_eq!(view.handle(), "alice.test");
        assert_eq!(view.user_agent(), "Firefox");
        assert_eq!(view.ip_address(), "192.0.2.1");
        assert_eq!(view.session_key(), sha256_hex(&"a".repeat(64)));
        assert_eq!(view.refreshed_at(), 1_500);
        assert_eq!(view.expires_at(), 11_500, "sliding expiry");
        let empty = SessionRecord {
            user_agent: String::new(),
            ip_address: String::new(),
            ..record()
        };
        let view = SessionView::of(&empty, &lifetimes);
        assert_eq!((view.user_agent(), view.ip_address()), ("", ""));
        assert_eq!(view.handle(), "alice.test");
    }

    #[test]
    fn the_absolute_deadline_caps_the_expiry() {
        let lifetimes = Lifetimes::for_tests(Duration::from_secs(10), Some(Duration::from_secs(5)));
        assert_eq!(SessionView::of(&record(), &lifetimes).expires_at(), 6_000);
    }
}
