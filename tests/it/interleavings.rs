//! No interleaving and no cancellation leaves a session that validates outside its DID
//! index, a key without a TTL, a valid token for a deleted session, or (with refresh-token
//! rotation) two live successors of one refresh token.
//!
//! The cluster store runs each operation as a sequence of single-key commands. These tests
//! hold one operation at each step between its commands (the store's step hook) while
//! another runs to its end, which forces deterministically the interleavings that real
//! races hit now and then; a stress test then runs many concurrent calls on every
//! topology and checks every key's TTL afterwards. Stored values that are not UTF-8 are
//! unreadable sessions, never outages.

use crate::support::cluster::ValkeyCluster;
use crate::support::{Backend, TestApp, login, sha256_hex, unique_did};
use barazo_session::domain::rotation::{self, Candidate, Presented};
use barazo_session::domain::{Lifetimes, Revocation, TokenRules};
use barazo_session::domain::{SessionRecord, Token, now_ms};
use barazo_session::observe::metrics::Metrics;
use barazo_session::store::valkey::cluster::{Step, StepHook};
use barazo_session::store::valkey::{ValkeyClusterStore, ValkeyOptions};
use barazo_session::store::{ByRefresh, Refresh, SessionStore};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tonic::Code;

const PREFIX: &str = "barazo:session:";

const LIFETIMES: Lifetimes = Lifetimes {
    session: Duration::from_secs(600),
    access_token: Duration::from_secs(60),
    max: None,
    max_per_did: None,
    tokens: TokenRules::DEFAULT,
};

/// Holds the first operation that reaches `step` until released.
struct Gate {
    step: Step,
    armed: AtomicBool,
    reached: Notify,
    release: Semaphore,
}

impl Gate {
    fn at(step: Step) -> Arc<Self> {
        Arc::new(Self {
            step,
            armed: AtomicBool::new(true),
            reached: Notify::new(),
            release: Semaphore::new(0),
        })
    }

    fn hook(self: &Arc<Self>) -> StepHook {
        let gate = self.clone();
        Arc::new(move |step| {
            let gate = gate.clone();
            Box::pin(async move {
                if step == gate.step && gate.armed.swap(false, Ordering::SeqCst) {
                    gate.reached.notify_one();
                    if let Ok(permit) = gate.release.acquire().await {
                        permit.forget();
                    }
                }
            })
        })
    }

    async fn wait_reached(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.reached.notified())
            .await
            .unwrap_or_else(|_| panic!("no operation reached {:?}", self.step));
    }

    fn release(&self) {
        self.release.add_permits(1);
    }
}

/// A cluster store of its own over `cluster`, held at `gate`'s step.
fn store(cluster: &ValkeyCluster, gate: &Arc<Gate>) -> Arc<ValkeyClusterStore> {
    let options = ValkeyOptions {
        urls: cluster.urls().split(',').map(str::to_owned).collect(),
        password: None,
        ca_pem: None,
        key_prefix: PREFIX.to_owned(),
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
    };
    let store = ValkeyClusterStore::new(&options, Arc::new(Metrics::new()))
        .expect("store")
        .with_step_hook(gate.hook());
    Arc::new(store)
}

/// A new session of `did` as the service makes one; returns it with its access token.
fn session(did: &str) -> (SessionRecord, String) {
    let sid = Token::generate().expect("random").into_string();
    let access = Token::generate().expect("random").into_string();
    let now = now_ms();
    let record = SessionRecord {
        sid,
        did: did.to_owned(),
        handle: "alice.test".into(),
        access_token_hash: sha256_hex(&access),
        access_token_expires_at: now + 60_000,
        created_at: now,
        ..Default::default()
    };
    (record, access)
}

/// Whether `access` validates, as the service decides it.
async fn validates(store: &Arc<impl SessionStore>, access: &str) -> bool {
    let hash = sha256_hex(access);
    store
        .find_by_access_hash(&hash)
        .await
        .expect("store answers")
        .is_some_and(|found| found.record.accepts_access_hash(&hash, found.now_ms))
}

