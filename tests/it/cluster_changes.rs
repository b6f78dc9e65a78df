//! The validation cache through the cluster's topology changes, on a real cluster with a
//! replica per primary: a manual failover, a killed primary replaced by its replica, a
//! slot moved to another primary with its keys (key by key, and atomically), and slots
//! moved to a primary added just now. Two replicas of the service, A and B; B has the sessions' answers cached. In every
//! case a session revoked right after the change (through A, or by a `DEL` on the node that
//! now owns it) stops validating on B within the feed's check interval, and so does one
//! cached again after the change. Each test prints the longest time B still said `valid`
//! after a revocation had answered (BENCHMARKS.md).

use crate::cache::{MISSES, RESETS, cache, eventually, metric};
use crate::cluster_cache::{replica, server_on, watched_by};
use crate::support::cluster::ValkeyCluster;
use crate::support::{TestApp, unique_did};
use barazo_session::cache::feed::PING_INTERVAL;
use barazo_session::proto::CreateSessionResponse as Created;
use std::time::{Duration, Instant};
use tonic::Code;

const PREFIX: &str = "barazo:session:";

/// The longest B may answer from a stale cache after a topology change: the feed notices
/// at its next check (every [`PING_INTERVAL`]), plus that check's own round trips.
fn bound() -> Duration {
    PING_INTERVAL + Duration::from_millis(500)
}

/// A (whose test owns the cluster) and B on a fresh cluster with a replica per primary.
async fn pair() -> (TestApp, TestApp) {
    let cluster = ValkeyCluster::start_with_replicas().await;
    let mut a = server_on(&cluster.urls()).await;
    a.cluster = Some(cluster);
    let b = replica(&a).await;
    (a, b)
}

fn data_key(session: &Created) -> String {
    format!("{PREFIX}data:{}", session.refresh_token)
}

/// How a slot moves to another primary: key by key as `valkey-cli --cluster reshard` does
/// (`MIGRATE`, with an `ASK` window), or with Valkey 9's atomic slot migration
/// (`CLUSTER MIGRATESLOTS`: the keys and the writes made meanwhile streamed, the slot
/// handed over in one step).
#[derive(Clone, Copy, Debug)]
enum Move {
    KeyByKey,
    Atomic,
}

impl Move {
    async fn slot(self, cluster: &ValkeyCluster, slot: u16, to: usize) {
        match self {
            Move::KeyByKey => cluster.move_slot(slot, to).await,
            Move::Atomic => cluster.migrate_slot(slot, to).await,
        }
    }
}

/// `count` sessions created on A whose data lives on the primary `primary`, each cached on B.
async fn sessions_on(a: &TestApp, b: &TestApp, primary: usize, count: usize) -> Vec<Created> {
    let cluster = a.cluster.as_ref().expect("cluster");
    let mut found = Vec::new();
    for n in 0..200 {
        let session = a.create(&unique_did(), &format!("user{n}.test")).await;
        let slot = ValkeyCluster::slot_of(&data_key(&session));
        if cluster.primary_of_slot(slot).await == primary {
            cache(b, &session.access_token).await;
            found.push(session);
            if found.len() == count {
                return found;
            }
        }
    }
    panic!("no {count} sessions on node {primary} in 200");
}

/// Waits until B's feeds are live on the cluster as it is now: a change made in steps
/// (slots moved one by one; a primary added, then slots moved to it) may reset B's cache
/// once per step, and this is the signal that B has seen the last.
async fn until_watched(a: &TestApp, b: &TestApp) {
    let cluster = a.cluster.as_ref().expect("cluster");
    eventually("B's feeds watch the cluster as it is now", || async {
        watched_by(b).await == cluster.slots_per_primary().await
    })
    .await;
}

