//! Deleting what the tool created. Before the load, a check that the server lets it
//! (`DeleteAllSessionsForDid` for a DID that holds nothing), so that a policy that forbids
//! it stops the tool before it has created anything. After the load, the same RPC for every
//! DID the run used, and when that fails, an account of what was left and how to delete it.

use crate::client::Client;
use crate::namespace::{Ledger, is_bench_did};
use crate::spawn::BoxError;
use barazo_session::proto::DeleteAllSessionsForDidRequest;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;

/// The RPC the tool deletes its sessions with.
pub const RPC: &str = "DeleteAllSessionsForDid";

/// Tries per DID when the server answers with a code that may pass (UNAVAILABLE, …).
const ATTEMPTS: u32 = 3;

/// The longest one deletion may take: a server that hangs must not hang the tool.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The DIDs to delete the sessions of.
#[derive(Clone)]
pub enum Dids {
    /// Every DID a ledger issued.
    Issued(Arc<Ledger>),
    /// DIDs read from a file (`--delete-dids`).
    Listed(Arc<Vec<String>>),
}

impl Dids {
    fn len(&self) -> usize {
        match self {
            Self::Issued(ledger) => ledger.issued(),
            Self::Listed(dids) => dids.len(),
        }
    }

    fn get(&self, n: usize) -> String {
        match self {
            Self::Issued(ledger) => ledger.did(n),
            Self::Listed(dids) => dids[n].clone(),
        }
    }
}

/// One deletion, retried while the server's answer may be temporary.
async fn delete(client: &mut Client, did: &str) -> Result<u64, tonic::Status> {
    let mut attempt = 1;
    loop {
        let mut request = tonic::Request::new(DeleteAllSessionsForDidRequest {
            did: did.into(),
            ..Default::default()
        });
        request.set_timeout(CALL_TIMEOUT);
        match client.delete_all_sessions_for_did(request).await {
            Ok(answer) => return Ok(answer.into_inner().deleted_count.into()),
            Err(status)
                if attempt < ATTEMPTS
                    && matches!(
                        status.code(),
                        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
                    ) =>
            {
                // A back-off before the retry, not a wait for some event.
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(status) => return Err(status),
        }
    }
}

/// Checks, before anything is created, that the server lets this caller delete sessions:
/// the tool must not leave sessions behind on a server whose policy forbids it.
pub async fn check_allowed(client: &mut Client, ledger: &Ledger) -> Result<(), BoxError> {
    match delete(client, &ledger.probe_did()).await {
        Ok(_) => Ok(()),
        Err(status) => Err(format!(
            "the server refused {RPC} ({:?}: {}). session-bench deletes every session it creates with {RPC}, so it does not start without it; nothing was created. Allow {RPC} to this caller in the server's policy (it needs CreateSession, ValidateAccessToken and RefreshSession too)",
            status.code(),
            status.message()
        )
        .into()),
    }
}

/// What a cleanup did.
pub struct Cleanup {
    /// Sessions deleted.
    pub removed: u64,
    /// DIDs whose sessions were to be deleted.
    pub dids: usize,
    /// DIDs that may still hold sessions.
    pub left: Vec<String>,
    /// Why the cleanup stopped early, if it did.
    pub error: Option<tonic::Status>,
}

/// Deletes every session of `dids`, `concurrency` calls at a time over `clients`. Stops at
/// the first deletion that fails for good (the rest would fail alike, and a failing server
/// should not be pressed harder); the DIDs not done are then in [`Cleanup::left`].
pub async fn delete_all(clients: &[Client], dids: Dids, concurrency: usize) -> Cleanup {
    let total = dids.len();
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let removed = Arc::new(AtomicU64::new(0));
    let left = Arc::new(Mutex::new(Vec::new()));
    let error = Arc::new(Mutex::new(None));
    let mut workers = Vec::new();
    for worker in 0..concurrency.clamp(1, total.max(1)) {
        let mut client = clients[worker % clients.len()].clone();
        let (dids, next, failed) = (dids.clone(), next.clone(), failed.clone());
        let (removed, left, error) = (removed.clone(), left.clone(), error.clone());
        workers.push(tokio::spawn(async move {
            while !failed.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                match delete(&mut client, &dids.get(n)).await {
                    Ok(count) => {
                        removed.fetch_add(count, Ordering::Relaxed);
                    }
                    Err(status) => {
                        failed.store(true, Ordering::Relaxed);
                        // A poisoned lock still holds the list: keep using it.
                        left.lock().unwrap_or_else(|p| p.into_inner()).push(n);
                        error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(status);
                    }
                }
            }
        }));
    }
    let mut worker_lost = None;
    for worker in workers {
        if let Err(err) = worker.await {
            worker_lost = Some(tonic::Status::internal(format!(
                "a cleanup task failed: {err}"
            )));
        }
    }
    // Every DID below `next` was taken by a worker, which finished it before looking at
    // `failed` again; the ones above were never tried.
    let mut left_over = std::mem::take(&mut *left.lock().unwrap_or_else(|p| p.into_inner()));
    left_over.extend(next.load(Ordering::Relaxed).min(total)..total);
    left_over.sort_unstable();
    let mut error = error.lock().unwrap_or_else(|p| p.into_inner()).take();
    if worker_lost.is_some() {
        // A task that died took its DID with it: the whole list is then suspect.
        error = error.or(worker_lost);
        left_over = (0..total).collect();
    }
    Cleanup {
        removed: removed.load(Ordering::Relaxed),
        dids: total,
        left: left_over.into_iter().map(|n| dids.get(n)).collect(),
        error,
    }
}