/// Every key under the prefix on every node, with its PTTL.
async fn keys_and_ttls(conns: &mut [redis::aio::MultiplexedConnection]) -> Vec<(String, i64)> {
    let mut found = Vec::new();
    for conn in conns {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{PREFIX}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await
                .expect("SCAN");
            for key in keys {
                let ttl: i64 = redis::cmd("PTTL")
                    .arg(&key)
                    .query_async(conn)
                    .await
                    .expect("PTTL");
                found.push((key, ttl));
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    found
}

async fn node_connections(cluster: &ValkeyCluster) -> Vec<redis::aio::MultiplexedConnection> {
    let mut conns = Vec::new();
    for node in cluster.nodes() {
        conns.push(node.client().await);
    }
    conns
}

/// A gate at `step` and a store of its own over `cluster` held there.
fn gated(cluster: &ValkeyCluster, step: Step) -> (Arc<Gate>, Arc<ValkeyClusterStore>) {
    let gate = Gate::at(step);
    let store = store(cluster, &gate);
    (gate, store)
}

/// Every key on every node of `cluster` has a TTL.
async fn assert_every_cluster_key_expires(cluster: &ValkeyCluster) {
    assert_every_key_expires(&mut node_connections(cluster).await).await;
}

/// Every key has a TTL (-1 is "none"; -2, gone between SCAN and PTTL, is fine).
async fn assert_every_key_expires(conns: &mut [redis::aio::MultiplexedConnection]) {
    let forever: Vec<_> = keys_and_ttls(conns)
        .await
        .into_iter()
        .filter(|(_, ttl)| *ttl == -1)
        .collect();
    assert!(forever.is_empty(), "keys without a TTL: {forever:?}");
}

/// Starts `operation` and returns once it is held at `gate`'s step.
async fn held_at<T: Send + 'static>(
    gate: &Gate,
    operation: impl Future<Output = T> + Send + 'static,
) -> JoinHandle<T> {
    let task = tokio::spawn(operation);
    gate.wait_reached().await;
    task
}

/// [`refresh_with`] `cookie`, held at `gate`'s step.
async fn held_refresh(
    gate: &Gate,
    store: &Arc<ValkeyClusterStore>,
    cookie: &str,
    lifetimes: Lifetimes,
) -> JoinHandle<Result<(String, String), &'static str>> {
    let (store, cookie) = (store.clone(), cookie.to_owned());
    held_at(gate, async move {
        refresh_with(&store, &cookie, lifetimes).await
    })
    .await
}

/// A refresh of the session `sid` without rotation, giving it the access token
/// `new_access`.
async fn refresh_session_id(
    store: Arc<ValkeyClusterStore>,
    sid: String,
    new_access: String,
    lifetimes: Lifetimes,
) -> Result<(), impl std::fmt::Debug> {
    let hash = sha256_hex(&new_access);
    let refresh = Refresh {
        new_access_hash: &hash,
        previous_access_hash: None,
        client: None,
        rotation: None,
    };
    let presented = Presented::parse(&sid).expect("a sid");
    store
        .refresh(&presented, &refresh, lifetimes)
        .await
        .map(|_| ())
}

/// A new session on a store held at `step`, and a refresh of it to a new access token,
/// held there: the gate, the store, the session's DID, access token and new access token,
/// and the refresh's task.
async fn held_refresh_of_a_new_session(
    cluster: &ValkeyCluster,
    step: Step,
) -> (
    Arc<Gate>,
    Arc<ValkeyClusterStore>,
    String,
    String,
    String,
    JoinHandle<Result<(), impl std::fmt::Debug>>,
) {
    let (gate, store) = gated(cluster, step);
    let did = unique_did();
    let (record, access) = session(&did);
    store.create(&record, LIFETIMES).await.expect("create");
    let new_access = Token::generate().expect("random").into_string();
    let refresh = held_at(
        &gate,
        refresh_session_id(
            store.clone(),
            record.sid.clone(),
            new_access.clone(),
            LIFETIMES,
        ),
    )
    .await;
    (gate, store, did, access, new_access, refresh)
}

/// Returns once the clock reads more than a millisecond past `ms`: the cap ranks sessions
/// by time, so what comes next must be at least a tick later.
async fn past(ms: i64) {
    while now_ms() <= ms + 1 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Connections to every Valkey node behind `app`; none for the memory store.
async fn store_connections(
    app: &TestApp,
    backend: Backend,
) -> Option<Vec<redis::aio::MultiplexedConnection>> {
    match backend {
        Backend::Memory => None,
        Backend::Valkey => Some(vec![app.valkey().client().await]),
        Backend::Cluster => Some(node_connections(app.cluster.as_ref().expect("cluster")).await),
    }
}

async fn is_indexed(cluster: &ValkeyCluster, did: &str, sid: &str) -> bool {
    let mut conn = cluster.connection().await;
    redis::cmd("SISMEMBER")
        .arg(format!("{PREFIX}did:{did}"))
        .arg(sid)
        .query_async(&mut conn)
        .await
        .expect("SISMEMBER")
}

/// A create held at each of its steps while another create of the
/// same DID runs (and prunes the index) to its end. Both sessions must stay indexed, so
/// that delete-all revokes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_did_both_stay_in_its_index() {
    let cluster = ValkeyCluster::start().await;
    for step in [
        Step::CreateSampled,
        Step::CreateDataWritten,
        Step::CreateIndexed,
    ] {
        let (gate, store) = gated(&cluster, step);
        let did = unique_did();
        let ((held, held_access), (other, other_access)) = (session(&did), session(&did));
        let first = held_at(&gate, {
            let store = store.clone();
            async move { store.create(&held, LIFETIMES).await }
        })
        .await;
        store.create(&other, LIFETIMES).await.expect("create");
        gate.release();
        first.await.expect("task").expect("create");

        assert!(validates(&store, &held_access).await, "{step:?}");
        assert!(validates(&store, &other_access).await, "{step:?}");
        assert_eq!(
            store
                .delete_all_for_did(&did, Revocation::AllForDid)
                .await
                .expect("delete-all"),
            2,
            "{step:?}"
        );
        assert!(
            !validates(&store, &held_access).await,
            "{step:?}: survived a takedown"
        );
        assert!(
            !validates(&store, &other_access).await,
            "{step:?}: survived a takedown"
        );
    }
    assert_every_cluster_key_expires(&cluster).await;
}