/// Retries `call` while the cluster is between owners (UNAVAILABLE), for ten seconds.
async fn through_the_change<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let start = Instant::now();
    loop {
        match call().await {
            Ok(answer) => return answer,
            Err(status) if status.code() == Code::Unavailable => {
                assert!(start.elapsed() < Duration::from_secs(10), "{status:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
}

/// After `revoked` (the moment a revocation answered), asks B back to back until it says
/// `valid=false`, then a few times more; returns how long after `revoked` B last said
/// `valid` (zero when it never did).
async fn stale_on(b: &TestApp, token: &str, revoked: Instant) -> Duration {
    let mut stale = Duration::ZERO;
    loop {
        match b.try_validate(token).await {
            Ok(answer) if answer.valid => stale = revoked.elapsed(),
            Ok(_) => break,
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(10),
            "B still validates a token revoked 10 s ago"
        );
    }
    for _ in 0..20 {
        if let Ok(answer) = b.try_validate(token).await {
            assert!(!answer.valid, "valid again after an invalid answer");
        }
    }
    stale
}

/// Revokes `session` through A (its logout); when it answered.
async fn logout_on(a: &TestApp, session: &Created) -> Instant {
    through_the_change(|| a.delete(&session.refresh_token)).await;
    Instant::now()
}

/// Deletes `session`'s data with a `DEL` on node `owner` itself (any writer: the
/// TypeScript AppView, an operator); when it answered.
async fn del_on(a: &TestApp, owner: usize, session: &Created) -> Instant {
    let cluster = a.cluster.as_ref().expect("cluster");
    let mut conn = cluster.nodes()[owner].client().await;
    let deleted: i64 = redis::cmd("DEL")
        .arg(data_key(session))
        .query_async(&mut conn)
        .await
        .expect("DEL on the owner");
    assert_eq!(deleted, 1, "the node owns the session's data");
    Instant::now()
}

/// Like [`del_on`] while `session`'s slot is migrating to node `target` (its data already
/// there): `ASKING`, then the `DEL`, on the target.
async fn del_asking_on(a: &TestApp, target: usize, session: &Created) -> Instant {
    let cluster = a.cluster.as_ref().expect("cluster");
    let mut conn = cluster.nodes()[target].client().await;
    let ((), deleted): ((), i64) = redis::pipe()
        .cmd("ASKING")
        .cmd("DEL")
        .arg(data_key(session))
        .query_async(&mut conn)
        .await
        .expect("ASKING and DEL on the migration's target");
    assert_eq!(deleted, 1, "the session's data was migrated to the target");
    Instant::now()
}

/// Revokes the first session right after the change (which has just completed), caches
/// the second again on B and deletes it on its owner, and checks a third is answered from
/// B's cache again once B's feed has dropped the cache (`resets_before`: its resets before
/// the change) and noticed the change whole. Prints the longest stale time as `what`'s
/// and checks it is within the bound.
async fn after_the_change(
    what: &str,
    a: &TestApp,
    b: &TestApp,
    owner: usize,
    sessions: &[Created],
    resets_before: f64,
) {
    let [first, second, kept, ..] = sessions else {
        panic!("three sessions");
    };
    let revoked = logout_on(a, first).await;
    let mut longest = stale_on(b, &first.access_token, revoked).await;
    cache(b, &second.access_token).await;
    let revoked = del_on(a, owner, second).await;
    longest = longest.max(stale_on(b, &second.access_token, revoked).await);
    // The feed noticed the change (the cache dropped once), serves again on the new
    // topology, and stays live: over a few of the feed's check intervals, every validation
    // is answered from it (a check that failed on the new topology would drop it each time).
    eventually("B's feed notices the change", || async {
        metric(b, RESETS).await > resets_before
    })
    .await;
    until_watched(a, b).await;
    cache(b, &kept.access_token).await;
    let (misses, resets) = (metric(b, MISSES).await, metric(b, RESETS).await);
    let watched = Instant::now();
    while watched.elapsed() < PING_INTERVAL * 3 {
        assert!(b.validate(&kept.access_token).await.valid);
    }
    assert_eq!(metric(b, RESETS).await, resets, "the cache stays live");
    assert_eq!(
        metric(b, MISSES).await,
        misses,
        "every answer from the cache"
    );
    eprintln!("{what}: longest stale answer on B {longest:?}");
    assert!(longest <= bound(), "{what}: {longest:?}");
}

/// Moves each session's data slot, with its keys, to primary `target` (`how`), then
/// [`after_the_change`]; the moved sessions' keys all arrive (the last still validates).
async fn moved_then_revoked(
    (what, how): (&str, Move),
    a: &TestApp,
    b: &TestApp,
    target: usize,
    sessions: &[Created],
    resets_before: f64,
) {
    let cluster = a.cluster.as_ref().expect("cluster");
    for session in sessions {
        how.slot(cluster, ValkeyCluster::slot_of(&data_key(session)), target)
            .await;
    }
    after_the_change(what, a, b, target, sessions, resets_before).await;
    assert!(b.validate(&sessions[2].access_token).await.valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_leaves_no_revoked_token_valid() {
    let (a, b) = pair().await;
    let cluster = a.cluster.as_ref().expect("cluster");
    let primary = cluster.primary_of_slot(0).await;
    let sessions = sessions_on(&a, &b, primary, 3).await;
    let promoted = cluster.replica_of(primary).await;
    let resets = metric(&b, RESETS).await;
    cluster.failover(promoted).await;
    after_the_change("CLUSTER FAILOVER", &a, &b, promoted, &sessions, resets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_replaced_by_its_replica_leaves_no_revoked_token_valid() {
    let (mut a, b) = pair().await;
    let primary = a
        .cluster
        .as_ref()
        .expect("cluster")
        .primary_of_slot(0)
        .await;
    let sessions = sessions_on(&a, &b, primary, 3).await;
    // The sessions reached the replica before the primary dies (asynchronous replication
    // would otherwise lose them with it: a different test).
    let mut conn = a.cluster.as_ref().expect("cluster").nodes()[primary]
        .client()
        .await;
    let _: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5_000)
        .query_async(&mut conn)
        .await
        .expect("WAIT");
    let resets = metric(&b, RESETS).await;
    let promoted = a
        .cluster
        .as_mut()
        .expect("cluster")
        .kill_primary_and_wait_for_promotion(primary)
        .await;
    after_the_change("kill -9 of a primary", &a, &b, promoted, &sessions, resets).await;
}

/// Each session's data slot moved (`how`), with the session's keys in it, from the owner of
/// slot 0 to the owner of slot 16383.
async fn a_slot_moved_between_primaries(what: &str, how: Move) {
    let (a, b) = pair().await;
    let cluster = a.cluster.as_ref().expect("cluster");
    let source = cluster.primary_of_slot(0).await;
    let target = cluster.primary_of_slot(16_383).await;
    assert_ne!(source, target);
    let sessions = sessions_on(&a, &b, source, 3).await;
    let resets = metric(&b, RESETS).await;
    moved_then_revoked((what, how), &a, &b, target, &sessions, resets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_another_primary_leaves_no_revoked_token_valid() {
    a_slot_moved_between_primaries("a slot moved", Move::KeyByKey).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_atomically_leaves_no_revoked_token_valid() {
    a_slot_moved_between_primaries("a slot migrated atomically", Move::Atomic).await;
}

/// A primary added (without slots), then at once, before B's feed may have noticed it, the
/// sessions' slots moved to it with their keys: as for a move between primaries that were
/// there all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_a_primary_added_just_now_leaves_no_revoked_token_valid() {
    let (mut a, b) = pair().await;
    let source = a
        .cluster
        .as_ref()
        .expect("cluster")
        .primary_of_slot(0)
        .await;
    let sessions = sessions_on(&a, &b, source, 3).await;
    let resets = metric(&b, RESETS).await;
    let adding = Instant::now();
    let added = a.cluster.as_mut().expect("cluster").add_primary().await;
    eprintln!("add_primary: {:?}", adding.elapsed());
    let what = ("slots moved to a primary added just now", Move::KeyByKey);
    moved_then_revoked(what, &a, &b, added, &sessions, resets).await;
}

/// What shows B's feed watches a primary added just now, before it owns any slot: B's
/// feed reopens when the primary joins, and with a slot then held half-way through its
/// move to it (its keys there, the slot still the source's in every node's view, so no
/// topology change tells B anything), a `DEL` there of a session B has cached ends B's
/// answer within the bound, with no reset of the cache. A feed only on the primaries that
/// own slots would hear nothing until the move ended. Then, the moves ended and B's feed
/// back on the new topology, a `DEL` on the new primary of a session whose data lives
/// there ends B's cached answer too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_added_just_now_is_watched_before_and_after_it_owns_slots() {
    let (mut a, b) = pair().await;
    let source = a
        .cluster
        .as_ref()
        .expect("cluster")
        .primary_of_slot(0)
        .await;
    let sessions = sessions_on(&a, &b, source, 2).await;
    let [migrating, moved] = &sessions[..] else {
        panic!("two sessions");
    };
    let resets = metric(&b, RESETS).await;
    let adding = Instant::now();
    let added = a.cluster.as_mut().expect("cluster").add_primary().await;
    eprintln!("add_primary: {:?}", adding.elapsed());
    let cluster = a.cluster.as_ref().expect("cluster");
    // B's feed noticed the primary added (a topology change) and is live again; from here
    // the topology stays as it is until the move below ends, so no reset can end B's
    // answer mid-migration: only a feed on the new primary can.
    eventually("B's feed notices the primary added", || async {
        metric(&b, RESETS).await > resets
    })
    .await;
    cache(&b, &moved.access_token).await;
    let watching = metric(&b, RESETS).await;
    let slot = ValkeyCluster::slot_of(&data_key(migrating));
    cluster.start_slot_move(slot, source, added).await;
    // B's store reads a session's data with a script the new primary has never seen: it
    // answers NOSCRIPT to the hash, and the store sends the body (redis-rs's own reload
    // loads scripts only where its slot map points, not on a primary without slots).
    // Migrating the data deleted it on the source, which B's feed there heard; B caches
    // the session again, its data read from the new primary (the source answers ASK).
    cache(&b, &migrating.access_token).await;
    let revoked = del_asking_on(&a, added, migrating).await;
    let mid = stale_on(&b, &migrating.access_token, revoked).await;
    eprintln!("a DEL on a primary added just now, mid-migration: stale on B {mid:?}");
    assert!(mid <= bound(), "{mid:?}");
    assert_eq!(
        metric(&b, RESETS).await,
        watching,
        "the feed on the new primary ended B's answer, not a reset"
    );
    cluster.finish_slot_move(slot, source, added).await;
    cluster
        .move_slot(ValkeyCluster::slot_of(&data_key(moved)), added)
        .await;
    // B's feed noticed the moves (the cache dropped) and is live again: a session whose
    // data now lives on the new primary is answered from B's cache, until a DEL there.
    eventually("B's feed notices the moves", || async {
        metric(&b, RESETS).await > watching
    })
    .await;
    cache(&b, &moved.access_token).await;
    let revoked = del_on(&a, added, moved).await;
    let after = stale_on(&b, &moved.access_token, revoked).await;
    eprintln!("a DEL on a primary added just now, after the moves: stale on B {after:?}");
    assert!(after <= bound(), "{after:?}");
}

/// Slots moved (`how`) while B validates their sessions and A revokes them one by one: B's
/// cached answers of the moved sessions never outlive a revocation by more than the bound,
/// during the moves as after them.
async fn revocations_during_slot_moves(how: Move) {
    let (a, b) = pair().await;
    let cluster = a.cluster.as_ref().expect("cluster");
    let source = cluster.primary_of_slot(0).await;
    let target = cluster.primary_of_slot(16_383).await;
    let sessions = sessions_on(&a, &b, source, 4).await;
    let slots: Vec<u16> = sessions
        .iter()
        .map(|s| ValkeyCluster::slot_of(&data_key(s)))
        .collect();
    let mover = async {
        for &slot in &slots {
            how.slot(cluster, slot, target).await;
        }
    };
    let revoker = async {
        let mut longest = Duration::ZERO;
        for session in &sessions {
            let revoked = logout_on(&a, session).await;
            longest = longest.max(stale_on(&b, &session.access_token, revoked).await);
        }
        longest
    };
    let ((), stale) = tokio::join!(mover, revoker);
    eprintln!("revocations during slot moves ({how:?}): longest stale answer on B {stale:?}");
    assert!(stale <= bound(), "{stale:?}");
    eventually("every revoked session is invalid on B", || async {
        for session in &sessions {
            if b.validate(&session.access_token).await.valid {
                return false;
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_during_a_slot_move_reach_the_cache() {
    revocations_during_slot_moves(Move::KeyByKey).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_during_an_atomic_slot_migration_reach_the_cache() {
    revocations_during_slot_moves(Move::Atomic).await;
}