/// Reads a `--delete-dids` file: one DID per line, every one the tool's own.
pub fn read_dids(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("--delete-dids {}: cannot read it: {err}", path.display()))?;
    let mut dids = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let did = line.trim();
        if did.is_empty() {
            continue;
        }
        if !is_bench_did(did) {
            return Err(format!(
                "--delete-dids {} line {}: {did:?} is not a session-bench DID; this tool deletes only its own sessions",
                path.display(),
                number + 1
            ));
        }
        dids.push(did.to_owned());
    }
    Ok(dids)
}

/// Writes DIDs one per line.
pub fn write_dids(path: &Path, dids: &[String]) -> std::io::Result<()> {
    let mut text = dids.join("\n");
    text.push('\n');
    std::fs::write(path, text)
}

/// What was left and how to delete it, for a cleanup that did not finish: the DIDs are
/// written to `file` (so that `--delete-dids` can finish the job), and the text says so.
/// `pattern` is the DIDs' common start, for finding them in Valkey.
pub fn account_of_leftovers(cleanup: &Cleanup, file: &Path, pattern: &str) -> String {
    let why = cleanup.error.as_ref().map_or_else(
        || "it was interrupted".to_owned(),
        |status| format!("{RPC} failed: {:?}: {}", status.code(), status.message()),
    );
    let mut text = format!(
        "NOT EVERY SESSION WAS DELETED: {why}.\n  Removed {} sessions; {} of the {} DIDs used may still hold sessions (their DIDs start with {pattern}).\n  They expire by themselves after the server's session TTL (OAUTH_SESSION_TTL, 7 days by default).\n",
        cleanup.removed,
        cleanup.left.len(),
        cleanup.dids,
    );
    match write_dids(file, &cleanup.left) {
        Ok(()) => text.push_str(&format!(
            "  Their DIDs are in {file}. Delete their sessions with a caller allowed {RPC}:\n    session-bench --addr <a server on the same store> [the same --tls-* options and service key] --delete-dids {file}\n",
            file = file.display()
        )),
        Err(err) => text.push_str(&format!(
            "  Their DIDs could not be written to {}: {err}.\n",
            file.display()
        )),
    }
    text.push_str(&format!(
        "  With access to Valkey, their DID indexes are listed by: valkey-cli --scan --pattern '<key prefix>did:{pattern}*' (key prefix barazo:session: by default)."
    ));
    text
}

/// The file a run's leftover DIDs go to: in the working directory (named in full, so the
/// command printed works from anywhere), named after the run.
pub fn leftovers_file(run_id: &str) -> PathBuf {
    let name = format!("session-bench-{run_id}.dids");
    std::env::current_dir().map_or_else(|_| PathBuf::from(&name), |dir| dir.join(&name))
}