/// A delete-all held after listing the index while a create of the same DID
/// runs. The new session may outlive this delete-all (it came after the listing), but it
/// must stay in the index, so that the next one revokes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_during_delete_all_stays_reachable_from_its_index() {
    let cluster = ValkeyCluster::start().await;
    let (gate, store) = gated(&cluster, Step::DeleteAllListed);
    let did = unique_did();
    let (old, old_access) = session(&did);
    store.create(&old, LIFETIMES).await.expect("create");

    let takedown = held_at(&gate, {
        let (store, did) = (store.clone(), did.clone());
        async move { store.delete_all_for_did(&did, Revocation::AllForDid).await }
    })
    .await;
    let (new, new_access) = session(&did);
    store.create(&new, LIFETIMES).await.expect("create");
    gate.release();
    assert_eq!(takedown.await.expect("task").expect("delete-all"), 1);

    assert!(!validates(&store, &old_access).await);
    assert!(validates(&store, &new_access).await);
    assert!(
        is_indexed(&cluster, &did, &new.sid).await,
        "lost from the index"
    );
    assert_eq!(
        store
            .delete_all_for_did(&did, Revocation::AllForDid)
            .await
            .expect("delete-all"),
        1
    );
    assert!(!validates(&store, &new_access).await);
    assert_every_cluster_key_expires(&cluster).await;
}

/// A refresh held at each of its steps while a delete-all of its DID runs: afterwards no
/// token of that session validates, whichever finished first, and nothing is left to
/// live forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_racing_delete_all_leaves_no_valid_token() {
    let cluster = ValkeyCluster::start().await;
    for step in [Step::RefreshRead, Step::RefreshDataWritten] {
        let (gate, store, did, access, new_access, refresh) =
            held_refresh_of_a_new_session(&cluster, step).await;
        assert_eq!(
            store
                .delete_all_for_did(&did, Revocation::AllForDid)
                .await
                .expect("delete-all"),
            1
        );
        gate.release();
        refresh.await.expect("task").expect("refresh answers");

        assert!(!validates(&store, &access).await, "{step:?}");
        assert!(
            !validates(&store, &new_access).await,
            "{step:?}: a deleted session's token"
        );
    }
    assert_every_cluster_key_expires(&cluster).await;
}

/// A create whose caller gives up between two steps (client cancel, request
/// timeout) still completes: the index gets its member and its TTL together, and the
/// session ends up whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_create_completes_and_leaves_no_key_without_a_ttl() {
    let cluster = ValkeyCluster::start().await;
    let (gate, store) = gated(&cluster, Step::CreateDataWritten);
    let did = unique_did();
    let (record, access) = session(&did);
    let caller = held_at(&gate, {
        let (store, record) = (store.clone(), record.clone());
        async move { store.create(&record, LIFETIMES).await }
    })
    .await;
    caller.abort();
    assert!(caller.await.expect_err("cancelled").is_cancelled());
    gate.release();
    // The operation goes on without its caller; its last step is the access key.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !validates(&store, &access).await {
        assert!(tokio::time::Instant::now() < deadline, "never completed");
        tokio::task::yield_now().await;
    }
    assert!(is_indexed(&cluster, &did, &record.sid).await);
    assert_every_cluster_key_expires(&cluster).await;
}

/// Lifetimes with refresh-token rotation on and a grace of `grace`.
fn rotating(grace: Duration) -> Lifetimes {
    Lifetimes {
        tokens: TokenRules {
            rotation: true,
            reuse_grace: grace,
            ..TokenRules::DEFAULT
        },
        ..LIFETIMES
    }
}

/// A new session of `did` created with rotation on: the record, its access token and its
/// first refresh token.
fn rotated_session(did: &str) -> (SessionRecord, String, String) {
    let (mut record, access) = session(did);
    let first = rotation::first_token().expect("random");
    record.refresh_family = Some(rotation::family_hash(&first));
    record.refresh_token_hash = Some(sha256_hex(&first));
    (record, access, first)
}

/// What one refresh with `cookie` answered: the new access token and the cookie's
/// successor (empty without one), or how it ended.
async fn refresh_with(
    store: &Arc<impl SessionStore>,
    cookie: &str,
    lifetimes: Lifetimes,
) -> Result<(String, String), &'static str> {
    let candidate = lifetimes
        .tokens
        .rotation
        .then(|| Candidate::new(cookie).expect("random"));
    refresh_offering(store, cookie, lifetimes, candidate).await
}

