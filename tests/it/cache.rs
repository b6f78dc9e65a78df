//! The validation cache: answers from memory only while Valkey's invalidation
//! feed is live, and never a stale `valid=true`: revocations on another replica, by the
//! TypeScript code, by key expiry, a read racing an invalidation, and every way the feed
//! can break.

use crate::support::http::get;
use crate::support::valkey::Valkey;
use crate::support::{Backend, TestApp, unique_did};
use barazo_session::api::validation::AccessTokens;
use barazo_session::cache::feed::Subscribers;
use barazo_session::cache::{FeedEvents, Invalidation, OwnWrites, ValidationCache};
use barazo_session::config::StoreKind;
use barazo_session::domain::rotation::Presented;
use barazo_session::domain::{Lifetimes, TokenRules};
use barazo_session::domain::{SessionRecord, sha256_hex};
use barazo_session::observe::metrics::Metrics;
use barazo_session::rpc::Rpc;
use barazo_session::store::valkey::{ValkeyOptions, ValkeyStore, standalone};
use barazo_session::store::{ByRefresh, SessionStore};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, broadcast};
use tonic::Code;

const PREFIX: &str = "barazo:session:";

/// How long a test waits for a signal before failing (never the expected time).
const PATIENCE: Duration = Duration::from_secs(10);

/// A counter or gauge of the app's `/metrics`.
pub(crate) async fn metric(app: &TestApp, name: &str) -> f64 {
    let (_, text) = get(app.metrics_addr.expect("admin listener"), "/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no series {name}"))
}

pub(crate) const HITS: &str = "barazo_session_validation_cache_hits_total";
pub(crate) const MISSES: &str = "barazo_session_validation_cache_misses_total";
pub(crate) const RESETS: &str = "barazo_session_validation_cache_resets_total";
pub(crate) const ENTRIES: &str = "barazo_session_validation_cache_entries";
pub(crate) const FEED_LIVE: &str = "barazo_session_validation_cache_feed_live";

/// Polls `check` until it holds; panics after [`PATIENCE`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < PATIENCE, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Validates `token` on `app` until an answer comes from the cache (the feed may still be
/// subscribing when the app reports SERVING).
pub(crate) async fn cache(app: &TestApp, token: &str) {
    eventually("the token is answered from the cache", || async {
        let before = metric(app, HITS).await;
        assert!(app.validate(token).await.valid, "a live token validates");
        metric(app, HITS).await > before
    })
    .await;
}

async fn spawn(valkey: Valkey) -> TestApp {
    let app = TestApp::spawn_against(
        StoreKind::Valkey,
        Some(valkey),
        &["--metrics-listen", "127.0.0.1:0"],
    )
    .await;
    app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    app
}

/// A second replica on the same Valkey.
pub(crate) async fn replica(valkey: &Valkey) -> TestApp {
    let app = TestApp::spawn_against(
        StoreKind::Valkey,
        None,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--valkey-url",
            &valkey.url(),
        ],
    )
    .await;
    app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    app
}

/// A second replica of the service on `app`'s Valkey, standalone or cluster, its cache on.
pub(crate) async fn second_replica(app: &TestApp) -> TestApp {
    match &app.cluster {
        Some(_) => crate::cluster_cache::replica(app).await,
        None => replica(app.valkey()).await,
    }
}

store_tests!(a_session_revoked_on_one_replica_stops_validating_on_the_other_within_a_second on valkey, cluster);

