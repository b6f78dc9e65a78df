//! Rotated refresh tokens: their format, how a successor is derived, and how a presented
//! refresh token names its session without the token ever reaching Valkey.
//!
//! A rotated refresh token is 64 lowercase hex characters, like every token, laid out as
//! `family (24) ‖ secret (32) ‖ tag (8)`:
//!
//! - the **family** is the same for every token of one session, and names it in Valkey:
//!   `<prefix>refresh:<sha256(family)>` → the sid. So any token of the session, current or
//!   long replaced, finds it, which is what reuse detection needs; the family alone grants
//!   nothing.
//! - the **tag** (the first 8 hex of the SHA-256 of the rest) tells a rotated token from a
//!   session id (a TypeScript-era cookie) without a store round trip, so only digests of
//!   rotated tokens are ever sent to Valkey: neither a dump nor `MONITOR` shows one. A
//!   session id passes the tag check with probability 2⁻³²; such a session's first refresh
//!   then answers NOT_FOUND (its user logs in again).
//! - the successor of a token is derived from it and a random nonce stored with the
//!   session: `derive(previous, nonce)`. A concurrent use of the previous token within the
//!   grace gets the stored nonce back and so the very same successor, while the session
//!   stores only digests (the nonce without the previous token yields nothing). A token
//!   rotated away from earlier, still inside the grace, reaches the current one along the
//!   nonces of the rotations since ([`successor_along`]).

use crate::domain::{Token, is_well_formed_token, sha256_hex};

/// Hex characters of the family part.
const FAMILY_LEN: usize = 24;
/// Hex characters of the family and secret parts together (the tag follows).
const BODY_LEN: usize = 56;

/// How a presented refresh token names its session.
#[derive(Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A session id (a session whose refresh token was never rotated, or an old cookie of
    /// one that was): its data key is `data:<sid>`.
    Sid(String),
    /// A rotated token: the SHA-256 of its family, `refresh:<family hash>` → the sid.
    Family(String),
}

/// A refresh token as presented, reduced to what the store may see.
#[derive(Clone)]
pub struct Presented {
    /// How to find its session.
    pub lookup: Lookup,
    /// SHA-256 of the whole token, compared with the session's current and rotated-away ones.
    pub token_hash: String,
}

impl Presented {
    /// Reads a presented refresh token; `None` when it cannot be one (not 64 lowercase hex).
    pub fn parse(token: &str) -> Option<Self> {
        if !is_well_formed_token(token) {
            return None;
        }
        let lookup = if is_rotated(token) {
            Lookup::Family(sha256_hex(&token[..FAMILY_LEN]))
        } else {
            Lookup::Sid(token.to_owned())
        };
        Some(Self {
            lookup,
            token_hash: sha256_hex(token),
        })
    }

    /// The sid, when the token is one.
    pub fn sid(&self) -> Option<&str> {
        match &self.lookup {
            Lookup::Sid(sid) => Some(sid),
            Lookup::Family(_) => None,
        }
    }
}

/// Whether `token` is a well-formed rotated refresh token (its tag matches).
pub fn is_rotated(token: &str) -> bool {
    is_well_formed_token(token) && tag(&token[..BODY_LEN]) == token[BODY_LEN..]
}

fn tag(body: &str) -> String {
    sha256_hex(&format!("barazo-refresh-tag:{body}"))[..64 - BODY_LEN].to_owned()
}

fn assemble(family: &str, secret: &str) -> String {
    let body = format!("{family}{secret}");
    let tag = tag(&body);
    body + &tag
}

/// A session's first rotated refresh token (a new family), for `CreateSession` with
/// rotation on.
pub fn first_token() -> Result<String, getrandom::Error> {
    let family = Token::generate()?;
    let secret = Token::generate()?;
    Ok(assemble(
        &family.expose()[..FAMILY_LEN],
        &secret.expose()[..BODY_LEN - FAMILY_LEN],
    ))
}

/// The successor of `previous` under `nonce`: the same family (a session id, which has
/// none, gets one derived from it and the nonce), a secret derived from both.
pub fn successor(previous: &str, nonce: &str) -> String {
    let family = if is_rotated(previous) {
        previous[..FAMILY_LEN].to_owned()
    } else {
        sha256_hex(&format!("barazo-refresh-family:{previous}:{nonce}"))[..FAMILY_LEN].to_owned()
    };
    let secret = sha256_hex(&format!("barazo-refresh-successor:{previous}:{nonce}"));
    assemble(&family, &secret[..BODY_LEN - FAMILY_LEN])
}

/// The token `nonces` lead to from `token`, one [`successor`] per nonce: how a token rotated
/// away from earlier within the grace reaches the session's current one
/// ([`crate::domain::SessionRecord::successor_path`] gives the nonces).
pub fn successor_along(token: &str, nonces: &[&str]) -> String {
    nonces
        .iter()
        .fold(token.to_owned(), |token, nonce| successor(&token, nonce))
}

/// SHA-256 of a rotated token's family: the name of its `refresh:` key.
pub fn family_hash(token: &str) -> String {
    sha256_hex(token.get(..FAMILY_LEN).unwrap_or(token))
}

/// What a refresh with rotation on offers the store: if the presented token is the
/// current one, the session moves to this successor.
#[derive(Clone)]
pub struct Candidate {
    /// The nonce the successor is derived with, stored with the session.
    pub nonce: String,
    /// SHA-256 of the successor.
    pub successor_hash: String,
    /// SHA-256 of the successor's family (used when the session has none yet).
    pub family_hash: String,
}

impl Candidate {
    /// A fresh candidate successor of the presented `token`.
    pub fn new(token: &str) -> Result<Self, getrandom::Error> {
        let nonce = Token::generate()?.into_string();
        let next = successor(token, &nonce);
        Ok(Self {
            successor_hash: sha256_hex(&next),
            family_hash: family_hash(&next),
            nonce,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_tokens_are_tokens_and_tell_themselves_from_session_ids() {
        let first = first_token().expect("rng");
        assert!(is_well_formed_token(&first) && is_rotated(&first));
        let sid = Token::generate().expect("rng").into_string();
        assert!(!is_rotated(&sid));
        let mut forged = first.clone();
        forged.replace_range(30..31, if &first[30..31] == "0" { "1" } else { "0" });
        assert!(!is_rotated(&forged), "a changed secret breaks the tag");
    }

    #[test]
    fn successors_are_derived_alike_and_keep_the_family() {
        let first = first_token().expect("rng");
        let a = successor(&first, "n1");
        assert_eq!(a, successor(&first, "n1"), "the same for concurrent uses");
        assert_ne!(a, successor(&first, "n2"));
        assert!(is_rotated(&a));
        assert_eq!(family_hash(&a), family_hash(&first));
        // A session id's successor starts a family of its own.
        let sid = "ab".repeat(32);
        let migrated = successor(&sid, "n1");
        assert!(is_rotated(&migrated));
        assert_eq!(
            family_hash(&successor(&migrated, "n2")),
            family_hash(&migrated)
        );
    }

    #[test]
    fn presented_tokens_are_looked_up_by_digest_or_as_a_session_id() {
        let first = first_token().expect("rng");
        let presented = Presented::parse(&first).expect("well formed");
        assert!(
            presented.lookup == Lookup::Family(family_hash(&first)),
            "by family digest"
        );
        assert_eq!(presented.token_hash, sha256_hex(&first));
        let sid = "cd".repeat(32);
        assert_eq!(
            Presented::parse(&sid).expect("sid").sid(),
            Some(sid.as_str())
        );
        assert!(Presented::parse("short").is_none());
    }
}
