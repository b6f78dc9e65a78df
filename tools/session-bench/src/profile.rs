//! Debug builds give meaningless figures: an unoptimised load tool or server is several
//! times slower than a release build (the quick start's `cargo run` server is one). The
//! tool says so when it is one itself, and when a server it loads says it is one (a debug
//! `barazo-session` marks every response, see the library's `profile` module; a release
//! build marks nothing, so a server that says nothing is taken for a release build).

use barazo_session::observe::profile::HEADER;
use tonic::metadata::MetadataMap;

/// The warning for this tool, when it is a debug build.
pub fn own_warning() -> Option<String> {
    cfg!(debug_assertions).then(|| {
        "session-bench is a debug build: its own slowness makes every figure meaningless; run a release build (cargo build --release --bins; ./target/release/session-bench)".to_owned()
    })
}

/// The warning for a server whose answer carried `metadata`, when it says it is a debug
/// build.
pub fn server_warning(label: &str, metadata: &MetadataMap) -> Option<String> {
    let debug = metadata
        .get(HEADER)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value == "debug");
    debug.then(|| {
        format!(
            "the server {label} is a debug build (its answers say {HEADER}: debug): unoptimised and several times slower, so its figures are meaningless; run a release build (cargo build --release)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_server_that_says_debug_is_called_one() {
        let mut metadata = MetadataMap::new();
        assert_eq!(server_warning("x", &metadata), None);
        metadata.insert(HEADER, "release".parse().expect("ascii"));
        assert_eq!(server_warning("x", &metadata), None);
        metadata.insert(HEADER, "debug".parse().expect("ascii"));
        let warning = server_warning("at 10.0.0.5:50051", &metadata).expect("a warning");
        assert!(
            warning.contains("at 10.0.0.5:50051 is a debug build"),
            "{warning}"
        );
        assert_eq!(own_warning().is_some(), cfg!(debug_assertions));
    }
}
