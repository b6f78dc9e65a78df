//! What Valkey's configuration means for sessions, as deploy/README.md ("Valkey sizing and
//! durability") tells operators: what a crash with RDB snapshots only undoes, and what
//! still works when Valkey is full under `maxmemory-policy noeviction`.

use crate::support::{TestApp, Valkey, unique_did};
use barazo_session::config::StoreKind;
use std::path::PathBuf;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// A directory for one test's RDB file, removed when dropped.
struct DataDir(PathBuf);

impl DataDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("barazo-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the data directory");
        Self(path)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn command(valkey: &Valkey, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut valkey.client().await)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Which tokens validate after Valkey crashed and came back from its files, for the
/// sessions of a `crash` run.
#[derive(Debug, PartialEq, Eq)]
struct AfterCrash {
    /// A session created before the snapshot.
    kept: bool,
    /// The token a refresh after the snapshot issued.
    refreshed_new: bool,
    /// The token that refresh superseded.
    refreshed_old: bool,
    /// A session logged out after the snapshot.
    logged_out: bool,
    /// A session revoked by DeleteAllSessionsForDid after the snapshot.
    taken_down: bool,
    /// A session created after the snapshot.
    late: bool,
}

/// Sessions, an RDB snapshot (SAVE), then a refresh, a logout, a takedown and a login;
/// Valkey killed (SIGKILL: nothing saved on the way down) and started again from its
/// files in a directory of its own; `persistence` is its extra configuration.
async fn crash(name: &str, persistence: &[&str]) -> AfterCrash {
    let dir = DataDir::new(name);
    let mut flags = vec!["--dir", dir.0.to_str().expect("UTF-8 temp dir")];
    flags.extend_from_slice(persistence);
    let valkey = Valkey::start_with(&flags);
    let mut app = TestApp::spawn_against(StoreKind::Valkey, Some(valkey), &[]).await;
    app.wait_for_health(ServingStatus::Serving).await;

    let kept = app.create(&unique_did(), "kept.test").await;
    let refreshed = app.create(&unique_did(), "refreshed.test").await;
    let logged_out = app.create(&unique_did(), "logged-out.test").await;
    let taken_down_did = unique_did();
    let taken_down = app.create(&taken_down_did, "taken-down.test").await;
    command(app.valkey(), &["SAVE"]).await;

    let new_access = app
        .refresh_tab(&refreshed.refresh_token, &refreshed.access_token)
        .await
        .expect("refresh")
        .access_token;
    assert!(app.delete(&logged_out.refresh_token).await.expect("logout"));
    assert_eq!(app.delete_all(&taken_down_did).await.expect("takedown"), 1);
    let late = app.create(&unique_did(), "late.test").await;

    app.valkey_mut().kill();
    app.wait_for_health(ServingStatus::NotServing).await;
    app.valkey_mut().restart();
    app.wait_for_health(ServingStatus::Serving).await;

    let after = AfterCrash {
        kept: app.validate(&kept.access_token).await.valid,
        refreshed_new: app.validate(&new_access).await.valid,
        refreshed_old: app.validate(&refreshed.access_token).await.valid,
        logged_out: app.validate(&logged_out.access_token).await.valid,
        taken_down: app.validate(&taken_down.access_token).await.valid,
        late: app.validate(&late.access_token).await.valid,
    };
    // Whatever was lost, a session that is there still refreshes, one that is not is
    // NOT_FOUND (the user logs in again), never an error.
    let late_refresh = app.refresh(&late.refresh_token).await;
    assert_eq!(after.late, late_refresh.is_ok(), "{late_refresh:?}");
    app.refresh(&refreshed.refresh_token)
        .await
        .expect("the refreshed session survives either way");
    after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_with_rdb_only_undoes_everything_since_the_snapshot() {
    assert_eq!(
        crash("rdb", &[]).await,
        AfterCrash {
            kept: true,
            // The refresh is undone: its token is gone and the superseded one validates
            // again, until its own 15-minute expiry.
            refreshed_new: false,
            refreshed_old: true,
            // Revocations are undone: logged out and taken down, yet valid again.
            logged_out: true,
            taken_down: true,
            // The login is lost.
            late: false,
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_with_an_append_only_file_undoes_nothing_written() {
    // appendfsync always, so the test needs no wait; deploy/valkey.conf's everysec may
    // lose the last second of writes.
    assert_eq!(
        crash("aof", &["--appendonly", "yes", "--appendfsync", "always"]).await,
        AfterCrash {
            kept: true,
            refreshed_new: true,
            refreshed_old: false,
            logged_out: false,
            taken_down: false,
            late: true,
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_valkey_with_noeviction_refuses_only_new_sessions() {
    let app = TestApp::spawn_with(StoreKind::Valkey, &[]).await;
    let did = unique_did();
    let first = app.create(&did, "alice.test").await;
    let second = app.create(&did, "alice.test").await;
    let other = app.create(&unique_did(), "bob.test").await;

    // Full: maxmemory below what is used, nothing may be evicted.
    let info = match command(app.valkey(), &["INFO", "memory"]).await {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes).expect("UTF-8 INFO"),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("INFO answered {other:?}"),
    };
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO");
    let limit = (used / 2).to_string();
    command(
        app.valkey(),
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    )
    .await;
    command(app.valkey(), &["CONFIG", "SET", "maxmemory", &limit]).await;

    // A login needs memory: refused, and said to be the store's fault, not the caller's.
    let refused = app
        .client
        .clone()
        .create_session(barazo_session::proto::CreateSessionRequest {
            did: unique_did(),
            handle: "carol.test".into(),
            ..Default::default()
        })
        .await
        .expect_err("no memory for a new session");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // Everything else goes on: validation (and the health probe, the same read-only
    // script), a tab's refresh (it replaces the token it revokes), logout, takedown.
    assert!(app.validate(&first.access_token).await.valid);
    let refreshed = app
        .refresh_tab(&other.refresh_token, &other.access_token)
        .await
        .expect("refresh");
    assert!(app.validate(&refreshed.access_token).await.valid);
    assert!(app.delete(&first.refresh_token).await.expect("logout"));
    assert_eq!(app.delete_all(&did).await.expect("takedown"), 1);
    assert!(!app.validate(&second.access_token).await.valid);
    assert_eq!(app.health_status().await, ServingStatus::Serving);
}
