//! The tool's own DIDs: every session it creates belongs to one of them, so that its
//! sessions are never mistaken for users' and can all be deleted when it is done.
//!
//! A DID is `did:web:session-bench.invalid:run-<unix seconds>-<6 hex>:<server>:<n>`.
//! `.invalid` is reserved (RFC 2606) and never resolves, so no real account can have such a
//! `did:web`; the name says which tool made it, the run part which run, and `<server>` and
//! `<n>` number the servers of the run and the DIDs used on each. Every DID holds exactly
//! one session, as a user who logs in once does, so the create path costs what it costs for
//! a real login (the DID's index has one member to prune).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// What every DID of the tool starts with.
pub const DID_PREFIX: &str = "did:web:session-bench.invalid:";

/// The handle of every session the tool creates (`.invalid` is an accepted handle TLD).
pub const HANDLE: &str = "session-bench.invalid";

/// One run of the tool: its DIDs differ from every other run's.
#[derive(Clone, Debug)]
pub struct Run {
    id: String,
}

impl Run {
    /// A new run, named after the time it started and 24 random bits (two runs started in
    /// the same second, on two machines, still differ).
    pub fn new() -> Result<Self, getrandom::Error> {
        let mut random = [0u8; 3];
        getrandom::fill(&mut random)?;
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Self {
            id: format!("run-{seconds}-{}", hex::encode(random)),
        })
    }

    /// `run-<unix seconds>-<6 hex>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The common start of this run's DIDs, e.g. for a Valkey `SCAN` pattern.
    pub fn did_prefix(&self) -> String {
        format!("{DID_PREFIX}{}:", self.id)
    }

    /// The DIDs of the `server`-th server of this run.
    pub fn ledger(&self, server: usize) -> Ledger {
        Ledger {
            prefix: format!("{}{server}:", self.did_prefix()),
            issued: AtomicUsize::new(0),
        }
    }
}

/// The DIDs used on one server: `<prefix><n>` for every `n` below [`Ledger::issued`].
///
/// A DID is issued before the call that creates its session, so the ledger also covers
/// sessions whose creation answer was lost (a timeout, an interrupted call).
#[derive(Debug)]
pub struct Ledger {
    prefix: String,
    issued: AtomicUsize,
}

impl Ledger {
    /// A DID no other call of this run has used.
    pub fn next(&self) -> String {
        self.did(self.issued.fetch_add(1, Ordering::Relaxed))
    }

    /// How many DIDs were issued.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::Relaxed)
    }

    /// The `n`-th DID.
    pub fn did(&self, n: usize) -> String {
        format!("{}{n}", self.prefix)
    }

    /// A DID of this server that never holds a session: for checking, before anything is
    /// created, that the server lets the tool delete its sessions.
    pub fn probe_did(&self) -> String {
        format!("{}probe", self.prefix)
    }
}

/// Whether `did` is one of the tool's (of any run).
pub fn is_bench_did(did: &str) -> bool {
    did.strip_prefix(DID_PREFIX)
        .is_some_and(|rest| rest.starts_with("run-"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use barazo_session::domain::{validate_did, validate_handle};

    #[test]
    fn every_did_and_the_handle_pass_the_servers_validation() {
        let run = Run::new().expect("random");
        let ledger = run.ledger(1);
        for did in [ledger.next(), ledger.next(), ledger.probe_did()] {
            assert_eq!(validate_did(&did), Ok(()), "{did}");
            assert!(is_bench_did(&did), "{did}");
            assert!(did.starts_with(&run.did_prefix()), "{did}");
        }
        assert_eq!(validate_handle(HANDLE), Ok(()));
    }

    #[test]
    fn dids_are_numbered_per_server_and_unique_per_run() {
        let run = Run::new().expect("random");
        let (first, second) = (run.ledger(0), run.ledger(1));
        assert_eq!(first.next(), format!("{}0:0", run.did_prefix()));
        assert_eq!(first.next(), format!("{}0:1", run.did_prefix()));
        assert_eq!(second.next(), format!("{}1:0", run.did_prefix()));
        assert_eq!(first.issued(), 2);
        assert_eq!(first.did(1), format!("{}0:1", run.did_prefix()));
        let other = Run::new().expect("random");
        assert_ne!(run.id(), other.id(), "24 random bits differ");
        assert!(!is_bench_did("did:plc:z72i7hdynmk6r22z27h6tvur"));
        assert!(!is_bench_did("did:web:session-bench.invalid"));
    }
}
