//! `is_well_formed_token` never panics and accepts only 64 lowercase hex characters.
#![no_main]

use barazo_session::domain::is_well_formed_token;
use libfuzzer_sys::fuzz_target;

fn check(s: &str) {
    if is_well_formed_token(s) {
        assert_eq!(s.chars().count(), 64, "accepted token of wrong length: {s:?}");
        assert!(
            s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "accepted token with a character outside [0-9a-f]: {s:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(s) => check(s),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});
