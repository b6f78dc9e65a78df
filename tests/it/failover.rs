//! A Valkey failover behind one address: the replica is promoted and new connections go to
//! it while established ones stay on the old primary, which is still up. No replica of the
//! service may then answer from a cache whose feed listens to the old primary.

use crate::cache::{cache, eventually, metric};
use crate::support::proxy::Proxy;
use crate::support::{TestApp, Valkey, unique_did};
use barazo_session::config::StoreKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;

const PREFIX: &str = "barazo:session:";
const UNVERIFIED: &str = "barazo_session_validation_cache_unverified_total";

fn addr(valkey: &Valkey) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], valkey.port()))
}

/// A replica of the service reaching Valkey through `url`, with its cache on.
async fn service(url: &str) -> TestApp {
    let app = TestApp::spawn_against(
        StoreKind::Valkey,
        None,
        &["--metrics-listen", "127.0.0.1:0", "--valkey-url", url],
    )
    .await;
    app.wait_for_health(ServingStatus::Serving).await;
    app
}

async fn info(valkey: &Valkey, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut valkey.client().await)
        .await
        .expect("INFO")
}

/// Kills the clients of `valkey` that match `doomed` (a `CLIENT LIST` line), but not the
/// connection asking.
async fn kill_clients(valkey: &Valkey, doomed: impl Fn(&str) -> bool) -> usize {
    let mut conn = valkey.client().await;
    let own: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut conn)
        .await
        .expect("CLIENT ID");
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .expect("CLIENT LIST");
    let mut killed = 0;
    for line in list.lines().filter(|line| doomed(line)) {
        let Some(id) = line
            .split(' ')
            .find_map(|field| field.strip_prefix("id="))
            .and_then(|id| id.parse::<i64>().ok())
        else {
            continue;
        };
        if id == own {
            continue;
        }
        let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut conn)
            .await;
        killed += 1;
    }
    killed
}

/// Whether a `CLIENT LIST` line is a tracking (feed) connection.
fn tracking(line: &str) -> bool {
    line.split(' ')
        .find_map(|field| field.strip_prefix("flags="))
        .is_some_and(|flags| flags.contains('t'))
}

/// The scenario: two service replicas behind a proxy to the primary; B caches a session's
/// answer; the replica is promoted and the proxy moves new connections to it; the command
/// connections move (`kill_all`: every connection, as Sentinel does; otherwise only the
/// command connections, the feeds stay on the old primary); A logs the session out.
/// Returns how long B still answered `valid`.
async fn failover(kill_all: bool) -> Duration {
    let old = Valkey::start();
    let new = Valkey::start_with(&["--replicaof", "127.0.0.1", &old.port().to_string()]);
    eventually("the replica is in sync", || async {
        info(&new, "replication")
            .await
            .contains("master_link_status:up")
    })
    .await;
    let proxy = Proxy::start(addr(&old)).await;
    let a = service(&proxy.url()).await;
    let b = service(&proxy.url()).await;
    let session = a.create(&unique_did(), "alice.test").await;
    cache(&b, &session.access_token).await;
    let data_key = format!("{PREFIX}data:{}", session.refresh_token);
    eventually("the session reached the replica", || async {
        redis::cmd("EXISTS")
            .arg(&data_key)
            .query_async::<bool>(&mut new.client().await)
            .await
            .expect("EXISTS")
    })
    .await;

    // The failover: promoted, and new connections go to it; the old primary stays up.
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut new.client().await)
        .await
        .expect("REPLICAOF NO ONE");
    proxy.switch(addr(&new));
    let moved = if kill_all {
        kill_clients(&old, |_| true).await
    } else {
        kill_clients(&old, |line| !tracking(line)).await
    };
    assert!(
        moved >= 2,
        "the command connections of A and B were on the old primary"
    );

    // A logs the user out, on the new primary (its first call may meet the killed connection).
    eventually("A logs the session out", || async {
        a.delete(&session.refresh_token).await.is_ok()
    })
    .await;
    let logged_out = Instant::now();
    eventually("B stops validating the revoked token", || async {
        b.try_validate(&session.access_token)
            .await
            .is_ok_and(|answer| !answer.valid)
    })
    .await;
    let stale = logged_out.elapsed();

    // B's cache is back, on the new primary: a new session is cached, and its logout seen.
    let again = a.create(&unique_did(), "bob.test").await;
    cache(&b, &again.access_token).await;
    assert!(a.delete(&again.refresh_token).await.expect("logout"));
    eventually("B drops the new session at once", || async {
        !b.validate(&again.access_token).await.valid
    })
    .await;
    if !kill_all {
        assert!(
            metric(&b, UNVERIFIED).await >= 1.0,
            "the feed left on the old primary was noticed"
        );
    }
    stale
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_left_on_the_old_primary_stops_the_cache() {
    let stale = failover(false).await;
    eprintln!("a revoked token stayed valid on B for {stale:?} after the logout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_closes_every_connection_leaves_nothing_stale() {
    let stale = failover(true).await;
    eprintln!("a revoked token stayed valid on B for {stale:?} after the logout");
}
