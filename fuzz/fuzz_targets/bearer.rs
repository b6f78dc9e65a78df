//! The service-key path: `authorization` header bytes → `presented_key` → the policy's
//! digest comparison. Never panics; a key is found only in a `Bearer ` credential (scheme
//! in any case), with no spaces around it; a call is allowed only with one of the policy's
//! keys, as the caller that holds it, and anything else is refused as unauthenticated.
#![no_main]

use barazo_session::authz::{Denial, Policy, AuthorizationHeader, presented_key};
use barazo_session::domain::sha256_hex;
use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

/// The callers and their keys (the seeds hold the right headers).
const KEYS: [(&str, &str); 2] = [("appview-auth", "auth-key"), ("plugins", "plugin-key")];

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    let text = KEYS
        .iter()
        .map(|(caller, key)| {
            format!(
                "[callers.{caller}]\nkeys_sha256 = [\"{}\"]\nallow = [\"ValidateAccessToken\"]\n",
                sha256_hex(key)
            )
        })
        .collect::<String>();
    match Policy::parse(&text) {
        Ok(policy) => policy,
        Err(err) => panic!("the target's own policy is refused: {err}"),
    }
});

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        // http refuses it before any service sees it.
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value);
    let presented = presented_key(&headers);
    let key = match presented {
        AuthorizationHeader::Key(key) => Some(key),
        AuthorizationHeader::Nothing => panic!("a header was sent"),
        AuthorizationHeader::NotAKey => None,
    };
    if let Some(key) = key {
        let text = std::str::from_utf8(data).expect("a found key comes from visible ASCII");
        assert!(
            text.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("bearer ")),
            "key {key:?} from {text:?}"
        );
        assert_eq!(key, key.trim(), "spaces around the key are not part of it");
        assert!(text.contains(key), "key {key:?} is not in {text:?}");
    }
    let holder = key.and_then(|key| KEYS.iter().find(|(_, known)| *known == key));
    match (POLICY.authorize("ValidateAccessToken", &[], presented), holder) {
        (Ok(caller), Some((expected, _))) => assert_eq!(caller, *expected),
        (Err(Denial::Unauthenticated(_)), None) => {}
        (verdict, holder) => panic!("key {key:?} (held by {holder:?}) answered {verdict:?}"),
    }
});