async fn a_session_revoked_on_one_replica_stops_validating_on_the_other_within_a_second(
    backend: Backend,
) {
    let a = TestApp::spawn_with(backend, &["--metrics-listen", "127.0.0.1:0"]).await;
    let b = second_replica(&a).await;
    let created = a.create(&unique_did(), "alice.test").await;
    cache(&b, &created.access_token).await;
    assert!(metric(&b, ENTRIES).await >= 1.0);

    let revoked = Instant::now();
    assert!(a.delete(&created.refresh_token).await.expect("delete"));
    eventually("B stops validating the revoked token", || async {
        !b.validate(&created.access_token).await.valid
    })
    .await;
    let took = revoked.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// A replica's own write shows in its own validations at once (no wait for Valkey's
/// invalidation), and drops only the answers of the session it wrote: other users' cached
/// answers survive every refresh and logout by a session id, or a busy forum's cache
/// would be emptied many times a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_write_drops_only_its_sessions_answers() {
    let app = spawn(Valkey::start()).await;
    let kept = app.create(&unique_did(), "alice.test").await;
    let written = app.create(&unique_did(), "bob.test").await;
    cache(&app, &kept.access_token).await;
    cache(&app, &written.access_token).await;

    app.refresh_tab(&written.refresh_token, &written.access_token)
        .await
        .expect("refresh");
    assert!(
        !app.validate(&written.access_token).await.valid,
        "the superseded token is refused by the replica that refreshed it, at once"
    );
    let hits = metric(&app, HITS).await;
    assert!(app.validate(&kept.access_token).await.valid);
    assert_eq!(
        metric(&app, HITS).await,
        hits + 1.0,
        "another session's answer is still cached after the refresh"
    );

    let other = app.create(&unique_did(), "carol.test").await;
    assert!(app.delete(&other.refresh_token).await.expect("delete"));
    let hits = metric(&app, HITS).await;
    assert!(app.validate(&kept.access_token).await.valid);
    assert_eq!(
        metric(&app, HITS).await,
        hits + 1.0,
        "and after a logout by a session id"
    );
}

/// With refresh-token rotation a logout's cookie names a family, not a session; the store
/// answers with the session it revoked, so the replica still drops only that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_logout_drops_only_its_sessions_answers() {
    let app = TestApp::spawn_against(
        StoreKind::Valkey,
        Some(Valkey::start()),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--refresh-token-rotation",
            "on",
        ],
    )
    .await;
    app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let kept = app.create(&unique_did(), "alice.test").await;
    let leaving = app.create(&unique_did(), "bob.test").await;
    assert!(
        matches!(
            Presented::parse(&leaving.refresh_token).map(|p| p.lookup),
            Some(barazo_session::domain::rotation::Lookup::Family(_))
        ),
        "a rotated cookie, not a session id"
    );
    cache(&app, &kept.access_token).await;
    cache(&app, &leaving.access_token).await;

    assert!(app.delete(&leaving.refresh_token).await.expect("logout"));
    assert!(
        !app.validate(&leaving.access_token).await.valid,
        "the logged-out token is refused at once"
    );
    let hits = metric(&app, HITS).await;
    assert!(app.validate(&kept.access_token).await.valid);
    assert_eq!(
        metric(&app, HITS).await,
        hits + 1.0,
        "another session's answer is still cached"
    );
}

