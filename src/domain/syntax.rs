//! What the service accepts as a DID, a handle, a session key and a device's facts: checked
//! at the API's edge, before any store round trip, each refusal naming its rule.

use super::tokens::is_well_formed_token;

/// Longest DID accepted, as the AT Protocol's DID syntax allows.
const MAX_DID_LEN: usize = 2048;
/// Longest handle accepted (a DNS name).
const MAX_HANDLE_LEN: usize = 253;
/// Longest label of a handle (a DNS label).
const MAX_LABEL_LEN: usize = 63;

/// Why a DID or handle was refused; the message names the rule, never echoes a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// The DID does not follow `did:<lowercase method>:<id>`.
    #[error("did is not a valid DID: {0}")]
    Did(&'static str),
    /// The handle is not a valid AT Protocol handle.
    #[error("handle is not a valid handle: {0}")]
    Handle(&'static str),
    /// A session key is not 64 lowercase hex characters.
    #[error("session_key is not a session key: it must be 64 lowercase hex characters")]
    SessionKey,
    /// An enum field holds a value this service does not know (a newer caller's).
    #[error("{field} is not one this service knows: {value}")]
    UnknownValue {
        /// The field, e.g. `reason`.
        field: &'static str,
        /// The number sent.
        value: i32,
    },
    /// A client's address is neither empty nor a textual IPv4 or IPv6 address.
    #[error("client.ip_address is not an IP address: give a textual IPv4 or IPv6 address, or none")]
    IpAddress,
}

/// Longest User-Agent stored, in bytes; longer ones are cut at a character boundary.
pub const MAX_USER_AGENT_BYTES: usize = 512;

/// Facts about the device a session was used from, as the AppView saw them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFacts {
    /// The browser's User-Agent, at most [`MAX_USER_AGENT_BYTES`]; empty when unknown.
    pub user_agent: String,
    /// A textual IP address in its canonical form; empty when unknown.
    pub ip_address: String,
}

impl ClientFacts {
    /// Checks and normalises what the caller sent: an over-long User-Agent is cut (never
    /// refused), an address must parse as IPv4 or IPv6 (or be empty).
    pub fn new(user_agent: &str, ip_address: &str) -> Result<Self, SyntaxError> {
        let mut cut = user_agent.len().min(MAX_USER_AGENT_BYTES);
        while !user_agent.is_char_boundary(cut) {
            cut -= 1;
        }
        let ip_address = match ip_address {
            "" => String::new(),
            text => text
                .parse::<std::net::IpAddr>()
                .map_err(|_| SyntaxError::IpAddress)?
                .to_string(),
        };
        Ok(Self {
            user_agent: user_agent[..cut].to_owned(),
            ip_address,
        })
    }
}

/// Checks a session key: the lowercase hex SHA-256 of a session id.
pub fn validate_session_key(key: &str) -> Result<(), SyntaxError> {
    if is_well_formed_token(key) {
        Ok(())
    } else {
        Err(SyntaxError::SessionKey)
    }
}

/// Checks AT Protocol DID syntax: `did:<method>:<id>`, method of lowercase letters, id of
/// `[A-Za-z0-9._:%-]` not ending in `:` or `%`, at most 2048 characters.
pub fn validate_did(did: &str) -> Result<(), SyntaxError> {
    if did.is_empty() {
        return Err(SyntaxError::Did("it is empty"));
    }
    if did.len() > MAX_DID_LEN {
        return Err(SyntaxError::Did("it is longer than 2048 characters"));
    }
    let rest = did
        .strip_prefix("did:")
        .ok_or(SyntaxError::Did("it does not start with \"did:\""))?;
    let (method, id) = rest
        .split_once(':')
        .ok_or(SyntaxError::Did("it has no method-specific identifier"))?;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(SyntaxError::Did("the method must be lowercase letters"));
    }
    if id.is_empty() {
        return Err(SyntaxError::Did("the identifier is empty"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'%' | b'-'))
    {
        return Err(SyntaxError::Did(
            "the identifier may hold only letters, digits and . _ : % -",
        ));
    }
    if id.ends_with(':') || id.ends_with('%') {
        return Err(SyntaxError::Did("it must not end in ':' or '%'"));
    }
    Ok(())
}

