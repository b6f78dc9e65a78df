//! The identity headers a gateway puts on the requests it lets through, shared by both
//! gateway doors (Envoy's ext_authz `Check` and HTTP forward auth): their names, and the
//! one rule for which client-sent headers would pass for ours.

use crate::domain::view::SessionView;

/// The upstream request header naming the user's DID.
pub const DID_HEADER: &str = "x-barazo-did";
/// The upstream request header naming the user's handle.
pub const HANDLE_HEADER: &str = "x-barazo-handle";
/// The upstream request header naming the session (the SHA-256 of its id, as
/// `Session.session_key`: it identifies the session without being a credential).
pub const SESSION_KEY_HEADER: &str = "x-barazo-session-key";
/// The prefix of every header the service vouches for; a client's own never pass.
pub const HEADER_PREFIX: &str = "x-barazo-";

/// The headers set on an allowed request, which overwrite any the client sent.
pub const SET_HEADERS: [&str; 3] = [DID_HEADER, HANDLE_HEADER, SESSION_KEY_HEADER];

/// What each identity header says of `session`: the one mapping both doors send upstream.
pub(crate) fn identity_of(session: &SessionView) -> [(&'static str, String); 3] {
    [
        (DID_HEADER, session.did().to_owned()),
        (HANDLE_HEADER, session.handle().to_owned()),
        (SESSION_KEY_HEADER, session.session_key()),
    ]
}

/// Whether a header name would pass for one of ours upstream: it does once every character
/// but letters and digits reads as `-`, in any case. CGI, WSGI, Rack and PHP upstreams fold
/// `_` (and PHP `.`) into one `HTTP_X_BARAZO_*` variable, so `x_barazo_did` or
/// `x-barazo.did` would join the real `x-barazo-did`.
pub fn reads_as_ours(name: &str) -> bool {
    name.len() >= HEADER_PREFIX.len()
        && name.bytes().zip(HEADER_PREFIX.bytes()).all(|(got, ours)| {
            let folded = if got.is_ascii_alphanumeric() {
                got.to_ascii_lowercase()
            } else {
                b'-'
            };
            folded == ours
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_spelling_that_folds_into_ours_is_ours() {
        for name in [
            "x-barazo-did",
            "X-Barazo-Did",
            "X_BARAZO_ROLE",
            "x-barazo.did",
            "x_barazo-",
            "x-barazo-",
        ] {
            assert!(reads_as_ours(name), "{name}");
        }
        for name in [
            "x-barazoo",
            "x_barazoo",
            "x-barazo",
            "barazo-did",
            "accept",
            "",
        ] {
            assert!(!reads_as_ours(name), "{name}");
        }
    }
}
