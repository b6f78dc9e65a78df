//! When sessions end and what their credentials may do: passed with each write, so that a
//! store and the record's `accessTokenExpiresAt` can never disagree.

use std::num::NonZeroU32;
use std::time::Duration;

/// When sessions end: how long the parts of a session live, passed with each write so that
/// the store and the record's `accessTokenExpiresAt` can never disagree, and how many one
/// DID may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Session data and DID index lifetime; restarted by every refresh (sliding window).
    pub session: Duration,
    /// Access token lifetime.
    pub access_token: Duration,
    /// Longest a session lives after its creation, refreshes or not; `None`: no limit.
    pub max: Option<Duration>,
    /// Most live sessions one DID may hold: a create beyond it first revokes that DID's
    /// least recently refreshed sessions (`refreshedAt`, else `createdAt`). `None`: no cap.
    pub max_per_did: Option<NonZeroU32>,
    /// How many access tokens a session holds and how its refresh token rotates.
    pub tokens: TokenRules,
}

/// The rules for a session's credentials, passed with each write like its lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRules {
    /// Most live access tokens per session (one per browser tab); past it a refresh
    /// revokes the oldest. At least 1 (1: each refresh revokes the previous token).
    pub max_access_tokens: usize,
    /// Whether refresh tokens rotate (each refresh issues a new one).
    pub rotation: bool,
    /// How long after its rotation a refresh token still counts as concurrent use (it
    /// gets the session's current one) rather than reuse (the session is revoked).
    pub reuse_grace: Duration,
}

impl TokenRules {
    /// The defaults of the configuration: 8 tokens per session, no rotation, 10 s grace.
    pub const DEFAULT: Self = Self {
        max_access_tokens: 8,
        rotation: false,
        reuse_grace: Duration::from_secs(10),
    };

    /// The grace in milliseconds, as the scripts take it.
    pub fn grace_ms(&self) -> i64 {
        i64::try_from(self.reuse_grace.as_millis()).unwrap_or(i64::MAX)
    }
}

impl Lifetimes {
    /// Lifetimes for unit tests: sliding `session`, a 15-minute access token, absolute
    /// lifetime `max`, no cap per DID, the default token rules.
    #[cfg(test)]
    pub(crate) fn for_tests(session: Duration, max: Option<Duration>) -> Self {
        Self {
            session,
            access_token: Duration::from_secs(900),
            max,
            max_per_did: None,
            tokens: TokenRules::DEFAULT,
        }
    }

    /// The absolute deadline of a session created at `created_at_ms`, if there is one. The
    /// rule of `session_json.lua`'s `lifetime_left` (a refresh's TTLs end by it:
    /// [`Lifetimes::capped`]).
    pub fn deadline_ms(&self, created_at_ms: i64) -> Option<i64> {
        self.max.map(|max| {
            created_at_ms.saturating_add(i64::try_from(max.as_millis()).unwrap_or(i64::MAX))
        })
    }

    /// The absolute lifetime in milliseconds for the scripts; 0 when there is none.
    pub fn max_ms(&self) -> u64 {
        self.max
            .map_or(0, |max| u64::try_from(max.as_millis()).unwrap_or(u64::MAX))
    }

    /// These lifetimes for a session that has `left` until its deadline: neither its data
    /// nor a token outlives it.
    pub fn capped(&self, left: Duration) -> Self {
        Self {
            session: self.session.min(left),
            access_token: self.access_token.min(left),
            ..*self
        }
    }

    /// The cap on sessions per DID for the scripts; 0 when there is none.
    pub fn max_per_did(&self) -> u32 {
        self.max_per_did.map_or(0, NonZeroU32::get)
    }
}
