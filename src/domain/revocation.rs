//! Why a session was revoked: one name per cause, for metrics, spans, and what the stores
//! remember of a revoked session (`ended:` keys) so that a later refresh can tell its caller.

/// Why sessions were revoked: the label of `barazo_session_revocations_total`, and what a
/// store remembers of a revoked session for as long as it would have lived (see
/// [`Revocation::parse`]), so that a later refresh can say why it ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Revocation {
    /// `RevokeSession`: the user ended one of their sessions.
    User,
    /// `RevokeOtherSessions`: "log out everywhere else".
    Others,
    /// `CreateSession` beyond `--max-sessions-per-did`: the least recently refreshed went.
    Cap,
    /// `RefreshSession` past `--session-max-lifetime`.
    Lifetime,
    /// `DeleteSession`: logout.
    Logout,
    /// `DeleteAllSessionsForDid` without a reason.
    AllForDid,
    /// `DeleteAllSessionsForDid`, the account deleted.
    AccountDeleted,
    /// `DeleteAllSessionsForDid`, the account taken down.
    AccountTakendown,
    /// `DeleteAllSessionsForDid`, the account deactivated.
    AccountDeactivated,
    /// `DeleteAllSessionsForDid`, the account suspended.
    AccountSuspended,
    /// An old refresh token presented again (with rotation on): the whole session goes,
    /// whichever RPC presented it.
    Reuse,
}

impl Revocation {
    /// Every reason, for reading one back.
    const ALL: [Self; 11] = [
        Self::User,
        Self::Others,
        Self::Cap,
        Self::Lifetime,
        Self::Logout,
        Self::AllForDid,
        Self::AccountDeleted,
        Self::AccountTakendown,
        Self::AccountDeactivated,
        Self::AccountSuspended,
        Self::Reuse,
    ];

    /// The reason a label names (as stored); `None` for any other text.
    pub fn parse(label: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|reason| reason.as_str() == label)
    }

    /// The label value (and span attribute value, and what a store remembers).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Others => "others",
            Self::Cap => "cap",
            Self::Lifetime => "lifetime",
            Self::Logout => "logout",
            Self::AllForDid => "all-for-did",
            Self::AccountDeleted => "account-deleted",
            Self::AccountTakendown => "account-takendown",
            Self::AccountDeactivated => "account-deactivated",
            Self::AccountSuspended => "account-suspended",
            Self::Reuse => "reuse",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_reads_back_as_its_reason() {
        for reason in Revocation::ALL {
            assert_eq!(Revocation::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(Revocation::parse("nonsense"), None);
    }
}
