//! Valkey Cluster specifics (the behaviour suite runs against a cluster too): a session
//! whose three keys live on three different nodes works end to end and leaves nothing, and
//! a dead node answers UNAVAILABLE (never "invalid") until it is back.

use crate::support::cluster::ValkeyCluster;
use crate::support::monitor::Monitor;
use crate::support::pki::{Ca, TempDir};
use crate::support::{Backend, TestApp, config, sha256_hex, unique_did};
use barazo_session::config::StoreKind;
use barazo_session::proto::ValidateAccessTokenRequest;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const PREFIX: &str = "barazo:session:";

/// Which of the three nodes serves `key` (slots were assigned in thirds, in node order).
async fn node_of(cluster: &ValkeyCluster, key: &str) -> usize {
    let mut conn = cluster.nodes()[0].client().await;
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("KEYSLOT");
    match slot {
        0..=5460 => 0,
        5461..=10922 => 1,
        _ => 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_spread_over_three_nodes_works_and_leaves_nothing() {
    let app = TestApp::spawn(Backend::Cluster).await;
    // Find a session whose data, access key and DID index are on three different nodes
    // (2 in 9 are; 60 tries make missing one vanishingly unlikely).
    let mut spread = None;
    for _ in 0..60 {
        let did = unique_did();
        let created = app.create(&did, "alice.test").await;
        let nodes = [
            node_of(
                app.cluster.as_ref().expect("cluster"),
                &format!("{PREFIX}data:{}", created.refresh_token),
            )
            .await,
            node_of(
                app.cluster.as_ref().expect("cluster"),
                &format!("{PREFIX}access:{}", sha256_hex(&created.access_token)),
            )
            .await,
            node_of(
                app.cluster.as_ref().expect("cluster"),
                &format!("{PREFIX}did:{did}"),
            )
            .await,
        ];
        if nodes[0] != nodes[1] && nodes[1] != nodes[2] && nodes[0] != nodes[2] {
            spread = Some((did, created));
            break;
        }
        // Clean up so the node counts below only see the chosen session.
        assert_eq!(app.delete_all(&did).await.expect("delete all"), 1);
    }
    let (did, created) = spread.expect("a session spread over three nodes");

    assert!(app.validate(&created.access_token).await.valid);
    let refreshed = app
        .refresh_tab(&created.refresh_token, &created.access_token)
        .await
        .expect("refresh");
    assert!(
        !app.validate(&created.access_token).await.valid,
        "revoked at once"
    );
    assert!(app.validate(&refreshed.access_token).await.valid);
    assert!(app.delete(&created.refresh_token).await.expect("delete"));
    assert!(!app.validate(&refreshed.access_token).await.valid);
    assert_eq!(app.delete_all(&did).await.expect("delete all"), 0);

    // Every node is empty: no data, access key or index entry left anywhere (only why
    // the revoked sessions ended, each with its TTL).
    for node in app.cluster.as_ref().expect("cluster").nodes() {
        let mut conn = node.client().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        let left: Vec<&String> = keys
            .iter()
            .filter(|key| !crate::support::is_end_record(key))
            .collect();
        assert!(left.is_empty(), "node {} still holds {left:?}", node.port());
        for key in &keys {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("PTTL");
            assert!(ttl > 0, "{key} has no TTL");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_answers_unavailable_never_invalid_and_the_cluster_heals() {
    let mut app = TestApp::spawn(Backend::Cluster).await;
    // A session on a node other than the health probe's key, so that only the PING to
    // each primary can tell readiness about it (2 in 3 sessions are; 30 tries suffice).
    let cluster = app.cluster.as_ref().expect("cluster");
    let probe_node = node_of(cluster, &format!("{PREFIX}access:health-probe")).await;
    let mut chosen = None;
    for _ in 0..30 {
        let created = app.create(&unique_did(), "alice.test").await;
        let access_key = format!("{PREFIX}access:{}", sha256_hex(&created.access_token));
        let node = node_of(cluster, &access_key).await;
        if node != probe_node {
            chosen = Some((created, node));
            break;
        }
    }
    let (created, node) = chosen.expect("a session away from the probe key's node");
    let survivor = app.cluster.as_ref().expect("cluster").nodes()[probe_node]
        .client()
        .await;

    app.cluster.as_mut().expect("cluster").node_mut(node).kill();
    let started = Instant::now();
    let status = app
        .try_validate(&created.access_token)
        .await
        .expect_err("the node holding the token is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The standalone outage tests' margin (connect and command timeouts are 500 ms).
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "took {:?}",
        started.elapsed()
    );
    // Readiness sees it through the PING to each primary, before the cluster itself
    // declares the node failed (2 s node timeout) and every read fails with CLUSTERDOWN.
    app.wait_for_health(ServingStatus::NotServing).await;
    let mut survivor = survivor;
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut survivor)
        .await
        .expect("CLUSTER INFO");
    assert!(
        info.contains("cluster_state:ok"),
        "NOT_SERVING should come from the PING, not from the cluster's own failure: {info}"
    );
    let status = app
        .try_validate(&created.access_token)
        .await
        .expect_err("still down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Back on its port with its cluster config (same id and slots) but empty: tests run
    // without persistence, so that session's access key is gone.
    let cluster = app.cluster.as_mut().expect("cluster");
    cluster.node_mut(node).restart();
    cluster.wait_until_ok().await;
    app.wait_for_health(ServingStatus::Serving).await;
    assert!(
        !app.validate(&created.access_token).await.valid,
        "an answer again, and the lost key is not valid"
    );
    let again = app.create(&unique_did(), "bob.test").await;
    assert!(app.validate(&again.access_token).await.valid);
    app.refresh(&again.refresh_token)
        .await
        .expect("refresh after recovery");
}

/// A slot that no primary owns (a cluster that serves without full coverage) holds
/// sessions nobody can read or write: NOT_SERVING until it is owned again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_without_an_owner_is_not_ready_until_it_has_one() {
    let app = TestApp::spawn(Backend::Cluster).await;
    let cluster = app.cluster.as_ref().expect("cluster");
    let mut owner = None;
    for (index, node) in cluster.nodes().iter().enumerate() {
        let mut conn = node.client().await;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-require-full-coverage")
            .arg("no")
            .query_async(&mut conn)
            .await
            .expect("CONFIG SET");
        let myself: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut conn)
            .await
            .expect("MYID");
        let slots: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await
            .expect("NODES");
        let owns_zero = slots.lines().any(|line| {
            line.starts_with(&myself)
                && line
                    .split(' ')
                    .skip(8)
                    .any(|range| range == "0" || range.starts_with("0-"))
        });
        if owns_zero {
            owner = Some(index);
        }
    }
    let owner = owner.expect("a node owns slot 0");
    app.wait_for_health(ServingStatus::Serving).await;
    let mut conn = cluster.nodes()[owner].client().await;
    let _: () = redis::cmd("CLUSTER")
        .arg("DELSLOTS")
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("DELSLOTS");
    app.wait_for_health(ServingStatus::NotServing).await;
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTS")
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("ADDSLOTS");
    app.wait_for_health(ServingStatus::Serving).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_token_on_a_dead_node_fails_whole() {
    let mut app = TestApp::spawn(Backend::Cluster).await;
    let dead = 2;
    let cluster = app.cluster.as_ref().expect("cluster");
    // A session whose keys all live on the nodes that stay up, so that alone it would
    // answer valid...
    let mut alive = None;
    for _ in 0..60 {
        let created = app.create(&unique_did(), "alice.test").await;
        let access = format!("{PREFIX}access:{}", sha256_hex(&created.access_token));
        let data = format!("{PREFIX}data:{}", created.refresh_token);
        if node_of(cluster, &access).await != dead && node_of(cluster, &data).await != dead {
            alive = Some(created);
            break;
        }
    }
    let alive = alive.expect("a session away from the node to kill");
    // ...and an unknown token whose access key lives on the node that dies.
    let mut doomed = None;
    for i in 0..200_u32 {
        let token = format!("{i:064x}");
        if node_of(cluster, &format!("{PREFIX}access:{}", sha256_hex(&token))).await == dead {
            doomed = Some(token);
            break;
        }
    }
    let doomed = doomed.expect("a token whose key is on the node to kill");
    let batch = [alive.access_token.clone(), doomed];
    let answers = app.validate_many(&batch).await.expect("all nodes up");
    assert_eq!(
        answers.iter().map(|a| a.valid).collect::<Vec<_>>(),
        [true, false]
    );

    app.cluster.as_mut().expect("cluster").node_mut(dead).kill();
    let status = app
        .validate_many(&batch)
        .await
        .expect_err("no partial answer");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_seeds_reach_every_node_with_tls_verified_against_the_configured_ca() {
    let ca = Ca::new("valkey cluster CA");
    let cluster = ValkeyCluster::start_behind_tls(&ca.issue(&["127.0.0.1"], None)).await;
    let dir = TempDir::new();
    let good_ca = dir.write("valkey-ca.pem", ca.pem());
    let other_ca = dir.write("other-ca.pem", Ca::new("someone else").pem());
    let urls = cluster.urls();
    assert!(urls.starts_with("rediss://"), "{urls}");
    // The topology clients discover names the TLS ports only, never a node's plain port.
    let mut conn = cluster.nodes()[0].client().await;
    let topology: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await
        .expect("CLUSTER NODES");
    for line in topology.lines() {
        let address = line.split(' ').nth(1).expect("address field");
        let port = address.split(['@', ',']).next().expect("ip:port");
        assert!(
            urls.contains(&format!("rediss://{port}")),
            "{line} in {urls}"
        );
    }
    let spawn = |ca: std::path::PathBuf| {
        let urls = urls.clone();
        async move {
            let flags = [
                "--valkey-mode",
                "cluster",
                "--valkey-ca",
                ca.to_str().expect("utf-8"),
                "--metrics-listen",
                "127.0.0.1:0",
            ];
            TestApp::spawn_config(config(StoreKind::Valkey, Some(&urls), &flags), None, None).await
        }
    };

    let app = spawn(good_ca).await;
    app.wait_for_health(ServingStatus::Serving).await;
    // Sessions land on all three nodes, each reached through its TLS port.
    let mut on_node = [false; 3];
    for _ in 0..30 {
        let created = app.create(&unique_did(), "alice.test").await;
        assert!(app.validate(&created.access_token).await.valid);
        on_node[node_of(&cluster, &format!("{PREFIX}data:{}", created.refresh_token)).await] = true;
    }
    assert_eq!(on_node, [true; 3], "sessions on every node");
    // The cache's feeds reach every primary through TLS too: answers come from the cache.
    let created = app.create(&unique_did(), "alice.test").await;
    crate::cache::cache(&app, &created.access_token).await;

    // A CA the service was not told to trust: no connection, UNAVAILABLE.
    let app = spawn(other_ca).await;
    let status = app
        .try_validate(&"ab".repeat(32))
        .await
        .expect_err("untrusted cluster");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(app.health_status().await, ServingStatus::NotServing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_while_the_cluster_hangs_all_answer_unavailable_promptly() {
    // Seeds that accept TCP connections and never answer, like hosts that stopped routing:
    // each connect attempt lasts until a timeout, so calls must not queue behind one
    // attempt after another.
    let mut seeds = Vec::new();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        seeds.push(format!(
            "redis://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        ));
        listeners.push(listener);
    }
    let urls = seeds.join(",");
    let app = TestApp::spawn_config(
        config(
            StoreKind::Valkey,
            Some(&urls),
            &["--valkey-mode", "cluster"],
        ),
        None,
        None,
    )
    .await;

    let started = Instant::now();
    for answer in app.validate_concurrently(&"ab".repeat(32), 32).await {
        let status = answer.expect_err("nothing answers");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert!(
        started.elapsed() < Duration::from_millis(4_000),
        "took {:?}",
        started.elapsed()
    );
    drop(listeners);
}

/// What the callers of a load saw.
#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    unavailable: u64,
    other: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_restarted_under_load_heals_without_a_restart() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let mut app = TestApp::spawn(Backend::Cluster).await;
    let token = app.create(&unique_did(), "alice.test").await.access_token;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (mut client, stop, tally, token) = (
            app.client.clone(),
            stop.clone(),
            tally.clone(),
            token.clone(),
        );
        load.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = client
                    .validate_access_token(ValidateAccessTokenRequest {
                        access_token: token.clone(),
                    })
                    .await;
                let mut tally = tally.lock().expect("tally");
                match answer {
                    Ok(_) => tally.ok += 1,
                    Err(status) if status.code() == Code::Unavailable => tally.unavailable += 1,
                    Err(status) => tally.other.push(format!("{status:?}")),
                }
            }
        });
    }
    let count = |pick: fn(&Tally) -> u64| pick(&tally.lock().expect("tally"));
    // The load is running: answers are coming in.
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(|t| t.ok) < 500 {
        assert!(Instant::now() < deadline, "no load: {tally:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    app.cluster.as_mut().expect("cluster").node_mut(1).kill();
    while count(|t| t.unavailable) == 0 {
        assert!(
            Instant::now() < deadline + Duration::from_secs(10),
            "the outage never showed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cluster = app.cluster.as_mut().expect("cluster");
    cluster.node_mut(1).restart();
    cluster.wait_until_ok().await;

    // Healed while the load goes on: a new session can be created and validated.
    let healed_by = Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = app.client.clone();
        let created = client
            .create_session(barazo_session::proto::CreateSessionRequest {
                did: unique_did(),
                handle: "bob.test".into(),
                ..Default::default()
            })
            .await;
        if let Ok(created) = created
            && app
                .try_validate(&created.into_inner().access_token)
                .await
                .is_ok_and(|answer| answer.valid)
        {
            break;
        }
        assert!(
            Instant::now() < healed_by,
            "still failing 10 s after the node came back: {:?}",
            tally.lock().expect("tally")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    let tally = tally.lock().expect("tally");
    assert!(
        tally.other.is_empty(),
        "only OK or UNAVAILABLE: {:?}",
        tally.other
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_leave_no_orphaned_access_key_on_any_node() {
    let app = TestApp::spawn(Backend::Cluster).await;
    let created = app.create(&unique_did(), "alice.test").await;
    let tokens = app.refresh_concurrently(&created.refresh_token, 20).await;

    let mut access_keys = Vec::new();
    let mut data = None;
    for node in app.cluster.as_ref().expect("cluster").nodes() {
        let mut conn = node.client().await;
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{PREFIX}access:*"))
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        access_keys.extend(found);
        let json: Option<String> = redis::cmd("GET")
            .arg(format!("{PREFIX}data:{}", created.refresh_token))
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        data = data.or(json);
    }
    // The cap's 8 tokens keep their keys, each named in the data; the 13 dropped past the
    // cap have none left on any node.
    assert_eq!(access_keys.len(), 8, "{access_keys:?}");
    let data = data.expect("the session's data");
    for key in &access_keys {
        let hash = &key[format!("{PREFIX}access:").len()..];
        assert!(
            data.contains(&format!(r#""{hash}""#)),
            "every remaining key is a listed token's: {data}"
        );
        assert!(tokens.iter().any(|t| sha256_hex(t) == hash));
    }
}

/// Round trips per RPC in cluster mode, counted with `MONITOR` on every node (the table in
/// docs/cluster.md): the order of commands across nodes is lost, their number is not.
struct ClusterMonitor(Vec<Monitor>);

impl ClusterMonitor {
    async fn start(cluster: &ValkeyCluster) -> Self {
        let mut monitors = Vec::new();
        for node in cluster.nodes() {
            monitors.push(Monitor::start(node).await);
        }
        Self(monitors)
    }

    /// `action`'s output and each command name it sent to any node, sorted.
    async fn round_trips<T>(&mut self, action: impl Future<Output = T>) -> (T, Vec<String>) {
        let mut starts = Vec::new();
        for monitor in &mut self.0 {
            starts.push(monitor.begin().await);
        }
        let output = action.await;
        let mut commands = Vec::new();
        for (monitor, start) in self.0.iter_mut().zip(starts) {
            commands.extend(monitor.finish(start).await);
        }
        commands.sort();
        (output, commands)
    }
}

fn counted(commands: &[&str]) -> Vec<String> {
    let mut commands: Vec<String> = commands.iter().map(|c| (*c).to_owned()).collect();
    commands.sort();
    commands
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_per_rpc_in_cluster_mode() {
    use barazo_session::proto::{
        ListSessionsRequest, RevokeOtherSessionsRequest, RevokeSessionRequest,
    };
    let app = TestApp::spawn_with(
        Backend::Cluster,
        &[
            "--health-check-interval-ms",
            "3600000",
            "--max-sessions-per-did",
            "3",
        ],
    )
    .await;
    let cluster = app.cluster.as_ref().expect("cluster");
    let did = unique_did();
    let mut client = app.client.clone();
    let list = |did: &str| ListSessionsRequest { did: did.into() };
    // Warm up: scripts loaded and connections to every node made.
    for _ in 0..3 {
        let warm = app.create(&unique_did(), "alice.test").await;
        app.validate(&warm.access_token).await;
        app.refresh(&warm.refresh_token).await.expect("refresh");
        app.delete(&warm.refresh_token).await.expect("delete");
    }

    let mut monitor = ClusterMonitor::start(cluster).await;
    let (first, trips) = monitor.round_trips(app.create(&did, "alice.test")).await;
    assert_eq!(
        trips,
        counted(&["EVALSHA", "EVALSHA", "SET", "SCARD"]),
        "CreateSession within the cap: data, index, access key, SCARD for the cap"
    );
    let (_, trips) = monitor.round_trips(app.validate(&first.access_token)).await;
    assert_eq!(trips, counted(&["GET", "EVALSHA"]), "ValidateAccessToken");
    let (refreshed, trips) = monitor.round_trips(app.refresh(&first.refresh_token)).await;
    refreshed.expect("refresh");
    assert_eq!(
        trips,
        counted(&["EVALSHA", "EVALSHA", "EVALSHA", "SET", "GET"]),
        "RefreshSession (a new tab's token, nothing dropped): read script (data and its \
         node's clock), index, refresh_data, SET new access key, GET data again"
    );
    let (_, trips) = monitor.round_trips(app.delete(&first.refresh_token)).await;
    assert_eq!(
        trips,
        counted(&["EVALSHA", "GET", "PTTL", "SET", "DEL", "DEL", "DEL", "SREM"]),
        "DeleteSession: read script (whose token is it, on the data node's clock), then GET data, \
         PTTL data and SET why it ended, DEL both access keys (the refresh added a second tab's), \
         DEL data, SREM"
    );
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(app.create(&did, "alice.test").await);
    }
    let (created, trips) = monitor.round_trips(app.create(&did, "alice.test")).await;
    // Its own three writes, SCARD, SMEMBERS, a GET per member (4), and the oldest
    // revoked: GET, DEL access, DEL data, SREM.
    assert_eq!(
        trips,
        counted(&[
            "EVALSHA", "EVALSHA", "SET", "SCARD", "SMEMBERS", "GET", "GET", "GET", "GET", "GET",
            "PTTL", "SET", "DEL", "DEL", "SREM"
        ]),
        "CreateSession revoking one for the cap of 3"
    );
    assert!(
        !app.validate(&sessions[0].access_token).await.valid,
        "capped"
    );
    let (listed, trips) = monitor.round_trips(client.list_sessions(list(&did))).await;
    assert_eq!(listed.expect("list").into_inner().sessions.len(), 3);
    assert_eq!(
        trips,
        counted(&["SMEMBERS", "GET", "GET", "GET"]),
        "ListSessions of 3 sessions: SMEMBERS, a GET each"
    );
    let revoke = RevokeSessionRequest {
        did: did.clone(),
        session_key: sha256_hex(&sessions[1].refresh_token),
    };
    let (revoked, trips) = monitor.round_trips(client.revoke_session(revoke)).await;
    assert!(revoked.expect("revoke").into_inner().revoked);
    assert_eq!(
        trips,
        counted(&[
            "SMEMBERS", "GET", "GET", "GET", "GET", "GET", "PTTL", "SET", "DEL", "DEL", "SREM"
        ]),
        "RevokeSession of 3: the listing, then GET (the DID check), GET, DEL, DEL, SREM"
    );
    let others = RevokeOtherSessionsRequest {
        refresh_token: created.refresh_token.clone(),
    };
    let (revoked, trips) = monitor
        .round_trips(client.revoke_other_sessions(others))
        .await;
    assert_eq!(revoked.expect("others").into_inner().revoked_count, 1);
    assert_eq!(
        trips,
        counted(&[
            "EVALSHA", "SMEMBERS", "GET", "PTTL", "SET", "DEL", "DEL", "SREM"
        ]),
        "RevokeOtherSessions of 2: read script (own session by its token), SMEMBERS, then per \
         other GET, DEL, DEL, SREM"
    );
    let (deleted, trips) = monitor.round_trips(app.delete_all(&did)).await;
    assert_eq!(deleted.expect("delete all"), 1);
    assert_eq!(
        trips,
        counted(&["SMEMBERS", "GET", "PTTL", "SET", "DEL", "DEL", "SREM"]),
        "DeleteAllSessionsForDid of 1: SMEMBERS, then GET, DEL, DEL, SREM"
    );
}