/// A tab's refresh on replica A that names its previous token ends that token on replica B,
/// which had it cached; a refresh by another tab (no previous token) leaves it valid there,
/// re-read after the session's data changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_on_another_replica_ends_the_cached_old_token() {
    let a = spawn(Valkey::start()).await;
    let b = replica(a.valkey()).await;
    let created = a.create(&unique_did(), "alice.test").await;
    cache(&b, &created.access_token).await;
    let other_tab = a.refresh(&created.refresh_token).await.expect("refresh");
    assert!(
        b.validate(&created.access_token).await.valid,
        "another tab's refresh keeps this tab's token"
    );
    cache(&b, &created.access_token).await;
    let refreshed = a
        .refresh_tab(&created.refresh_token, &created.access_token)
        .await
        .expect("refresh");
    eventually("B refuses the superseded token", || async {
        !b.validate(&created.access_token).await.valid
    })
    .await;
    assert!(b.validate(&refreshed.access_token).await.valid);
    assert!(b.validate(&other_tab.access_token).await.valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_revoked_by_the_typescript_code_stops_validating_here() {
    let app = spawn(Valkey::start()).await;
    let did = unique_did();
    let created = app.create(&did, "alice.test").await;
    cache(&app, &created.access_token).await;
    // The TypeScript AppView's deleteSession, command by command, not through this service.
    let mut conn = app.valkey().client().await;
    let sid = &created.refresh_token;
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(format!("{PREFIX}data:{sid}"))
        .cmd("DEL")
        .arg(format!(
            "{PREFIX}access:{}",
            sha256_hex(&created.access_token)
        ))
        .cmd("SREM")
        .arg(format!("{PREFIX}did:{did}"))
        .arg(sid)
        .query_async(&mut conn)
        .await
        .expect("TypeScript delete");
    eventually(
        "the TypeScript-revoked session stops validating",
        || async { !app.validate(&created.access_token).await.valid },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_access_key_stops_validating() {
    let app = spawn(Valkey::start()).await;
    let created = app.create(&unique_did(), "alice.test").await;
    cache(&app, &created.access_token).await;
    let mut conn = app.valkey().client().await;
    let _: () = redis::cmd("PEXPIRE")
        .arg(format!(
            "{PREFIX}access:{}",
            sha256_hex(&created.access_token)
        ))
        .arg(20)
        .query_async(&mut conn)
        .await
        .expect("PEXPIRE");
    // Valkey's active expiry deletes the key within its cycle and pushes the invalidation;
    // nothing reads the key meanwhile (the cache answers), so only the push can end it.
    eventually("the expired token stops validating", || async {
        !app.validate(&created.access_token).await.valid
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_feed_connection_drops_the_cache() {
    let app = spawn(Valkey::start()).await;
    let did = unique_did();
    let created = app.create(&did, "alice.test").await;
    cache(&app, &created.access_token).await;
    let mut conn = app.valkey().client().await;
    let resets = metric(&app, RESETS).await;
    // The tracking connection is the one with the `t` flag.
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("SKIPME")
        .arg("yes")
        .arg("FLAGS")
        .arg("t")
        .query_async(&mut conn)
        .await
        .unwrap_or(-1);
    if killed < 0 {
        // Older servers: no FLAGS filter; find it in CLIENT LIST.
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .expect("CLIENT LIST");
        let id = list
            .lines()
            .find(|line| {
                line.split(' ')
                    .any(|f| f.starts_with("flags=") && f.contains('t'))
            })
            .and_then(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
            .expect("a tracking client")
            .to_owned();
        let _: () = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut conn)
            .await
            .expect("CLIENT KILL");
    }
    eventually("the cache resets", || async {
        metric(&app, RESETS).await > resets
    })
    .await;
    assert_eq!(metric(&app, ENTRIES).await, 0.0);
    // Revoked behind the service's back while its feed was down or resubscribing.
    let sid = &created.refresh_token;
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(format!("{PREFIX}data:{sid}"))
        .cmd("DEL")
        .arg(format!(
            "{PREFIX}access:{}",
            sha256_hex(&created.access_token)
        ))
        .query_async(&mut conn)
        .await
        .expect("DEL");
    assert!(!app.validate(&created.access_token).await.valid);
    // And the feed comes back: a new session is cached again.
    let again = app.create(&did, "alice.test").await;
    cache(&app, &again.access_token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_drops_the_cache() {
    let app = spawn(Valkey::start()).await;
    let created = app.create(&unique_did(), "alice.test").await;
    cache(&app, &created.access_token).await;
    let resets = metric(&app, RESETS).await;
    let mut conn = app.valkey().client().await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("FLUSHALL");
    eventually("the cache resets", || async {
        metric(&app, RESETS).await > resets
    })
    .await;
    assert!(!app.validate(&created.access_token).await.valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_valkey_drops_the_cache_and_validation_is_unavailable() {
    let mut app = spawn(Valkey::start()).await;
    let created = app.create(&unique_did(), "alice.test").await;
    cache(&app, &created.access_token).await;
    let resets = metric(&app, RESETS).await;
    assert_eq!(
        metric(&app, FEED_LIVE).await,
        1.0,
        "answered from a live feed"
    );
    app.valkey_mut().kill();
    eventually("the cache resets", || async {
        metric(&app, RESETS).await > resets
    })
    .await;
    assert_eq!(metric(&app, FEED_LIVE).await, 0.0, "no feed without Valkey");
    let status = app
        .try_validate(&created.access_token)
        .await
        .expect_err("no answer without Valkey");
    assert_eq!(status.code(), Code::Unavailable);
    // A restarted Valkey lost the session (no persistence): no stale answer survives.
    app.valkey_mut().restart();
    eventually("Valkey answers again", || async {
        app.try_validate(&created.access_token).await.is_ok()
    })
    .await;
    assert!(!app.validate(&created.access_token).await.valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_its_hits_here_and_its_misses_from_valkey() {
    let app = spawn(Valkey::start()).await;
    let alice = app.create(&unique_did(), "alice.test").await;
    let bob = app.create(&unique_did(), "bob.test").await;
    cache(&app, &alice.access_token).await;
    let (hits, misses) = (metric(&app, HITS).await, metric(&app, MISSES).await);
    let batch = [
        alice.access_token.clone(),
        bob.access_token.clone(),
        "0".repeat(64),
        alice.access_token.clone(),
    ];
    let answers = app.validate_many(&batch).await.expect("the batch answers");
    assert_eq!(
        answers.iter().map(|a| a.valid).collect::<Vec<_>>(),
        [true, true, false, true]
    );
    // Alice twice from the cache; Bob and the unknown token from Valkey.
    assert_eq!(metric(&app, HITS).await - hits, 2.0);
    assert_eq!(metric(&app, MISSES).await - misses, 2.0);
    // A logout ends a cached answer in a batch as it does alone.
    cache(&app, &bob.access_token).await;
    assert!(app.delete(&bob.refresh_token).await.expect("logout"));
    let answers = app
        .validate_many(&[bob.access_token.clone(), alice.access_token.clone()])
        .await
        .expect("the batch answers");
    assert_eq!(
        answers.iter().map(|a| a.valid).collect::<Vec<_>>(),
        [false, true]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_fails_whole_when_valkey_stops_answering_mid_call() {
    let app = spawn(Valkey::start()).await;
    let alice = app.create(&unique_did(), "alice.test").await;
    let bob = app.create(&unique_did(), "bob.test").await;
    cache(&app, &alice.access_token).await;
    // Frozen: the cached answer may still be served, Bob's lookup cannot be.
    app.valkey().signal("STOP");
    let status = app
        .validate_many(&[alice.access_token.clone(), bob.access_token.clone()])
        .await
        .expect_err("no partial answer");
    app.valkey().signal("CONT");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "session store unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_expiring_unread_ends_its_cached_answer() {
    for key in ["data", "access"] {
        key_expiring_unread_ends_its_cached_answer(key).await;
    }
}

/// The session's `key` (`data` or `access`) kept for less than its token's life.
async fn key_expiring_unread_ends_its_cached_answer(key: &str) {
    let valkey = Valkey::start_with(&["--enable-debug-command", "local"]);
    let mut conn = valkey.client().await;
    let app = spawn(valkey).await;
    let created = app.create(&unique_did(), "alice.test").await;
    // Without active expiry, Valkey reclaims an expired key (and announces it on the feed)
    // only when something reads it, which a cached answer never does.
    let _: () = redis::cmd("DEBUG")
        .arg("SET-ACTIVE-EXPIRE")
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("DEBUG SET-ACTIVE-EXPIRE 0");
    // The session kept for less than its token's life (as the TypeScript AppView does with a
    // shorter OAUTH_SESSION_TTL, or an operator might).
    let _: () = redis::cmd("PEXPIRE")
        .arg(match key {
            "data" => format!("{PREFIX}data:{}", created.refresh_token),
            _ => format!("{PREFIX}access:{}", sha256_hex(&created.access_token)),
        })
        .arg(1_500)
        .query_async(&mut conn)
        .await
        .expect("PEXPIRE");
    cache(&app, &created.access_token).await;
    let answer = app.validate(&created.access_token).await;
    let ms = |ts: &Option<prost_types::Timestamp>| {
        ts.as_ref()
            .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
    };
    let says = ms(&answer.session.expect("session").access_token_expires_at);
    let token = ms(&created.session.expect("session").access_token_expires_at);
    assert!(
        says < token,
        "the answer ends with the {key} key ({says:?}), before the token ({token:?})"
    );
    eventually("the cached answer ends with its key", || async {
        !app.validate(&created.access_token).await.valid
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapdb_drops_the_cache() {
    let valkey = Valkey::start();
    let mut conn = valkey.client().await;
    let app = spawn(valkey).await;
    let created = app.create(&unique_did(), "alice.test").await;
    cache(&app, &created.access_token).await;
    let resets = metric(&app, RESETS).await;
    // Every key of database 0 moves to database 1; Valkey sends no invalidation for it.
    let _: () = redis::cmd("SWAPDB")
        .arg(0)
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("SWAPDB");
    eventually("the moved session stops validating", || async {
        !app.validate(&created.access_token).await.valid
    })
    .await;
    assert!(metric(&app, RESETS).await > resets, "the cache was dropped");
    // Live again on the database it watches.
    let again = app.create(&unique_did(), "bob.test").await;
    cache(&app, &again.access_token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushing_another_database_drops_the_cache_too() {
    let valkey = Valkey::start();
    let mut other = redis::Client::open(format!("{}/1", valkey.url()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let app = spawn(valkey).await;
    let created = app.create(&unique_did(), "alice.test").await;
    cache(&app, &created.access_token).await;
    let resets = metric(&app, RESETS).await;
    // Valkey's flush notice does not say which database: any flush drops everything.
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut other)
        .await
        .expect("FLUSHDB on database 1");
    eventually("the cache resets", || async {
        metric(&app, RESETS).await > resets
    })
    .await;
    assert!(
        app.validate(&created.access_token).await.valid,
        "nothing of ours went"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_can_be_switched_off() {
    let app = TestApp::spawn_with(
        StoreKind::Valkey,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--validation-cache",
            "off",
        ],
    )
    .await;
    let created = app.create(&unique_did(), "alice.test").await;
    for _ in 0..3 {
        assert!(app.validate(&created.access_token).await.valid);
    }
    assert_eq!(metric(&app, HITS).await, 0.0);
    // The feed still runs, for WatchRevocations.
    eventually("the feed is live with the cache off", || async {
        metric(&app, FEED_LIVE).await == 1.0
    })
    .await;
}

fn options(valkey: &Valkey) -> ValkeyOptions {
    ValkeyOptions {
        urls: vec![valkey.url()],
        password: None,
        ca_pem: None,
        key_prefix: PREFIX.to_owned(),
        connect_timeout: Duration::from_millis(500),
        command_timeout: Duration::from_millis(500),
    }
}

fn lifetimes() -> Lifetimes {
    Lifetimes {
        session: Duration::from_secs(600),
        access_token: Duration::from_secs(600),
        max: None,
        max_per_did: None,
        tokens: TokenRules::DEFAULT,
    }
}

fn record(access_hash: &str) -> SessionRecord {
    SessionRecord {
        sid: sha256_hex(&format!("sid-{access_hash}")),
        did: unique_did(),
        handle: "alice.test".into(),
        access_token_hash: access_hash.to_owned(),
        access_token_expires_at: 0,
        created_at: 0,
        refreshed_at: None,
        user_agent: String::new(),
        ip_address: String::new(),
        ..Default::default()
    }
}

/// Waits for the next event on a revocation receiver.
async fn next_event(events: &mut broadcast::Receiver<Invalidation>) -> Invalidation {
    tokio::time::timeout(PATIENCE, events.recv())
        .await
        .expect("an event in time")
        .expect("the channel is open")
}

/// The stale-read race, forced: a validation whose store answer is in hand when the
/// session is deleted elsewhere (and the invalidation arrives) must not cache that answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_overtaken_by_an_invalidation_is_not_cached() {
    let valkey = Valkey::start();
    let metrics = Arc::new(Metrics::new());
    let cache = ValidationCache::new(16, metrics.clone());
    let feed_events = FeedEvents::new(metrics.clone());
    let mut events = feed_events.subscribe();
    let client = standalone::client(&options(&valkey), redis::ProtocolVersion::RESP3).unwrap();
    let reader = ValkeyStore::new(&options(&valkey), metrics.clone()).unwrap();
    let feed = tokio::spawn(barazo_session::cache::feed::run(
        client,
        Subscribers {
            cache: Some(cache.clone()),
            events: feed_events,
        },
        reader.command_side(),
        PREFIX.to_owned(),
        Duration::from_millis(500),
    ));
    assert_eq!(next_event(&mut events).await, Invalidation::Reset, "live");
    assert!(cache.is_live());

    let held = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let hook = {
        let (held, release) = (held.clone(), release.clone());
        Arc::new(move || {
            let (held, release) = (held.clone(), release.clone());
            Box::pin(async move {
                held.notify_one();
                release.notified().await;
            }) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
        })
    };
    cache.set_insert_hook(hook);
    let writer = ValkeyStore::new(&options(&valkey), metrics.clone()).unwrap();
    let store = Arc::new(OwnWrites::new(reader, cache.clone()));
    let tokens =
        Arc::new(AccessTokens::new(store, lifetimes(), metrics.clone()).with_cache(cache.clone()));
    let token = "ab".repeat(32);
    let hash = sha256_hex(&token);
    let stored = writer.create(&record(&hash), lifetimes()).await.unwrap();
    // The create's own invalidations, before the read starts.
    while next_event(&mut events).await != Invalidation::AccessHash(hash.clone()) {}

    let validate = || {
        let (tokens, token) = (tokens.clone(), token.clone());
        tokio::spawn(async move { tokens.validate(Rpc::ValidateAccessToken, &token).await })
    };
    let reader = validate();
    held.notified().await; // the store has answered; the insert waits
    let presented = Presented::parse(&stored.record.sid).expect("a session id");
    assert!(matches!(
        writer.delete(&presented, Duration::ZERO).await.unwrap(),
        ByRefresh::Found(_)
    ));
    while next_event(&mut events).await != Invalidation::AccessHash(hash.clone()) {}
    release.notify_one();
    let answered = reader.await.unwrap().unwrap();
    assert!(answered.is_some(), "the read itself saw the session");
    assert!(cache.is_empty(), "the overtaken answer was not cached");
    // The next read goes to Valkey (the hook does not hold a read that finds nothing) and
    // finds nothing.
    assert!(validate().await.unwrap().unwrap().is_none());
    feed.abort();
}

/// The feed authenticates as the store's commands do: with a password in the URL against a
/// Valkey that has none, RESP3's `HELLO 3 AUTH` alone would be taken (the default user
/// accepts any password) while the commands' `AUTH` is refused; the feed's own `AUTH` is
/// refused the same way, so it never turns tracking on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_that_cannot_authenticate_like_the_commands_is_down() {
    let valkey = Valkey::start();
    let metrics = Arc::new(Metrics::new());
    let feed_events = FeedEvents::new(metrics.clone());
    let with_password = ValkeyOptions {
        password: Some("not-configured".to_owned()),
        ..options(&valkey)
    };
    let client = standalone::client(&with_password, redis::ProtocolVersion::RESP3).unwrap();
    // A command side that works (no password), so only the feed's own login can stop it.
    let commands = ValkeyStore::new(&options(&valkey), metrics.clone()).unwrap();
    let feed = tokio::spawn(barazo_session::cache::feed::run(
        client,
        Subscribers {
            cache: None,
            events: feed_events.clone(),
        },
        commands.command_side(),
        PREFIX.to_owned(),
        Duration::from_millis(500),
    ));
    let mut conn = valkey.client().await;
    eventually("Valkey refused the feed's AUTH", || {
        let mut conn = conn.clone();
        async move {
            let stats: String = redis::cmd("INFO")
                .arg("errorstats")
                .query_async(&mut conn)
                .await
                .expect("INFO");
            stats.contains("errorstat_ERR")
        }
    })
    .await;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .expect("CLIENT LIST");
    assert!(
        !clients.lines().any(|line| line.contains("flags=t")),
        "no connection tracks keys: {clients}"
    );
    assert!(!feed_events.is_live());
    feed.abort();
}