/// Checks AT Protocol handle syntax: a DNS name of at least two labels, at most 253
/// characters, labels of 1–63 letters/digits/hyphens not starting or ending with a hyphen,
/// the last label not starting with a digit. `handle.invalid` passes, as it should.
pub fn validate_handle(handle: &str) -> Result<(), SyntaxError> {
    if handle.is_empty() {
        return Err(SyntaxError::Handle("it is empty"));
    }
    if handle.len() > MAX_HANDLE_LEN {
        return Err(SyntaxError::Handle("it is longer than 253 characters"));
    }
    let mut labels = 0;
    let mut last = "";
    for label in handle.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return Err(SyntaxError::Handle("each label must be 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(SyntaxError::Handle(
                "labels may hold only letters, digits and hyphens",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(SyntaxError::Handle(
                "a label must not start or end with a hyphen",
            ));
        }
        labels += 1;
        last = label;
    }
    if labels < 2 {
        return Err(SyntaxError::Handle("it needs at least two labels"));
    }
    if last.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(SyntaxError::Handle(
            "the last label must not start with a digit",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_dids() {
        for did in [
            "did:plc:z72i7hdynmk6r22z27h6tvur",
            "did:web:example.com",
            "did:web:localhost%3A1234",
            "did:method:val:two",
            "did:m:v",
            "did:example:a-b_c.d%20",
        ] {
            assert_eq!(validate_did(did), Ok(()), "{did}");
        }
    }

    #[test]
    fn refuses_malformed_dids_naming_the_field() {
        for did in [
            "",
            "did",
            "did:",
            "did:plc",
            "did:plc:",
            "DID:plc:abc",
            "did:PLC:abc",
            "did:pl4c:abc",
            "did:plc:abc:",
            "did:plc:abc%",
            "did:plc:ab/c",
            "did:plc:ab c",
            "did:plc:ab#c",
            "did:plc:ab?c",
        ] {
            let err = validate_did(did).expect_err(did);
            assert!(err.to_string().starts_with("did "), "{err}");
        }
        let long = format!("did:plc:{}", "a".repeat(2041));
        assert_eq!(long.len(), 2049);
        assert!(validate_did(&long).is_err());
        assert!(validate_did(&long[..2048]).is_ok());
    }

    #[test]
    fn accepts_real_handles() {
        for handle in [
            "alice.bsky.social",
            "handle.invalid",
            "a.co",
            "xn--ls8h.test",
            "john.test",
            "8.cn",
            "a-b.c-d.example",
            "UPPER.Example.COM",
        ] {
            assert_eq!(validate_handle(handle), Ok(()), "{handle}");
        }
        let label = "a".repeat(63);
        let longest = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(longest.len(), 253);
        assert!(validate_handle(&longest).is_ok());
    }

    #[test]
    fn refuses_malformed_handles_naming_the_field() {
        let long_label = format!("{}.com", "a".repeat(64));
        let label = "a".repeat(63);
        let too_long = format!("{label}.{label}.{label}.{}", "b".repeat(62));
        for handle in [
            "",
            "alice",
            ".alice.com",
            "alice.com.",
            "alice..com",
            "-alice.com",
            "alice-.com",
            "alice.1com",
            "al_ice.com",
            "alice.com/x",
            "ali ce.com",
            "älice.com",
            long_label.as_str(),
            too_long.as_str(),
        ] {
            let err = validate_handle(handle).expect_err(handle);
            assert!(err.to_string().starts_with("handle "), "{err}");
        }
    }

    #[test]
    fn client_facts_cut_the_user_agent_and_refuse_bad_addresses() {
        let long = "é".repeat(400); // 800 bytes, two per character
        let facts = ClientFacts::new(&long, "2001:DB8::1").expect("valid");
        assert_eq!(facts.user_agent.len(), 512);
        assert_eq!(facts.ip_address, "2001:db8::1", "canonical form");
        assert!(ClientFacts::new("x", "203.0.113.7").is_ok());
        assert!(ClientFacts::new("x", "").is_ok());
        for bad in ["localhost", "1.2.3", "203.0.113.7:80", " 1.2.3.4"] {
            assert_eq!(
                ClientFacts::new("x", bad),
                Err(SyntaxError::IpAddress),
                "{bad}"
            );
        }
    }
}
