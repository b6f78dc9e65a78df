//! The cluster harness's topology changes on their own, without the service: a manual
//! failover, a killed primary's promoted replica and a slot's migration each leave the keys
//! readable on the node that now owns them, and the harness's slot and ids match Valkey's.

use crate::support::cluster::ValkeyCluster;
use std::time::Instant;

async fn get(
    cluster: &ValkeyCluster,
    node: usize,
    key: &str,
) -> redis::RedisResult<Option<String>> {
    let mut conn = cluster.nodes()[node].client().await;
    redis::cmd("GET").arg(key).query_async(&mut conn).await
}

async fn set(cluster: &ValkeyCluster, node: usize, key: &str, value: &str) {
    let mut conn = cluster.nodes()[node].client().await;
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut conn)
        .await
        .expect("SET on the key's primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stay_readable_across_a_manual_failover_and_a_slot_move() {
    let started = Instant::now();
    let cluster = ValkeyCluster::start_with_replicas().await;
    eprintln!("start_with_replicas: {:?}", started.elapsed());

    // The harness's slots and ids are Valkey's.
    let mut conn = cluster.nodes()[0].client().await;
    let keys = [
        "",
        "a",
        "foo",
        "{user1000}.following",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "{}{bar}",
        "x{",
    ]
    .map(str::to_owned)
    .into_iter()
    .chain((0..200).map(|i| format!("barazo:session:access:{i:x}")));
    for key in keys {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("KEYSLOT");
        assert_eq!(ValkeyCluster::slot_of(&key), slot, "slot of {key:?}");
    }
    for node in 0..6 {
        let mut conn = cluster.nodes()[node].client().await;
        let id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut conn)
            .await
            .expect("MYID");
        assert_eq!(cluster.node_id(node), id);
    }

    let key = "topology:{failover}";
    let slot = ValkeyCluster::slot_of(key);
    let primary = cluster.primary_of_slot(slot).await;
    set(&cluster, primary, key, "before").await;
    let replica = cluster.replica_of(primary).await;
    assert_ne!(replica, primary);

    let started = Instant::now();
    cluster.failover(replica).await;
    eprintln!("failover: {:?}", started.elapsed());
    assert_eq!(cluster.primary_of_slot(slot).await, replica);
    assert_eq!(
        cluster.replica_of(replica).await,
        primary,
        "the old primary follows"
    );
    assert_eq!(
        get(&cluster, replica, key).await.expect("GET"),
        Some("before".into())
    );
    set(&cluster, replica, key, "after").await;

    // More keys in the slot than one batch of the move.
    let siblings: Vec<String> = (0..250)
        .map(|i| format!("topology:{{failover}}:{i}"))
        .collect();
    for sibling in &siblings {
        set(&cluster, replica, sibling, sibling).await;
    }
    let to = cluster
        .primary_of_slot(if slot < 8_192 { 16_383 } else { 0 })
        .await;
    let started = Instant::now();
    cluster.move_slot(slot, to).await;
    eprintln!("move_slot (251 keys): {:?}", started.elapsed());
    assert_eq!(cluster.primary_of_slot(slot).await, to);
    assert_eq!(
        get(&cluster, to, key).await.expect("GET"),
        Some("after".into())
    );
    for sibling in &siblings {
        assert_eq!(
            get(&cluster, to, sibling).await.expect("GET"),
            Some(sibling.clone())
        );
    }
    let moved = get(&cluster, replica, key)
        .await
        .expect_err("the old owner redirects");
    assert_eq!(moved.code(), Some("MOVED"), "{moved:?}");
    // The cluster client follows the new owner too.
    let mut client = cluster.connection().await;
    let value: Option<String> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut client)
        .await
        .expect("GET through the cluster client");
    assert_eq!(value.as_deref(), Some("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primarys_replica_takes_over_its_keys() {
    let mut cluster = ValkeyCluster::start_with_replicas().await;
    let key = "topology:{kill}";
    let primary = cluster.primary_of_slot(ValkeyCluster::slot_of(key)).await;
    set(&cluster, primary, key, "kept").await;
    // The replica has it before the crash.
    let mut conn = cluster.nodes()[primary].client().await;
    let acked: u64 = redis::cmd("WAIT")
        .arg(1)
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("WAIT");
    assert_eq!(acked, 1);

    let started = Instant::now();
    let replica = cluster.kill_primary_and_wait_for_promotion(primary).await;
    eprintln!(
        "kill_primary_and_wait_for_promotion: {:?}",
        started.elapsed()
    );
    assert!(!cluster.nodes()[primary].is_running());
    assert_eq!(
        cluster.primary_of_slot(ValkeyCluster::slot_of(key)).await,
        replica
    );
    assert_eq!(
        get(&cluster, replica, key).await.expect("GET"),
        Some("kept".into())
    );
    cluster.wait_until_ok().await;
}
