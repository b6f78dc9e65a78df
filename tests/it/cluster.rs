//! Valkey Cluster specifics (the behaviour suite runs against a cluster too): a session
//! whose three keys live on three different nodes works end to end and leaves nothing.

use crate::support::{Backend, TestApp, sha256_hex, unique_did};

const PREFIX: &str = "barazo:session:";

/// Which of the three nodes serves `key` (slots were assigned in thirds, in node order).
async fn node_of(app: &TestApp, key: &str) -> usize {
    let cluster = app.cluster.as_ref().expect("cluster");
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
            node_of(&app, &format!("{PREFIX}data:{}", created.refresh_token)).await,
            node_of(
                &app,
                &format!("{PREFIX}access:{}", sha256_hex(&created.access_token)),
            )
            .await,
            node_of(&app, &format!("{PREFIX}did:{did}")).await,
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
    let refreshed = app.refresh(&created.refresh_token).await.expect("refresh");
    assert!(
        !app.validate(&created.access_token).await.valid,
        "revoked at once"
    );
    assert!(app.validate(&refreshed.access_token).await.valid);
    assert!(app.delete(&created.refresh_token).await.expect("delete"));
    assert!(!app.validate(&refreshed.access_token).await.valid);
    assert_eq!(app.delete_all(&did).await.expect("delete all"), 0);

    // Every node is empty: no data, access key or index entry left anywhere.
    for node in app.cluster.as_ref().expect("cluster").nodes() {
        let mut conn = node.client().await;
        let keys: u64 = redis::cmd("DBSIZE")
            .query_async(&mut conn)
            .await
            .expect("DBSIZE");
        assert_eq!(keys, 0, "node {} still holds keys", node.port());
    }
}