/// [`refresh_with`], offering `candidate` as the successor.
async fn refresh_offering(
    store: &Arc<impl SessionStore>,
    cookie: &str,
    lifetimes: Lifetimes,
    candidate: Option<Candidate>,
) -> Result<(String, String), &'static str> {
    let access = Token::generate().expect("random").into_string();
    let hash = sha256_hex(&access);
    let refresh = Refresh {
        new_access_hash: &hash,
        previous_access_hash: None,
        client: None,
        rotation: candidate.as_ref(),
    };
    let presented = Presented::parse(cookie).expect("a token");
    match store
        .refresh(&presented, &refresh, lifetimes)
        .await
        .expect("store answers")
    {
        ByRefresh::Found(refreshed) => {
            let successor = refreshed
                .record
                .successor_path(&sha256_hex(cookie))
                .map(|nonces| rotation::successor_along(cookie, &nonces))
                .unwrap_or_default();
            if !successor.is_empty() {
                assert_eq!(
                    refreshed.record.refresh_token_hash,
                    Some(sha256_hex(&successor)),
                    "the successor is the session's current refresh token"
                );
            }
            Ok((access, successor))
        }
        ByRefresh::NotFound => Err("not found"),
        ByRefresh::Reused { .. } => Err("reused"),
        ByRefresh::PastLifetime => Err("past its lifetime"),
    }
}

/// Two tabs refresh with one cookie while one of them is held at each step
/// of the cluster refresh: both succeed with the same successor (exactly one is live),
/// both access tokens validate, and every key expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_of_one_cookie_converge_at_every_step() {
    let cluster = ValkeyCluster::start().await;
    let lifetimes = rotating(Duration::from_secs(10));
    for step in [Step::RefreshRead, Step::RefreshDataWritten] {
        let (gate, store) = gated(&cluster, step);
        let (record, _, cookie) = rotated_session(&unique_did());
        store.create(&record, lifetimes).await.expect("create");
        let held = held_refresh(&gate, &store, &cookie, lifetimes).await;
        let other = refresh_with(&store, &cookie, lifetimes)
            .await
            .expect("other tab");
        gate.release();
        let held = held.await.expect("task").expect("held tab");
        assert_eq!(held.1, other.1, "{step:?}: one successor");
        assert!(!held.1.is_empty());
        assert!(validates(&store, &held.0).await && validates(&store, &other.0).await);
        // The successor refreshes; the cookie it replaced, two rotations old now but
        // inside the grace, reaches the current one too.
        let next = refresh_with(&store, &held.1, lifetimes)
            .await
            .expect("successor");
        assert!(validates(&store, &next.0).await);
        let late = refresh_with(&store, &cookie, lifetimes)
            .await
            .expect("within the grace");
        assert_eq!(late.1, next.1, "{step:?}: the current successor");
        assert!(validates(&store, &late.0).await && validates(&store, &next.0).await);
    }
    assert_every_cluster_key_expires(&cluster).await;
}

/// Without a grace, the tab held before its write is reuse once the other has rotated:
/// the whole session is revoked, its successor included, and nothing is left to live
/// forever (the family key the held refresh rewrote goes with the session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_overtaken_without_grace_revokes_the_session() {
    let cluster = ValkeyCluster::start().await;
    let lifetimes = rotating(Duration::ZERO);
    let (gate, store) = gated(&cluster, Step::RefreshRead);
    let (record, access, cookie) = rotated_session(&unique_did());
    store.create(&record, lifetimes).await.expect("create");
    let held = held_refresh(&gate, &store, &cookie, lifetimes).await;
    let other = refresh_with(&store, &cookie, lifetimes)
        .await
        .expect("first tab");
    gate.release();
    assert_eq!(held.await.expect("task"), Err("reused"));
    for token in [&access, &other.0] {
        assert!(
            !validates(&store, token).await,
            "no token of a revoked session"
        );
    }
    assert_eq!(
        refresh_with(&store, &other.1, lifetimes).await,
        Err("not found")
    );
    let left: Vec<_> = keys_and_ttls(&mut node_connections(&cluster).await)
        .await
        .into_iter()
        .filter(|(key, _)| {
            !key.starts_with(&format!("{PREFIX}access:")) && !crate::support::is_end_record(key)
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_every_cluster_key_expires(&cluster).await;
}

/// A rotating refresh held at each step while a logout with the same cookie runs: no
/// token of the session validates afterwards, its successor finds nothing, and every key
/// expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_racing_logout_leaves_no_live_token() {
    let cluster = ValkeyCluster::start().await;
    let lifetimes = rotating(Duration::from_secs(10));
    for step in [Step::RefreshRead, Step::RefreshDataWritten] {
        let (gate, store) = gated(&cluster, step);
        let (record, access, cookie) = rotated_session(&unique_did());
        store.create(&record, lifetimes).await.expect("create");
        let held = held_refresh(&gate, &store, &cookie, lifetimes).await;
        let presented = Presented::parse(&cookie).expect("token");
        let deleted = store
            .delete(&presented, lifetimes.tokens.reuse_grace)
            .await
            .expect("logout");
        assert!(matches!(deleted, ByRefresh::Found(_)), "{step:?}");
        gate.release();
        let held = held.await.expect("task");
        assert!(!validates(&store, &access).await, "{step:?}");
        if let Ok((new_access, successor)) = held {
            assert!(!validates(&store, &new_access).await, "{step:?}");
            assert_eq!(
                refresh_with(&store, &successor, lifetimes).await,
                Err("not found"),
                "{step:?}"
            );
        }
    }
    assert_every_cluster_key_expires(&cluster).await;
}

