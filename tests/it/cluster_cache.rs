//! The validation cache in cluster mode: an invalidation feed on every primary, live only
//! while all of them are; a revocation by any writer on the owning node reaches the cache
//! (one by another replica: `cache.rs`, on both topologies); a node's loss drops the cache
//! at once.

use crate::cache::{ENTRIES, HITS, RESETS, cache, eventually, metric};
use crate::support::{Backend, TestApp, config, unique_did};
use barazo_session::config::StoreKind;
use std::collections::BTreeMap;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const PREFIX: &str = "barazo:session:";

/// A server on a fresh three-primary cluster, with its admin listener.
async fn spawn() -> TestApp {
    TestApp::spawn_with(Backend::Cluster, &["--metrics-listen", "127.0.0.1:0"]).await
}

/// A server (its cache on, its admin listener) on the cluster of seeds `urls`, once
/// SERVING.
pub(crate) async fn server_on(urls: &str) -> TestApp {
    let config = config(
        StoreKind::Valkey,
        Some(urls),
        &[
            "--valkey-mode",
            "cluster",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let server = TestApp::spawn_config(config, None, None).await;
    server.wait_for_health(ServingStatus::Serving).await;
    server
}

/// A second replica of the service on `app`'s cluster.
pub(crate) async fn replica(app: &TestApp) -> TestApp {
    server_on(&app.cluster.as_ref().expect("a cluster").urls()).await
}

/// Any writer on the node that owns the key (the TypeScript AppView, an operator): a `DEL`
/// of the session's data or of the access key alone ends the cached answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_delete_on_the_owning_node_ends_the_cached_answer() {
    let app = spawn().await;
    let mut conn = app.cluster.as_ref().expect("cluster").connection().await;
    let by_data = app.create(&unique_did(), "alice.test").await;
    let by_access = app.create(&unique_did(), "bob.test").await;
    cache(&app, &by_data.access_token).await;
    cache(&app, &by_access.access_token).await;

    let _: i64 = redis::cmd("DEL")
        .arg(format!("{PREFIX}data:{}", by_data.refresh_token))
        .query_async(&mut conn)
        .await
        .expect("DEL data");
    let _: i64 = redis::cmd("DEL")
        .arg(format!(
            "{PREFIX}access:{}",
            crate::support::sha256_hex(&by_access.access_token)
        ))
        .query_async(&mut conn)
        .await
        .expect("DEL access");
    for token in [&by_data.access_token, &by_access.access_token] {
        eventually("the deleted session stops validating", || async {
            !app.validate(token).await.valid
        })
        .await;
    }
}

/// The primaries `app`'s cluster feeds are live on, each with its slot count, from its
/// `/metrics` (empty while its cache is off).
pub(crate) async fn watched_by(app: &TestApp) -> BTreeMap<String, u64> {
    let admin = app.metrics_addr.expect("admin listener");
    let text = crate::security::metrics_text(admin).await;
    text.lines()
        .filter_map(|line| {
            let rest =
                line.strip_prefix("barazo_session_validation_cache_feed_slots{node_id=\"")?;
            let (id, value) = rest.split_once("\"} ")?;
            Some((id.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// A primary's death drops every cached answer at once (its feed closed), and no answer is
/// served from memory until the cluster has a primary for every slot and a feed on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_drops_the_cache_until_every_primary_has_a_feed() {
    let mut app = spawn().await;
    let created = app.create(&unique_did(), "alice.test").await;
    cache(&app, &created.access_token).await;
    // Published just after the cache went live: waited for, then checked whole.
    let cluster = app.cluster.as_ref().expect("cluster");
    eventually(
        "the live feeds report every primary with its slots",
        || async { watched_by(&app).await == cluster.slots_per_primary().await },
    )
    .await;
    let watched = watched_by(&app).await;
    assert_eq!(watched.len(), 3, "three primaries: {watched:?}");
    assert_eq!(watched.values().sum::<u64>(), 16_384, "every slot");
    let (resets, hits) = (metric(&app, RESETS).await, metric(&app, HITS).await);
    app.cluster.as_mut().expect("cluster").node_mut(0).kill();
    eventually("the cache resets", || async {
        metric(&app, RESETS).await > resets
    })
    .await;
    assert!(
        watched_by(&app).await.is_empty(),
        "no feed reported while off"
    );
    // Answered by Valkey, or UNAVAILABLE when the token's keys were on the dead node:
    // never from memory, never "invalid".
    for _ in 0..5 {
        match app.try_validate(&created.access_token).await {
            Ok(answer) => assert!(answer.valid),
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
    }
    assert_eq!(metric(&app, HITS).await, hits, "no answer from memory");
    assert_eq!(metric(&app, ENTRIES).await, 0.0);
}
