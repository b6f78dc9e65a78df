//! `Policy::parse` never panics on any text, and a policy it accepts refuses every call
//! that carries no credential, whatever its callers and allow lists say.
#![no_main]

use barazo_session::authz::{Denial, Policy, AuthorizationHeader};
use barazo_session::rpc::{REFLECTION, Rpc};
use libfuzzer_sys::fuzz_target;

fn check(text: &str) {
    let Ok(policy) = Policy::parse(text) else {
        return;
    };
    let methods = Rpc::ALL.iter().map(|rpc| rpc.method()).chain([REFLECTION]);
    for method in methods {
        match policy.authorize(method, &[], AuthorizationHeader::Nothing) {
            Err(Denial::Unauthenticated(why)) => {
                assert!(why.contains(method), "the refusal names {method}: {why:?}");
            }
            other => panic!("{method} without a credential answered {other:?}; policy {text:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(s) => check(s),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});