/// Two tabs move a session whose cookie is its sid to rotation at once, one held before
/// its write: both get the same successor; the family key the overtaken one wrote for its
/// own candidate names no token's family, finds nothing, and expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_of_a_session_id_converge() {
    let cluster = ValkeyCluster::start().await;
    let lifetimes = rotating(Duration::from_secs(10));
    let (gate, store) = gated(&cluster, Step::RefreshRead);
    let (record, _) = session(&unique_did());
    store
        .create(&record, LIFETIMES)
        .await
        .expect("create, rotation off");
    let sid = record.sid.clone();
    let offered = Candidate::new(&sid).expect("random");
    let held = held_at(&gate, {
        let (store, sid, offered) = (store.clone(), sid.clone(), offered.clone());
        async move { refresh_offering(&store, &sid, lifetimes, Some(offered)).await }
    })
    .await;
    let other = refresh_with(&store, &sid, lifetimes)
        .await
        .expect("first tab");
    gate.release();
    let held = held
        .await
        .expect("task")
        .expect("second tab, within the grace");
    assert_eq!(held.1, other.1, "one successor");
    assert!(rotation::is_rotated(&held.1));
    // A token of the family the overtaken refresh had offered is no token of the session.
    let stray = rotation::successor(&sid, &offered.nonce);
    assert_eq!(rotation::family_hash(&stray), offered.family_hash);
    assert_eq!(
        refresh_with(&store, &stray, lifetimes).await,
        Err("not found")
    );
    assert!(refresh_with(&store, &held.1, lifetimes).await.is_ok());
    assert_every_cluster_key_expires(&cluster).await;
}

/// The in-memory store moves a session whose cookie is its sid to rotation like the
/// Valkey stores do (their tests run through the service and the TypeScript layout):
/// the sid then works within the grace, and is reuse once its rotation is older.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_moves_a_session_id_to_rotation() {
    let store = Arc::new(barazo_session::store::memory::MemoryStore::new());
    let grace = Duration::from_secs(1);
    let lifetimes = rotating(grace);
    let (record, access) = session(&unique_did());
    store
        .create(&record, LIFETIMES)
        .await
        .expect("create, rotation off");
    let (tab, successor) = refresh_with(&store, &record.sid, lifetimes)
        .await
        .expect("migrates");
    assert!(rotation::is_rotated(&successor));
    let (_, again) = refresh_with(&store, &record.sid, lifetimes)
        .await
        .expect("within the grace");
    assert_eq!(again, successor);
    let (_, next) = refresh_with(&store, &successor, lifetimes)
        .await
        .expect("rotated cookie");
    assert!(validates(&store, &access).await && validates(&store, &tab).await);
    // The grace is a span of time: let it pass for the sid's rotation.
    tokio::time::sleep(grace).await;
    assert_eq!(
        refresh_with(&store, &record.sid, lifetimes).await,
        Err("reused")
    );
    assert!(!validates(&store, &tab).await);
    assert_eq!(
        refresh_with(&store, &next, lifetimes).await,
        Err("not found")
    );
}

const ROTATION: &[&str] = &["--refresh-token-rotation", "on"];

store_tests!(
    takedown_under_concurrent_logins,
    takedown_under_concurrent_rotating_logins,
    concurrent_logins_over_the_cap,
);
store_tests!(a_session_that_is_not_utf8_is_unreadable_not_an_outage on valkey, cluster);

/// Many concurrent creates and refreshes of one DID with a delete-all in the middle; a
/// final delete-all leaves no token that validates, and no key without a TTL.
async fn takedown_under_concurrent_logins(backend: Backend) {
    takedown_under_concurrent_logins_with(backend, &[]).await;
}

/// [`takedown_under_concurrent_logins`] with rotation on: each login refreshes twice with
/// its cookie at once, then once with the successor.
async fn takedown_under_concurrent_rotating_logins(backend: Backend) {
    takedown_under_concurrent_logins_with(backend, ROTATION).await;
}

