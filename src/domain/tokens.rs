//! Credentials: minting tokens, their shape, their SHA-256 (how the store keys them) and
//! the most of one a log line may show.

use sha2::{Digest, Sha256};

/// Length of a token (access token or refresh token / session id) in hex characters.
pub const TOKEN_HEX_LEN: usize = 64;

/// A freshly minted credential: 32 bytes from the OS CSPRNG as 64 lowercase hex chars.
///
/// Deliberately not `Debug`/`Display`, so it cannot end up in a log line by accident.
pub struct Token(String);

impl Token {
    /// Mints a new token from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Self(lower_hex(&bytes)))
    }

    /// The token itself, to hand to the caller once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Gives the token up, to hand to the caller once.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// Whether `s` has the shape of a token this service mints: exactly 64 lowercase hex chars.
///
/// Anything else (including tokens over 128 bytes) is refused before any store round trip.
pub fn is_well_formed_token(s: &str) -> bool {
    s.len() == TOKEN_HEX_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lowercase hex SHA-256 of a string: how access tokens are keyed in the store and how a
/// session id becomes its non-secret `session_key`.
pub fn sha256_hex(s: &str) -> String {
    lower_hex(&Sha256::digest(s.as_bytes()))
}

/// Lowercase hex of bytes into one exactly-sized allocation. Runs twice per validation
/// (token hash, session key); `hex::encode`'s char iterator showed in profiles.
pub(crate) fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
    // Every byte pushed is an ASCII hex digit.
    String::from_utf8(out).unwrap_or_default()
}

/// The first 8 characters of a hash: the most of any credential-derived value that may
/// appear in a log line or span.
pub fn log_prefix(hash: &str) -> &str {
    hash.get(..8).unwrap_or(hash)
}

/// Compares two byte strings without an early exit on the first difference.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_64_lowercase_hex_and_differ() {
        let a = Token::generate().expect("os rng");
        let b = Token::generate().expect("os rng");
        assert!(is_well_formed_token(a.expose()));
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn token_shape_check_refuses_everything_else() {
        let good = "0123456789abcdef".repeat(4);
        assert!(is_well_formed_token(&good));
        assert!(!is_well_formed_token(&good.to_uppercase()));
        assert!(!is_well_formed_token(&good[..63]));
        assert!(!is_well_formed_token(&format!("{good}0")));
        assert!(!is_well_formed_token(&"g".repeat(64)));
        assert!(!is_well_formed_token(&"a".repeat(200)));
        assert!(!is_well_formed_token(""));
    }

    #[test]
    fn lower_hex_matches_the_hex_crate() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(lower_hex(&bytes), hex::encode(&bytes));
        assert_eq!(lower_hex(&[]), "");
    }

    #[test]
    fn sha256_matches_node_crypto() {
        // Node: createHash('sha256').update('abc').digest('hex')
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(log_prefix(&sha256_hex("abc")), "ba7816bf");
    }
}
