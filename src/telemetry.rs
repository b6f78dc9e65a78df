//! Log output: `tracing` events to stderr, human-readable or JSON.
//!
//! Nothing secret is ever passed to a log macro in this crate: tokens and session ids
//! appear at most as the first 8 hex chars of their SHA-256 (see `session::log_prefix`).

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in files or log shippers.
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests, or an embedding program) keeps the first subscriber.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