/// [`takedown_under_concurrent_logins`] with extra server flags.
async fn takedown_under_concurrent_logins_with(backend: Backend, flags: &[&str]) {
    let app = TestApp::spawn_with(backend, flags).await;
    let did = unique_did();
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut logins = Vec::new();
    for _ in 0..8 {
        let (client, did, tokens) = (app.client.clone(), did.clone(), tokens.clone());
        logins.push(tokio::spawn(async move {
            for _ in 0..5 {
                let created = login(client.clone(), &did, "alice.test")
                    .await
                    .expect("create");
                let mut mine = vec![created.access_token.clone()];
                let mut cookie = created.refresh_token.clone();
                for tabs in [2, 1] {
                    let answers: Vec<_> = (0..tabs)
                        .map(|_| {
                            let mut client = client.clone();
                            let refresh_token = cookie.clone();
                            tokio::spawn(async move {
                                client
                                    .refresh_session(barazo_session::proto::RefreshSessionRequest {
                                        refresh_token,
                                        ..Default::default()
                                    })
                                    .await
                            })
                        })
                        .collect();
                    for answer in answers {
                        match answer.await.expect("refresh task") {
                            Ok(refreshed) => {
                                let refreshed = refreshed.into_inner();
                                mine.push(refreshed.access_token);
                                if !refreshed.refresh_token.is_empty() {
                                    cookie = refreshed.refresh_token;
                                }
                            }
                            // Deleted by the takedown in between: as it should be.
                            Err(status) => assert_eq!(status.code(), Code::NotFound),
                        }
                    }
                }
                if let Ok(mut all) = tokens.lock() {
                    all.extend(mine);
                }
            }
        }));
    }
    // A takedown while the logins run.
    tokio::task::yield_now().await;
    app.delete_all(&did).await.expect("delete-all");
    for login in logins {
        login.await.expect("logins");
    }
    app.delete_all(&did).await.expect("delete-all");
    let tokens = tokens.lock().map(|t| t.clone()).unwrap_or_default();
    assert!(tokens.len() >= 40, "{}", tokens.len());
    for token in &tokens {
        assert!(
            !app.validate(token).await.valid,
            "a token survived the takedown"
        );
    }
    let Some(mut conns) = store_connections(&app, backend).await else {
        return;
    };
    assert_every_key_expires(&mut conns).await;
    let index = format!("{PREFIX}did:{did}");
    let left: Vec<_> = keys_and_ttls(&mut conns)
        .await
        .into_iter()
        .filter(|(key, _)| key.starts_with(&index))
        .collect();
    assert!(left.is_empty(), "the index still lists {left:?}");
}

const CAP: u32 = 3;

/// [`LIFETIMES`] with a cap of [`CAP`] sessions per DID.
const CAPPED: Lifetimes = Lifetimes {
    max_per_did: std::num::NonZeroU32::new(CAP),
    ..LIFETIMES
};

/// The DID index's members, each with whether its data exists.
async fn index_members(cluster: &ValkeyCluster, did: &str) -> Vec<(String, bool)> {
    let mut conn = cluster.connection().await;
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{PREFIX}did:{did}"))
        .query_async(&mut conn)
        .await
        .expect("SMEMBERS");
    let mut found = Vec::new();
    for sid in members {
        let live: bool = redis::cmd("EXISTS")
            .arg(format!("{PREFIX}data:{sid}"))
            .query_async(&mut conn)
            .await
            .expect("EXISTS");
        found.push((sid, live));
    }
    found
}

/// Two logins of a DID at its cap, one held at each step of its create (the cap's listing
/// and its revocations included) while the other runs to its end. Afterwards no more than
/// the cap are live, exactly the newest sessions, every index member is live, every
/// revoked session's token is refused, and every key has a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_over_the_cap_keep_exactly_the_newest() {
    let cluster = ValkeyCluster::start().await;
    for step in [
        Step::CreateDataWritten,
        Step::CreateIndexed,
        Step::CreateCapListed,
        // The cap's first revocation: the victim is read, not yet revoked.
        Step::DeleteRead,
    ] {
        let (gate, store) = gated(&cluster, step);
        let did = unique_did();
        // The DID at its cap, written through a second store whose gate no create reaches
        // (a cap means no sampling step), one clock tick apart: the cap ranks by time.
        let plain = self::store(&cluster, &Gate::at(Step::CreateSampled));
        let mut sessions = Vec::new();
        for _ in 0..CAP {
            let (record, access) = session(&did);
            let created = plain.create(&record, CAPPED).await.expect("create");
            past(created.record.created_at).await;
            sessions.push((record, access));
        }
        let (held, held_access) = session(&did);
        let (other, other_access) = session(&did);
        let first = held_at(&gate, {
            let store = store.clone();
            async move { store.create(&held, CAPPED).await }
        })
        .await;
        store.create(&other, CAPPED).await.expect("create");
        gate.release();
        first.await.expect("task").expect("a login always succeeds");

        let members = index_members(&cluster, &did).await;
        assert!(
            members.iter().all(|(_, live)| *live),
            "{step:?}: dead index members {members:?}"
        );
        let live = store.list_for_did(&did).await.expect("list");
        assert_eq!(live.len(), CAP as usize, "{step:?}: {live:?}");
        assert_eq!(members.len(), live.len(), "{step:?}");
        // The first two logins went, whole; the newest three stay.
        for (_, access) in &sessions[..2] {
            assert!(!validates(&store, access).await, "{step:?}: revoked");
        }
        for access in [&sessions[2].1, &held_access, &other_access] {
            assert!(validates(&store, access).await, "{step:?}: kept");
        }
    }
    assert_every_cluster_key_expires(&cluster).await;
}

