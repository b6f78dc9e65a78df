//! What a store remembers of a revoked session: why it ended, under `ended:<id>` (a short
//! label, [`Revocation::as_str`]), for as long as the session's data would have lived, so
//! that a refresh after the revocation can tell its caller why (RefreshSession's
//! `SESSION_REVOKED`). Rust's half of the rule; the Lua prelude's `remember_end` and
//! `ended_key` are the other.
//!
//! The ids a presented refresh token is looked up by: for a session id, its SHA-1 (a sid is
//! a live refresh token and never goes into a key name as it is; Valkey's Lua has SHA-1,
//! not SHA-256); for a rotated token, its family's hash, which names every token of the
//! family (and is a key name already: `refresh:<family>`).

use crate::domain::rotation::{Lookup, Presented};

/// The id a revoked session with session id `sid` is remembered under.
pub(crate) fn sid_id(sid: &str) -> String {
    sha1_smol::Sha1::from(sid).digest().to_string()
}

/// The id a presented refresh token's session would be remembered under.
pub(crate) fn presented_id(presented: &Presented) -> String {
    match &presented.lookup {
        Lookup::Sid(sid) => sid_id(sid),
        Lookup::Family(family) => family.clone(),
    }
}

/// Every id a session is remembered under: its sid's, and its family's when it has one.
pub(crate) fn ids(sid: &str, family: Option<&str>) -> Vec<String> {
    std::iter::once(sid_id(sid))
        .chain(family.map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sid_is_remembered_by_its_sha1_never_as_it_is() {
        let sid = "ab".repeat(32);
        let id = sid_id(&sid);
        assert_eq!(id.len(), 40);
        assert_ne!(id, sid);
        // Known answer: SHA-1 of "abc".
        assert_eq!(sid_id("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        let presented = Presented::parse(&sid).expect("a sid");
        assert_eq!(presented_id(&presented), id);
        assert_eq!(ids(&sid, Some("f00d")), [id, "f00d".to_owned()]);
    }
}
