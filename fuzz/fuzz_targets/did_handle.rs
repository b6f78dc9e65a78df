//! `validate_did` and `validate_handle` never panic, and whatever they accept has the
//! documented shape.
#![no_main]

use barazo_session::domain::{validate_did, validate_handle};
use libfuzzer_sys::fuzz_target;

fn check(s: &str) {
    if validate_did(s).is_ok() {
        assert!(s.starts_with("did:"), "accepted DID without \"did:\": {s:?}");
        assert!(s.len() <= 2048, "accepted DID of {} bytes", s.len());
        assert!(s.is_ascii(), "accepted non-ASCII DID: {s:?}");
    }
    if validate_handle(s).is_ok() {
        assert!(s.len() <= 253, "accepted handle of {} bytes", s.len());
        assert!(s.contains('.'), "accepted handle without '.': {s:?}");
        assert!(
            s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
            "accepted handle with a character outside [A-Za-z0-9.-]: {s:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(s) => check(s),
        // Second pass on non-UTF-8 input: replacement characters must be refused.
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});
