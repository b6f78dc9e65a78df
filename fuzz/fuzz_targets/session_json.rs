//! `SessionRecord::from_json` never panics, and every record it accepts survives
//! `to_json` -> `from_json` unchanged.
#![no_main]

use barazo_session::domain::SessionRecord;
use libfuzzer_sys::fuzz_target;

fn check(s: &str) {
    if let Ok(record) = SessionRecord::from_json(s) {
        let json = record.to_json();
        match SessionRecord::from_json(&json) {
            Ok(again) => assert!(
                again == record,
                "round trip changed the record: input {s:?}, to_json {json:?}"
            ),
            Err(e) => panic!("to_json output does not parse: input {s:?}, to_json {json:?}: {e}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(s) => check(s),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});