/// A refresh held at each of its steps while a login over the cap (of 1) revokes its
/// session: afterwards neither of that session's tokens validates, the new login's does,
/// only it is listed, and every key has a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_racing_the_cap_leaves_no_valid_token() {
    let cluster = ValkeyCluster::start().await;
    let one = Lifetimes {
        max_per_did: std::num::NonZeroU32::new(1),
        ..LIFETIMES
    };
    for step in [Step::RefreshRead, Step::RefreshDataWritten] {
        let (gate, store) = gated(&cluster, step);
        let did = unique_did();
        let (record, access) = session(&did);
        let created = store.create(&record, one).await.expect("create");
        past(created.record.created_at).await;
        let new_access = Token::generate().expect("random").into_string();
        let refresh = held_at(
            &gate,
            refresh_session_id(store.clone(), record.sid.clone(), new_access.clone(), one),
        )
        .await;
        // The login comes later than the held refresh's refreshedAt: it is the one to keep.
        past(now_ms()).await;
        let (login, login_access) = session(&did);
        let capped = store
            .create(&login, one)
            .await
            .expect("a login always succeeds");
        assert_eq!(capped.revoked, 1, "{step:?}");
        gate.release();
        refresh.await.expect("task").expect("refresh answers");

        assert!(!validates(&store, &access).await, "{step:?}");
        assert!(
            !validates(&store, &new_access).await,
            "{step:?}: a capped session's token"
        );
        assert!(validates(&store, &login_access).await, "{step:?}");
        let listed = store.list_for_did(&did).await.expect("list");
        assert_eq!(listed.len(), 1, "{step:?}");
        assert_eq!(listed[0].sid, login.sid, "{step:?}");
    }
    assert_every_cluster_key_expires(&cluster).await;
}

/// Many concurrent logins of one DID over the cap, on every topology: after quiescence the
/// DID holds exactly the cap, every index member is live, every token of a revoked session
/// is refused, and every key has a TTL.
async fn concurrent_logins_over_the_cap(backend: Backend) {
    let cap = CAP.to_string();
    let app = TestApp::spawn_with(backend, &["--max-sessions-per-did", &cap]).await;
    let did = unique_did();
    let mut logins = Vec::new();
    for _ in 0..6 {
        let (client, did) = (app.client.clone(), did.clone());
        logins.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..4 {
                let created = login(client.clone(), &did, "alice.test")
                    .await
                    .expect("a login always succeeds");
                mine.push(created);
            }
            mine
        }));
    }
    let mut created = Vec::new();
    for login in logins {
        created.extend(login.await.expect("logins"));
    }
    let live = app
        .client
        .clone()
        .list_sessions(barazo_session::proto::ListSessionsRequest { did: did.clone() })
        .await
        .expect("list")
        .into_inner()
        .sessions;
    assert_eq!(live.len(), CAP as usize, "{live:?}");
    let kept: Vec<&str> = live.iter().map(|s| s.session_key.as_str()).collect();
    for session in &created {
        let listed = kept.contains(&sha256_hex(&session.refresh_token).as_str());
        assert_eq!(
            app.validate(&session.access_token).await.valid,
            listed,
            "only the listed sessions validate"
        );
    }
    let Some(mut conns) = store_connections(&app, backend).await else {
        return;
    };
    assert_every_key_expires(&mut conns).await;
    let keys = keys_and_ttls(&mut conns).await;
    let data = |sid: &str| format!("{PREFIX}data:{sid}");
    let index = format!("{PREFIX}did:{did}");
    let data_left = created
        .iter()
        .filter(|c| keys.iter().any(|(k, _)| *k == data(&c.refresh_token)))
        .count();
    assert_eq!(data_left, CAP as usize, "revoked sessions' data is gone");
    let mut members: Vec<String> = Vec::new();
    for conn in &mut conns {
        if keys.iter().any(|(k, _)| *k == index) {
            let found: Vec<String> = redis::cmd("SMEMBERS")
                .arg(&index)
                .query_async(conn)
                .await
                .unwrap_or_default();
            members.extend(found);
        }
    }
    assert_eq!(members.len(), CAP as usize, "index: {members:?}");
    for member in &members {
        assert!(
            keys.iter().any(|(k, _)| *k == data(member)),
            "dead index member"
        );
    }
}

