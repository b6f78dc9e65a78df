//! `reads_as_ours`, the rule both gateway doors use to refuse or remove a client's own
//! identity headers, against what the upstreams that fold header names make of a name: CGI,
//! WSGI, Rack and PHP turn it into `HTTP_` + the name upper-cased with every character but
//! letters and digits as `_`. Any header name `http` accepts that such an upstream would
//! read as an `HTTP_X_BARAZO_*` variable must read as ours, and no other.
#![no_main]

use barazo_session::api::headers::{HEADER_PREFIX, SET_HEADERS, reads_as_ours};
use http::header::HeaderName;
use libfuzzer_sys::fuzz_target;

/// The variable a CGI-style upstream makes of a header name.
fn cgi_variable(name: &str) -> String {
    let folded: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("HTTP_{folded}")
}

fn ours_upstream(name: &str) -> bool {
    cgi_variable(name).starts_with(&cgi_variable(HEADER_PREFIX))
}

fuzz_target!(|data: &[u8]| {
    // Only names a client can send at all: `http` refuses the rest before any service.
    let Ok(name) = HeaderName::from_bytes(data) else {
        return;
    };
    let name = name.as_str();
    assert_eq!(
        reads_as_ours(name),
        ours_upstream(name),
        "{name:?} reads upstream as {}",
        cgi_variable(name)
    );
    for set in SET_HEADERS {
        assert!(reads_as_ours(set), "{set} is one of ours");
    }
});