/// Writes `garbage` over a session's data, then checks that validate and refresh refuse it;
/// returns what is stored afterwards.
async fn refresh_unreadable(
    app: &TestApp,
    conn: &mut impl redis::aio::ConnectionLike,
    created: &barazo_session::proto::CreateSessionResponse,
    data_key: &str,
    garbage: &[u8],
) -> Vec<u8> {
    let _: () = redis::cmd("SET")
        .arg(data_key)
        .arg(garbage)
        .arg("PX")
        .arg(600_000)
        .query_async(conn)
        .await
        .expect("write");
    assert!(!app.validate(&created.access_token).await.valid);
    let refused = app
        .refresh(&created.refresh_token)
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    redis::cmd("GET")
        .arg(data_key)
        .query_async(conn)
        .await
        .expect("read")
}

/// A stored session that is not UTF-8 is unreadable, not an outage: validate
/// says invalid, refresh says NOT_FOUND without writing anything, delete removes it, and
/// the service stays SERVING.
async fn a_session_that_is_not_utf8_is_unreadable_not_an_outage(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let did = unique_did();
    let created = app.create(&did, "alice.test").await;
    let data_key = format!("{PREFIX}data:{}", created.refresh_token);
    let garbage: Vec<u8> = [b"{\"sid\":\"".as_slice(), b"\xff\xfe", b"\"}"].concat();
    let stored = match backend {
        Backend::Cluster => {
            let cluster = app.cluster.as_ref().expect("cluster");
            let mut conn = cluster.connection().await;
            refresh_unreadable(&app, &mut conn, &created, &data_key, &garbage).await
        }
        _ => {
            let mut conn = app.valkey().client().await;
            refresh_unreadable(&app, &mut conn, &created, &data_key, &garbage).await
        }
    };
    assert_eq!(stored, garbage, "a refused refresh writes nothing");
    assert!(app.delete(&created.refresh_token).await.expect("delete"));
    assert!(
        !app.delete(&created.refresh_token).await.expect("delete"),
        "it is gone"
    );
    assert_eq!(
        app.health_status().await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

/// A handle change while a refresh is held between its steps keeps the new handle (the
/// refresh rewrites the data as it is when its own script runs), one while a logout is
/// held does not bring the session back, and one while a create is held (data written, not
/// yet indexed) leaves that login's handle: the login and the change raced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_change_between_the_steps_of_a_refresh_a_logout_or_a_create() {
    let cluster = ValkeyCluster::start().await;
    let handle_of = async |store: &Arc<ValkeyClusterStore>, access: &str| {
        let hash = sha256_hex(access);
        store
            .find_by_access_hash(&hash)
            .await
            .expect("store answers")
            .map(|found| found.record.handle)
    };
    for step in [Step::RefreshRead, Step::RefreshDataWritten] {
        let (gate, store, did, _, new_access, refresh) =
            held_refresh_of_a_new_session(&cluster, step).await;
        assert_eq!(
            store.update_handle(&did, "new.test").await.expect("update"),
            1
        );
        gate.release();
        refresh.await.expect("task").expect("refresh answers");
        assert_eq!(
            handle_of(&store, &new_access).await.as_deref(),
            Some("new.test"),
            "{step:?}"
        );
    }

    let (gate, store) = gated(&cluster, Step::DeleteRead);
    let did = unique_did();
    let (record, access) = session(&did);
    store.create(&record, LIFETIMES).await.expect("create");
    let presented = Presented::parse(&record.sid).expect("a sid");
    let logout = {
        let store = store.clone();
        held_at(&gate, async move {
            store.delete(&presented, Duration::ZERO).await.map(|_| ())
        })
        .await
    };
    assert_eq!(
        store.update_handle(&did, "new.test").await.expect("update"),
        1
    );
    gate.release();
    logout.await.expect("task").expect("logout answers");
    assert!(!validates(&store, &access).await, "the logout wins");
    assert_eq!(
        store
            .update_handle(&did, "newer.test")
            .await
            .expect("update"),
        0
    );

    let (gate, store) = gated(&cluster, Step::CreateDataWritten);
    let did = unique_did();
    let (record, access) = session(&did);
    let create = {
        let (store, record) = (store.clone(), record.clone());
        held_at(&gate, async move {
            store.create(&record, LIFETIMES).await.map(|_| ())
        })
        .await
    };
    assert_eq!(
        store.update_handle(&did, "new.test").await.expect("update"),
        0
    );
    gate.release();
    create.await.expect("task").expect("create answers");
    assert_eq!(
        handle_of(&store, &access).await.as_deref(),
        Some("alice.test"),
        "the login's own handle"
    );
    assert_eq!(
        store.update_handle(&did, "new.test").await.expect("update"),
        1
    );
    assert_eq!(
        handle_of(&store, &access).await.as_deref(),
        Some("new.test")
    );
    assert_every_cluster_key_expires(&cluster).await;
}
