//! The Valkey layout shared with the TypeScript AppView, byte for byte; atomicity that only
//! Valkey can show (keys left behind); one round trip per RPC.

use crate::support::monitor::Monitor;
use crate::support::{Backend, TestApp, sha256_hex, unique_did};
use barazo_session::config::StoreKind;
use barazo_session::proto::CreateSessionRequest;
use redis::AsyncCommands;
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::Code;

const PREFIX: &str = "barazo:session:";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// A hex token as the TypeScript code mints it (`randomBytes(32).toString('hex')`).
fn ts_token(seed: u8) -> String {
    sha256_hex(&format!("typescript-token-{seed}-{}", now_ms()))
}

/// Writes a session exactly as the TypeScript AppView does, created now: `JSON.stringify`
/// of its object, `SET ... EX`, the access key, and the DID index. Returns the JSON.
async fn write_typescript_session(
    conn: &mut impl redis::aio::ConnectionLike,
    sid: &str,
    access: &str,
    did: &str,
) -> String {
    write_typescript_session_created(conn, sid, access, did, now_ms()).await
}

/// A session of a new DID as the TypeScript AppView writes it, its session id and access
/// token made from `seed` and `seed + 1`: (DID, session id, access token).
async fn typescript_session(
    conn: &mut redis::aio::MultiplexedConnection,
    seed: u8,
) -> (String, String, String) {
    let did = unique_did();
    let (sid, access) = (ts_token(seed), ts_token(seed + 1));
    write_typescript_session(conn, &sid, &access, &did).await;
    (did, sid, access)
}

/// The fields of the TypeScript AppView's session object, in its order.
const TYPESCRIPT_FIELDS: [&str; 6] = [
    "sid",
    "did",
    "handle",
    "accessTokenHash",
    "accessTokenExpiresAt",
    "createdAt",
];

/// What the TypeScript refresh makes of a stored session: its six fields only, with
/// `new_access`'s hash and a fresh expiry.
fn typescript_refreshed(json: &str, new_access: &str) -> String {
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json).expect("object");
    object.retain(|k, _| TYPESCRIPT_FIELDS.contains(&k.as_str()));
    object.insert("accessTokenHash".into(), sha256_hex(new_access).into());
    object.insert("accessTokenExpiresAt".into(), (now_ms() + 900_000).into());
    serde_json::to_string(&object).expect("JSON")
}

/// Writes what the TypeScript refresh writes for session `sid`: `json` as its data, the
/// access key of `new_access`, and (when given) the key of the access token it replaces
/// deleted.
async fn write_typescript_refresh(
    conn: &mut redis::aio::MultiplexedConnection,
    sid: &str,
    json: &str,
    new_access: &str,
    replaced_access: Option<&str>,
) {
    let mut pipe = redis::pipe();
    if let Some(replaced) = replaced_access {
        pipe.cmd("DEL")
            .arg(format!("{PREFIX}access:{}", sha256_hex(replaced)));
    }
    let _: () = pipe
        .cmd("SET")
        .arg(format!("{PREFIX}data:{sid}"))
        .arg(json)
        .arg("EX")
        .arg(604_800)
        .cmd("SET")
        .arg(format!("{PREFIX}access:{}", sha256_hex(new_access)))
        .arg(sid)
        .arg("EX")
        .arg(900)
        .query_async(conn)
        .await
        .expect("TypeScript refresh");
}

/// A server on a Valkey of its own, and a connection to that Valkey.
async fn on_valkey(extra: &[&str]) -> (TestApp, redis::aio::MultiplexedConnection) {
    let app = TestApp::spawn_with(StoreKind::Valkey, extra).await;
    let conn = app.valkey().client().await;
    (app, conn)
}

/// A server on Valkey whose only commands are the test's calls: no periodic health PING
/// (the first check runs at startup), so that MONITOR counts round trips per RPC.
async fn without_health_pings(extra: &[&str]) -> TestApp {
    let mut flags = vec!["--health-check-interval-ms", "3600000"];
    flags.extend_from_slice(extra);
    TestApp::spawn_with(StoreKind::Valkey, &flags).await
}

/// The session keys matching `pattern` (the feed's marker is not one; its own test checks it).
async fn keys(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    // KEYS is fine on a test's private Valkey; the service itself never scans.
    let found: Vec<String> = conn.keys(pattern).await.expect("KEYS");
    found
        .into_iter()
        .filter(|key| !crate::support::is_bookkeeping(key))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_sessions_are_stored_in_the_typescript_shape() {
    let app = TestApp::spawn(StoreKind::Valkey).await;
    let did = unique_did();
    let created = app.create(&did, "alice.test").await;
    let sid = &created.refresh_token;
    let mut conn = app.valkey().client().await;

    let json: String = conn.get(format!("{PREFIX}data:{sid}")).await.expect("data");
    let session = created.session.expect("session");
    let created_at = session.created_at.expect("created").seconds * 1000
        + i64::from(session.created_at.expect("created").nanos / 1_000_000);
    assert_eq!(
        json,
        format!(
            // The TypeScript object's six fields in its order, then this service's own.
            r#"{{"sid":"{sid}","did":"{did}","handle":"alice.test","accessTokenHash":"{}","accessTokenExpiresAt":{},"createdAt":{created_at},"refreshedAt":{created_at}}}"#,
            sha256_hex(&created.access_token),
            created_at + 900_000
        )
    );
    let access_key = format!("{PREFIX}access:{}", sha256_hex(&created.access_token));
    let pointed: String = conn.get(&access_key).await.expect("access key");
    assert_eq!(&pointed, sid);
    let members: Vec<String> = conn
        .smembers(format!("{PREFIX}did:{did}"))
        .await
        .expect("index");
    assert_eq!(members, vec![sid.clone()]);

    let ttl = |key: String| {
        let mut conn = conn.clone();
        async move {
            let ms: i64 = conn.pttl(key).await.expect("PTTL");
            ms
        }
    };
    assert!((604_790_000..=604_800_000).contains(&ttl(format!("{PREFIX}data:{sid}")).await));
    assert!((890_000..=900_000).contains(&ttl(access_key).await));
    assert!((604_790_000..=604_800_000).contains(&ttl(format!("{PREFIX}did:{did}")).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sessions_validate_refresh_and_delete_here() {
    let (app, mut conn) = on_valkey(&[]).await;
    let (did, sid, access) = typescript_session(&mut conn, 1).await;

    let validated = app.validate(&access).await;
    assert!(validated.valid);
    let session = validated.session.expect("session");
    assert_eq!(
        (session.did.as_str(), session.handle.as_str()),
        (did.as_str(), "carol.test")
    );
    assert_eq!(session.session_key, sha256_hex(&sid));

    let refreshed = app
        .refresh_tab(&sid, &access)
        .await
        .expect("refresh a TypeScript session");
    assert!(!app.validate(&access).await.valid);
    assert!(app.validate(&refreshed.access_token).await.valid);
    // The rewritten JSON keeps the TypeScript shape and createdAt.
    let json: String = conn.get(format!("{PREFIX}data:{sid}")).await.expect("data");
    let refreshed_session = refreshed.session.expect("session");
    let expires = refreshed_session.access_token_expires_at.expect("expiry");
    let created = refreshed_session.created_at.expect("created");
    let refreshed_at = refreshed_session.refreshed_at.expect("refreshed");
    let ms = |t: prost_types::Timestamp| t.seconds * 1000 + i64::from(t.nanos / 1_000_000);
    assert_eq!(
        json,
        format!(
            r#"{{"sid":"{sid}","did":"{did}","handle":"carol.test","accessTokenHash":"{}","accessTokenExpiresAt":{},"createdAt":{},"refreshedAt":{}}}"#,
            sha256_hex(&refreshed.access_token),
            ms(expires),
            ms(created),
            ms(refreshed_at),
        )
    );
    assert_eq!(created, session.created_at.expect("created"));

    assert!(app.delete(&sid).await.expect("delete"));
    assert!(
        keys(&mut conn, &format!("{PREFIX}*")).await.is_empty(),
        "nothing left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sessions_are_revoked_by_delete_all() {
    let (app, mut conn) = on_valkey(&[]).await;
    let (did, _, access) = typescript_session(&mut conn, 3).await;
    let ours = app.create(&did, "carol.test").await;

    assert_eq!(app.delete_all(&did).await.expect("delete all"), 2);
    assert!(!app.validate(&access).await.valid);
    assert!(!app.validate(&ours.access_token).await.valid);
    assert!(keys(&mut conn, &format!("{PREFIX}*")).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_written_here_parse_as_the_typescript_object() {
    // The reverse direction: what this service writes is what the TypeScript code reads with
    // JSON.parse — its six fields, integer milliseconds, no floats or exponents — plus this
    // service's own facts, which the TypeScript code ignores.
    let app = TestApp::spawn(StoreKind::Valkey).await;
    let created = app.create(&unique_did(), "alice.test").await;
    // A second tab: the session then lists its other token too.
    app.refresh(&created.refresh_token).await.expect("refresh");
    let mut conn = app.valkey().client().await;
    let json: String = conn
        .get(format!("{PREFIX}data:{}", created.refresh_token))
        .await
        .expect("data");
    let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let object = value.as_object().expect("object");
    let names: Vec<&str> = object.keys().map(String::as_str).collect();
    // The TypeScript fields in its order, then this service's own.
    let order: Vec<&str> = TYPESCRIPT_FIELDS
        .into_iter()
        .chain(["refreshedAt", "accessTokens"])
        .collect();
    let mut expected = order.clone();
    expected.sort_unstable();
    let mut names_sorted = names.clone();
    names_sorted.sort_unstable();
    assert_eq!(names_sorted, expected);
    for field in ["accessTokenExpiresAt", "createdAt", "refreshedAt"] {
        assert!(object[field].is_u64(), "{field} is an integer in {json}");
    }
    // The TypeScript fields first, in its order; this service's own after them.
    let positions: Vec<usize> = order
        .iter()
        .map(|name| json.find(&format!(r#""{name}":"#)).expect(name))
        .collect();
    assert!(positions.is_sorted(), "{json}");
    let tokens = object["accessTokens"].as_array().expect("a list");
    assert_eq!(tokens.len(), 1, "the login's token, now the other tab's");
    assert_eq!(
        tokens[0]["hash"],
        sha256_hex(&created.access_token).as_str()
    );
    assert!(tokens[0]["expiresAt"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_session_json_fails_closed_without_crashing() {
    let (app, mut conn) = on_valkey(&[]).await;
    for (i, garbage) in [
        "not json",
        "[]",
        r#"{"sid":"x"}"#,
        r#"{"did":"did:plc:a","handle":"h.test","accessTokenHash":"HASH","accessTokenExpiresAt":"later","createdAt":1}"#,
        // Everything right but one field: refresh must not revive what validate refuses.
        r#"{"sid":"SID","did":"did:plc:a","handle":"h.test","accessTokenHash":"HASH","accessTokenExpiresAt":"later","createdAt":1}"#,
        r#"{"sid":"SID","did":"did:plc:a","handle":"h.test","accessTokenHash":"HASH","accessTokenExpiresAt":1,"createdAt":1e21}"#,
        r#"{"sid":"SID","did":"did:plc:a","handle":"h.test","accessTokenHash":7,"accessTokenExpiresAt":1,"createdAt":1}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let (sid, access) = (ts_token(10 + i as u8), ts_token(20 + i as u8));
        let garbage = garbage
            .replace("HASH", &sha256_hex(&access))
            .replace("SID", &sid);
        let _: () = redis::pipe()
            .set(format!("{PREFIX}data:{sid}"), &garbage)
            .set(format!("{PREFIX}access:{}", sha256_hex(&access)), &sid)
            .query_async(&mut conn)
            .await
            .expect("write garbage");

        assert!(!app.validate(&access).await.valid, "{garbage}");
        assert_eq!(app.refresh(&sid).await.expect_err("refused").code(), Code::NotFound);
        let stored: String = conn.get(format!("{PREFIX}data:{sid}")).await.expect("kept");
        assert_eq!(stored, garbage, "a refused refresh writes nothing");
        assert!(app.delete(&sid).await.expect("delete"), "logout still removes it");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_or_orphaned_access_keys_do_not_validate() {
    let (app, mut conn) = on_valkey(&[]).await;
    let created = app.create(&unique_did(), "alice.test").await;
    // An access key that points at a live session whose data names another hash.
    let stale = ts_token(30);
    let _: () = conn
        .set(
            format!("{PREFIX}access:{}", sha256_hex(&stale)),
            &created.refresh_token,
        )
        .await
        .expect("plant a stale key");
    assert!(!app.validate(&stale).await.valid);
    // An access key whose session data is gone.
    let orphan = ts_token(31);
    let _: () = conn
        .set(
            format!("{PREFIX}access:{}", sha256_hex(&orphan)),
            ts_token(32),
        )
        .await
        .expect("plant an orphan");
    assert!(!app.validate(&orphan).await.valid);
    assert!(app.validate(&created.access_token).await.valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_create_writes_nothing() {
    let app = TestApp::spawn(StoreKind::Valkey).await;
    let status = app
        .client
        .clone()
        .create_session(CreateSessionRequest {
            did: "did:plc:ok".into(),
            handle: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut conn = app.valkey().client().await;
    assert!(keys(&mut conn, "*").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_leave_no_orphaned_access_key() {
    let app = TestApp::spawn(StoreKind::Valkey).await;
    let created = app.create(&unique_did(), "alice.test").await;
    let tokens = app.refresh_concurrently(&created.refresh_token, 20).await;
    let mut conn = app.valkey().client().await;
    let access_keys = keys(&mut conn, &format!("{PREFIX}access:*")).await;
    // The cap's 8 tokens, each with its key and each named in the session data; the 13
    // tokens dropped past the cap have no key left.
    assert_eq!(access_keys.len(), 8, "{access_keys:?}");
    let json: String = conn
        .get(format!("{PREFIX}data:{}", created.refresh_token))
        .await
        .expect("data");
    for key in &access_keys {
        let pointed: String = conn.get(key).await.expect("sid");
        assert_eq!(pointed, created.refresh_token);
        let hash = &key[format!("{PREFIX}access:").len()..];
        assert!(json.contains(&format!(r#""{hash}""#)), "{json}");
        assert!(
            tokens.iter().any(|t| sha256_hex(t) == hash),
            "one of the issued tokens"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_racing_delete_leaves_no_keys() {
    let (app, mut conn) = on_valkey(&[]).await;
    for _ in 0..25 {
        let did = unique_did();
        let created = app.create(&did, "alice.test").await;
        let sid = &created.refresh_token;
        let _ = tokio::join!(app.refresh(sid), app.delete(sid));
        let left = keys(&mut conn, &format!("{PREFIX}*")).await;
        // At most an empty-set index can remain; Valkey deletes empty sets itself.
        assert!(left.is_empty(), "{left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_did_index_is_pruned_of_expired_sessions() {
    let app = TestApp::spawn_with(
        StoreKind::Valkey,
        // Without a cap: with one, every create reads the whole index and prunes it all.
        &[
            "--access-token-ttl",
            "1",
            "--session-ttl",
            "2",
            "--max-sessions-per-did",
            "0",
        ],
    )
    .await;
    let did = unique_did();
    for _ in 0..40 {
        app.create(&did, "alice.test").await;
    }
    let mut conn = app.valkey().client().await;
    let index = format!("{PREFIX}did:{did}");
    assert_eq!(conn.scard::<_, usize>(&index).await.expect("SCARD"), 40);
    // One login at 1 s keeps the index alive (its TTL restarts) past the first 40 sessions'
    // expiry at 2 s. Waiting out TTLs is the behaviour under test.
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    app.create(&did, "alice.test").await;
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;

    // Now 40 members are dead and 1 is live. Each further login prunes a bounded sample,
    // so the index shrinks to the live sessions within a few logins.
    let mut live = 1;
    let mut previous = conn.scard::<_, usize>(&index).await.expect("SCARD");
    assert_eq!(previous, 41);
    for _ in 0..10 {
        app.create(&did, "alice.test").await;
        live += 1;
        let size: usize = conn.scard(&index).await.expect("SCARD");
        assert!(size <= previous + 1, "grows by at most the new session");
        previous = size;
        if size == live {
            return;
        }
    }
    panic!("index still holds {previous} members for {live} live sessions after 10 logins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rpc_is_exactly_one_round_trip() {
    let app = without_health_pings(&[]).await;
    let did = unique_did();
    // Warm up: the first call of each script loads it (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA).
    let warm = app.create(&did, "alice.test").await;
    app.validate(&warm.access_token).await;
    app.refresh(&warm.refresh_token).await.expect("refresh");
    app.delete(&warm.refresh_token).await.expect("delete");
    app.delete_all(&did).await.expect("delete all");

    let mut monitor = Monitor::start(app.valkey()).await;
    let (created, trips) = monitor.round_trips(app.create(&did, "alice.test")).await;
    assert_eq!(trips, ["EVALSHA"], "CreateSession");
    let (_, trips) = monitor
        .round_trips(app.validate(&created.access_token))
        .await;
    assert_eq!(trips, ["EVALSHA"], "ValidateAccessToken");
    let (_, trips) = monitor.round_trips(app.validate(&"0".repeat(64))).await;
    assert_eq!(trips, ["EVALSHA"], "ValidateAccessToken, unknown token");
    let batch = [
        created.access_token.clone(),
        "0".repeat(64),
        "malformed".into(),
        warm.access_token.clone(),
        "1".repeat(64),
    ];
    let (answers, trips) = monitor.round_trips(app.validate_many(&batch)).await;
    assert_eq!(answers.expect("batch").len(), batch.len());
    assert_eq!(trips, ["EVALSHA"], "ValidateAccessTokens");
    let (_, trips) = monitor.round_trips(app.validate("malformed")).await;
    assert!(
        trips.is_empty(),
        "a malformed token costs no round trip: {trips:?}"
    );
    let (_, trips) = monitor
        .round_trips(app.refresh(&created.refresh_token))
        .await;
    assert_eq!(trips, ["EVALSHA"], "RefreshSession");
    let (_, trips) = monitor
        .round_trips(app.delete(&created.refresh_token))
        .await;
    assert_eq!(trips, ["EVALSHA"], "DeleteSession");
    let (_, trips) = monitor.round_trips(app.delete_all(&did)).await;
    assert_eq!(trips, ["EVALSHA"], "DeleteAllSessionsForDid");
}

/// The session-listing RPCs and a create that revokes for the cap, counted the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_revocation_and_the_cap_round_trips() {
    use barazo_session::proto::{
        ListSessionsRequest, RevokeOtherSessionsRequest, RevokeSessionRequest,
    };
    let app = without_health_pings(&["--max-sessions-per-did", "3"]).await;
    let did = unique_did();
    let mut client = app.client.clone();
    let list = |did: &str| ListSessionsRequest { did: did.into() };
    // Warm up: every script loaded once.
    let warm = app.create(&did, "alice.test").await;
    client.list_sessions(list(&did)).await.expect("list");
    let others = RevokeOtherSessionsRequest {
        refresh_token: warm.refresh_token.clone(),
    };
    client.revoke_other_sessions(others).await.expect("others");
    app.delete(&warm.refresh_token).await.expect("delete");
    app.delete_all(&did).await.expect("delete all");

    let mut monitor = Monitor::start(app.valkey()).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let (created, trips) = monitor.round_trips(app.create(&did, "alice.test")).await;
        assert_eq!(trips, ["EVALSHA"], "CreateSession under the cap");
        sessions.push(created);
    }
    let (created, trips) = monitor.round_trips(app.create(&did, "alice.test")).await;
    assert_eq!(trips, ["EVALSHA"], "CreateSession revoking for the cap");
    assert!(
        !app.validate(&sessions[0].access_token).await.valid,
        "capped"
    );
    let (listed, trips) = monitor.round_trips(client.list_sessions(list(&did))).await;
    assert_eq!(listed.expect("list").into_inner().sessions.len(), 3);
    assert_eq!(trips, ["EVALSHA"], "ListSessions of 3 sessions");
    let revoke = RevokeSessionRequest {
        did: did.clone(),
        session_key: sha256_hex(&sessions[1].refresh_token),
    };
    let (revoked, trips) = monitor.round_trips(client.revoke_session(revoke)).await;
    assert!(revoked.expect("revoke").into_inner().revoked);
    assert_eq!(
        trips,
        ["EVALSHA", "EVALSHA"],
        "RevokeSession: list, then revoke"
    );
    let others = RevokeOtherSessionsRequest {
        refresh_token: created.refresh_token.clone(),
    };
    let (revoked, trips) = monitor
        .round_trips(client.revoke_other_sessions(others))
        .await;
    assert_eq!(revoked.expect("others").into_inner().revoked_count, 1);
    assert_eq!(trips, ["EVALSHA"], "RevokeOtherSessions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_script_cache_is_reloaded_transparently() {
    // Without the validation cache: the repeated validations must reach Valkey.
    let app = without_health_pings(&["--validation-cache", "off"]).await;
    let created = app.create(&unique_did(), "alice.test").await;
    assert!(app.validate(&created.access_token).await.valid);
    let mut conn = app.valkey().client().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("flush");

    let mut monitor = Monitor::start(app.valkey()).await;
    let (answer, trips) = monitor
        .round_trips(app.validate(&created.access_token))
        .await;
    assert!(answer.valid);
    assert_eq!(trips, ["EVALSHA", "SCRIPT", "EVALSHA"], "NOSCRIPT fallback");
    let (_, trips) = monitor
        .round_trips(app.validate(&created.access_token))
        .await;
    assert_eq!(trips, ["EVALSHA"], "loaded again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_restarts_the_session_and_index_lifetimes() {
    let app = TestApp::spawn(StoreKind::Valkey).await;
    let did = unique_did();
    let created = app.create(&did, "alice.test").await;
    let data_key = format!("{PREFIX}data:{}", created.refresh_token);
    let index_key = format!("{PREFIX}did:{did}");
    let mut conn = app.valkey().client().await;
    // Age the session as if six days had passed.
    for key in [&data_key, &index_key] {
        let _: () = conn.pexpire(key, 86_400_000).await.expect("PEXPIRE");
    }

    let refreshed = app
        .refresh_tab(&created.refresh_token, &created.access_token)
        .await
        .expect("refresh");
    for key in [&data_key, &index_key] {
        let ttl: i64 = conn.pttl(key).await.expect("PTTL");
        assert!((604_790_000..=604_800_000).contains(&ttl), "{key}: {ttl}");
    }
    let access_key = format!("{PREFIX}access:{}", sha256_hex(&refreshed.access_token));
    let ttl: i64 = conn.pttl(&access_key).await.expect("PTTL");
    assert!((890_000..=900_000).contains(&ttl), "{ttl}");
    let old_key = format!("{PREFIX}access:{}", sha256_hex(&created.access_token));
    let old_exists: bool = conn.exists(&old_key).await.expect("EXISTS");
    assert!(
        !old_exists,
        "the old access key is removed, not left to expire"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_did_index_ttl_is_extended_never_shortened() {
    // This server's sessions live a minute; the index already lists a session that lives a
    // week (written by the AppView, or under an earlier configuration).
    let app = TestApp::spawn_with(
        StoreKind::Valkey,
        &["--session-ttl", "60", "--access-token-ttl", "30"],
    )
    .await;
    let mut conn = app.valkey().client().await;
    let (did, _, access) = typescript_session(&mut conn, 40).await;
    let index = format!("{PREFIX}did:{did}");
    let week = 604_790_000..=604_800_000;

    let created = app.create(&did, "alice.test").await;
    assert!(week.contains(&conn.pttl::<_, i64>(&index).await.expect("PTTL")));
    app.refresh(&created.refresh_token).await.expect("refresh");
    assert!(week.contains(&conn.pttl::<_, i64>(&index).await.expect("PTTL")));
    // So account deletion still finds the week-long session.
    assert_eq!(app.delete_all(&did).await.expect("delete all"), 2);
    assert!(!app.validate(&access).await.valid);
}

/// "Your sessions" with the TypeScript layout, both ways: a session the TypeScript code
/// wrote (none of this service's facts) is listed as refreshed when created and with no
/// device, and revoked by its key; a session written here, then refreshed by the
/// TypeScript code (which rewrites only its six fields), still validates, lists, refreshes
/// and is revoked here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_listing_works_with_typescript_sessions_both_ways() {
    use barazo_session::proto::{ListSessionsRequest, RevokeSessionRequest};
    let (app, mut conn) = on_valkey(&[]).await;
    let (did, sid, access) = typescript_session(&mut conn, 30).await;
    let list = || {
        let (mut client, did) = (app.client.clone(), did.clone());
        async move {
            client
                .list_sessions(ListSessionsRequest { did })
                .await
                .expect("list")
                .into_inner()
                .sessions
        }
    };
    let listed = list().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].refreshed_at, listed[0].created_at);
    assert_eq!(
        listed[0].client.clone().unwrap_or_default(),
        Default::default()
    );
    let revoked = app
        .client
        .clone()
        .revoke_session(RevokeSessionRequest {
            did: did.clone(),
            session_key: sha256_hex(&sid),
        })
        .await
        .expect("revoke")
        .into_inner()
        .revoked;
    assert!(revoked);
    assert!(!app.validate(&access).await.valid);

    // Written here with device facts, then refreshed by the TypeScript code.
    let created = app
        .client
        .clone()
        .create_session(CreateSessionRequest {
            did: did.clone(),
            handle: "carol.test".into(),
            client: Some(barazo_session::proto::ClientInfo {
                user_agent: "Firefox/141".into(),
                ip_address: "203.0.113.7".into(),
            }),
        })
        .await
        .expect("create")
        .into_inner();
    let data_key = format!("{PREFIX}data:{}", created.refresh_token);
    let json: String = conn.get(&data_key).await.expect("data");
    assert!(
        json.contains(r#""userAgent":"Firefox/141","ipAddress":"203.0.113.7""#),
        "{json}"
    );
    let ts_access = ts_token(32);
    write_typescript_refresh(
        &mut conn,
        &created.refresh_token,
        &typescript_refreshed(&json, &ts_access),
        &ts_access,
        Some(&created.access_token),
    )
    .await;
    assert!(app.validate(&ts_access).await.valid);
    let listed = list().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        listed[0].client.clone().unwrap_or_default(),
        Default::default()
    );
    let refreshed = app
        .refresh_tab(&created.refresh_token, &ts_access)
        .await
        .expect("refresh");
    assert!(app.validate(&refreshed.access_token).await.valid);
    assert!(!app.validate(&ts_access).await.valid);
    assert_eq!(app.delete_all(&did).await.expect("delete all"), 1);
    assert!(keys(&mut conn, &format!("{PREFIX}*")).await.is_empty());
}

/// A session the TypeScript code keeps refreshing slides on in Valkey; past the absolute
/// lifetime (60 days by default) this service still refuses its token, refuses to refresh
/// it (and removes it), and does not list it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sessions_past_the_absolute_lifetime_are_over() {
    let (app, mut conn) = on_valkey(&[]).await;
    let did = unique_did();
    let (sid, access) = (ts_token(40), ts_token(41));
    let json = write_typescript_session(&mut conn, &sid, &access, &did).await;
    // Created 61 days ago, refreshed a moment ago by the TypeScript code.
    let created = now_ms() - 61 * 24 * 3600 * 1000;
    let old = json.replacen(
        &format!(
            r#""createdAt":{}"#,
            &json[json.rfind(':').expect(":") + 1..json.len() - 1]
        ),
        &format!(r#""createdAt":{created}"#),
        1,
    );
    assert_ne!(old, json);
    let _: () = conn
        .set(format!("{PREFIX}data:{sid}"), &old)
        .await
        .expect("write");
    assert!(!app.validate(&access).await.valid, "past the deadline");
    assert!(
        app.client
            .clone()
            .list_sessions(barazo_session::proto::ListSessionsRequest { did: did.clone() })
            .await
            .expect("list")
            .into_inner()
            .sessions
            .is_empty()
    );
    let over = app.refresh(&sid).await.expect_err("over");
    assert_eq!(over.code(), tonic::Code::NotFound);
    assert_eq!(
        crate::support::end_reason(&over),
        Some(("SESSION_LIFETIME_REACHED".to_owned(), Vec::new()))
    );
    assert!(
        keys(&mut conn, &format!("{PREFIX}*")).await.is_empty(),
        "the refusal removed it"
    );
    // Asked again, it is gone: unknown.
    let again = app.refresh(&sid).await.expect_err("gone");
    assert_eq!(
        crate::support::end_reason(&again),
        Some(("SESSION_UNKNOWN".to_owned(), Vec::new()))
    );
}

/// A session as the TypeScript AppView writes it, created `created` (epoch ms), one
/// command at a time so that it works on a cluster too. Returns the JSON.
async fn write_typescript_session_created(
    conn: &mut impl redis::aio::ConnectionLike,
    sid: &str,
    access: &str,
    did: &str,
    created: i64,
) -> String {
    let hash = sha256_hex(access);
    let json = format!(
        r#"{{"sid":"{sid}","did":"{did}","handle":"carol.test","accessTokenHash":"{hash}","accessTokenExpiresAt":{},"createdAt":{created}}}"#,
        now_ms() + 900_000
    );
    let index = format!("{PREFIX}did:{did}");
    for cmd in [
        redis::cmd("SET")
            .arg(format!("{PREFIX}data:{sid}"))
            .arg(&json)
            .arg("EX")
            .arg(604_800)
            .clone(),
        redis::cmd("SET")
            .arg(format!("{PREFIX}access:{hash}"))
            .arg(sid)
            .arg("EX")
            .arg(900)
            .clone(),
        redis::cmd("SADD").arg(&index).arg(sid).clone(),
        redis::cmd("EXPIRE").arg(&index).arg(604_800).clone(),
    ] {
        let _: redis::Value = cmd
            .query_async(conn)
            .await
            .expect("write TypeScript-shaped session");
    }
    json
}

/// Sessions the TypeScript code wrote have no `refreshedAt`: the cap ranks them by their
/// `createdAt`, revokes them completely (access key, data, index entry), and counts them
/// towards the cap like its own.
async fn capped_by_creation_time(app: &TestApp, conn: &mut impl redis::aio::ConnectionLike) {
    let did = unique_did();
    // Written in the other order than they were created: the index's order does not count.
    let (newer, newer_access) = (ts_token(50), ts_token(51));
    let (older, older_access) = (ts_token(52), ts_token(53));
    write_typescript_session_created(conn, &newer, &newer_access, &did, now_ms() - 3_600_000).await;
    write_typescript_session_created(conn, &older, &older_access, &did, now_ms() - 7_200_000).await;
    let ours = app.create(&did, "alice.test").await;
    assert!(app.validate(&newer_access).await.valid);
    assert!(app.validate(&older_access).await.valid);

    // A fourth session: the one created two hours ago goes, whole.
    let second = app.create(&did, "alice.test").await;
    assert!(!app.validate(&older_access).await.valid);
    assert!(app.validate(&newer_access).await.valid);
    for key in [
        format!("{PREFIX}data:{older}"),
        format!("{PREFIX}access:{}", sha256_hex(&older_access)),
    ] {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(conn)
            .await
            .expect("EXISTS");
        assert!(!exists, "{key}");
    }
    let index = format!("{PREFIX}did:{did}");
    let listed: bool = redis::cmd("SISMEMBER")
        .arg(&index)
        .arg(&older)
        .query_async(conn)
        .await
        .expect("SISMEMBER");
    assert!(!listed, "left its index");

    // A fifth: then the other TypeScript session, older than both of ours.
    let third = app.create(&did, "alice.test").await;
    assert!(!app.validate(&newer_access).await.valid);
    for created in [&ours, &second, &third] {
        assert!(app.validate(&created.access_token).await.valid);
    }
    let size: usize = redis::cmd("SCARD")
        .arg(&index)
        .query_async(conn)
        .await
        .expect("SCARD");
    assert_eq!(size, 3);
    assert_eq!(
        app.refresh(&newer).await.expect_err("revoked").code(),
        Code::NotFound
    );
}

store_tests!(typescript_sessions_take_a_new_handle_and_keep_the_rest on valkey, cluster);

/// A session the TypeScript AppView wrote takes the new handle: its six fields, in its
/// order, byte for byte otherwise, and its TTL kept; it still validates, with the handle.
async fn typescript_sessions_take_a_new_handle_and_keep_the_rest(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    match &app.cluster {
        Some(cluster) => renamed_keeping_the_rest(&app, &mut cluster.connection().await).await,
        None => renamed_keeping_the_rest(&app, &mut app.valkey().client().await).await,
    }
}

async fn renamed_keeping_the_rest(app: &TestApp, conn: &mut impl redis::aio::ConnectionLike) {
    let did = unique_did();
    let (sid, access) = (ts_token(60), ts_token(61));
    let json = write_typescript_session(conn, &sid, &access, &did).await;
    let data = format!("{PREFIX}data:{sid}");
    let ttl_before: i64 = redis::cmd("PTTL")
        .arg(&data)
        .query_async(conn)
        .await
        .expect("PTTL");

    assert_eq!(
        app.update_handle(&did, "carol.example.com")
            .await
            .expect("update"),
        1
    );
    let stored: String = redis::cmd("GET")
        .arg(&data)
        .query_async(conn)
        .await
        .expect("GET");
    assert_eq!(
        stored,
        json.replace(
            r#""handle":"carol.test""#,
            r#""handle":"carol.example.com""#
        )
    );
    let ttl_after: i64 = redis::cmd("PTTL")
        .arg(&data)
        .query_async(conn)
        .await
        .expect("PTTL");
    assert!(
        ttl_after <= ttl_before && ttl_after > ttl_before - 60_000,
        "the TTL is kept: {ttl_before} ms, then {ttl_after} ms"
    );
    let answer = app.validate(&access).await;
    assert!(answer.valid);
    assert_eq!(answer.session.expect("session").handle, "carol.example.com");
}

store_tests!(typescript_sessions_are_capped_by_their_creation_time on valkey, cluster);

async fn typescript_sessions_are_capped_by_their_creation_time(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--max-sessions-per-did", "3"]).await;
    match &app.cluster {
        Some(cluster) => capped_by_creation_time(&app, &mut cluster.connection().await).await,
        None => capped_by_creation_time(&app, &mut app.valkey().client().await).await,
    }
}

/// An unreadable record in a DID's index at the cap is the first the cap removes (it can
/// never be used again), before any live session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_removes_an_unreadable_session_first() {
    let (app, mut conn) = on_valkey(&["--max-sessions-per-did", "2"]).await;
    let did = unique_did();
    let first = app.create(&did, "alice.test").await;
    let second = app.create(&did, "alice.test").await;
    let data = format!("{PREFIX}data:{}", second.refresh_token);
    let _: () = conn.set(&data, "not json").await.expect("corrupt");
    let third = app.create(&did, "alice.test").await;
    assert!(
        !conn.exists::<_, bool>(&data).await.expect("EXISTS"),
        "removed"
    );
    assert!(
        app.validate(&first.access_token).await.valid,
        "the live one stays"
    );
    assert!(app.validate(&third.access_token).await.valid);
    let index = format!("{PREFIX}did:{did}");
    assert_eq!(conn.scard::<_, usize>(&index).await.expect("SCARD"), 2);
}

/// Per-tab access tokens with the TypeScript layout, both ways. This service keeps
/// `accessTokenHash`/`accessTokenExpiresAt` as the newest token's (what the TypeScript code
/// reads) and lists the others after its own fields. When the TypeScript code rewrites
/// such a session (its refresh keeps only its six fields), the other tokens stop
/// validating here and their keys expire on their own TTL, never later; its logout leaves
/// nothing that validates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tab_tokens_and_the_typescript_code_both_ways() {
    let (app, mut conn) = on_valkey(&[]).await;
    let did = unique_did();
    let created = app.create(&did, "carol.test").await;
    let sid = created.refresh_token.clone();
    let data_key = format!("{PREFIX}data:{sid}");
    let tab_b = app.refresh(&sid).await.expect("tab B").access_token;
    let tab_c = app.refresh(&sid).await.expect("tab C").access_token;

    // What the TypeScript requireAuth reads: the newest token is the record's own.
    let json: String = conn.get(&data_key).await.expect("data");
    let object: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(object["accessTokenHash"], sha256_hex(&tab_c).as_str());
    let pointed: String = conn
        .get(format!("{PREFIX}access:{}", sha256_hex(&tab_c)))
        .await
        .expect("the newest token's key");
    assert_eq!(pointed, sid);
    assert_eq!(
        object["accessTokens"]
            .as_array()
            .expect("others")
            .iter()
            .map(|t| t["hash"].as_str().expect("hash").to_owned())
            .collect::<Vec<_>>(),
        [sha256_hex(&created.access_token), sha256_hex(&tab_b)],
        "the others, oldest first"
    );

    // The TypeScript refresh rewrites the record without the list.
    let ts_access = ts_token(50);
    write_typescript_refresh(
        &mut conn,
        &sid,
        &typescript_refreshed(&json, &ts_access),
        &ts_access,
        Some(&tab_c),
    )
    .await;
    assert!(app.validate(&ts_access).await.valid);
    for token in [&created.access_token, &tab_b, &tab_c] {
        assert!(!app.validate(token).await.valid, "not named by the data");
    }
    // Their keys are left to their own TTL, no longer than an access token lives.
    for token in [&created.access_token, &tab_b] {
        let ttl: i64 = conn
            .pttl(format!("{PREFIX}access:{}", sha256_hex(token)))
            .await
            .expect("PTTL");
        assert!((1..=900_000).contains(&ttl), "{ttl}");
    }
    // This service refreshes the rewritten record and lists tabs again.
    let tab_d = app.refresh(&sid).await.expect("tab D").access_token;
    assert!(app.validate(&ts_access).await.valid);
    assert!(app.validate(&tab_d).await.valid);

    // The TypeScript logout deletes the newest token's key and the data: nothing of the
    // session validates any more.
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(format!("{PREFIX}access:{}", sha256_hex(&tab_d)))
        .cmd("DEL")
        .arg(&data_key)
        .cmd("SREM")
        .arg(format!("{PREFIX}did:{did}"))
        .arg(&sid)
        .query_async(&mut conn)
        .await
        .expect("TypeScript logout");
    for token in [&ts_access, &tab_d] {
        assert!(!app.validate(token).await.valid);
    }
    assert_eq!(
        app.refresh(&sid).await.expect_err("gone").code(),
        Code::NotFound
    );
}

/// Every key under the prefix and every value (strings; set members), as a Valkey dump
/// would show them.
async fn dump(conn: &mut redis::aio::MultiplexedConnection) -> String {
    let mut text = String::new();
    for key in keys(conn, &format!("{PREFIX}*")).await {
        text.push_str(&key);
        text.push('\n');
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(conn)
            .await
            .expect("TYPE");
        if kind == "set" {
            let members: Vec<String> = conn.smembers(&key).await.expect("SMEMBERS");
            text.push_str(&members.join("\n"));
        } else {
            let value: String = conn.get(&key).await.expect("GET");
            text.push_str(&value);
        }
        text.push('\n');
    }
    text
}

/// Rotation on, a session the TypeScript code created (its cookie is the session id): the
/// first refresh moves it to rotated tokens; the session id then works as a rotated-away
/// token within the grace, and is reuse once its rotation is older. Neither a dump nor MONITOR ever shows
/// a rotated refresh token; what the TypeScript code wrote keeps its shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typescript_session_moves_to_rotated_refresh_tokens_on_its_first_refresh() {
    let app = without_health_pings(&[
        "--refresh-token-rotation",
        "on",
        "--refresh-reuse-grace",
        "2",
    ])
    .await;
    let mut conn = app.valkey().client().await;
    let (did, sid, _) = typescript_session(&mut conn, 60).await;

    let mut monitor = Monitor::start(app.valkey()).await;
    let (first, lines) = monitor.lines(app.refresh(&sid)).await;
    let first = first.expect("the first refresh migrates");
    let r1 = first.refresh_token.clone();
    assert!(!r1.is_empty() && r1 != sid);
    assert!(lines.iter().all(|l| !l.contains(&r1)), "{lines:?}");
    let json: String = conn.get(format!("{PREFIX}data:{sid}")).await.expect("data");
    assert!(
        json.starts_with(&format!(
            r#"{{"sid":"{sid}","did":"{did}","handle":"carol.test","accessTokenHash":"{}""#,
            sha256_hex(&first.access_token)
        )),
        "the TypeScript fields first, the newest token's: {json}"
    );
    let record = barazo_session::domain::SessionRecord::from_json(&json).expect("readable");
    let family = record.refresh_family.clone().expect("a family");
    assert_eq!(record.refresh_token_hash, Some(sha256_hex(&r1)));
    assert_eq!(record.previous_refresh_token_hash, Some(sha256_hex(&sid)));
    let family_key = format!("{PREFIX}refresh:{family}");
    let pointed: String = conn.get(&family_key).await.expect("family key");
    assert_eq!(pointed, sid);
    let ttl: i64 = conn.pttl(&family_key).await.expect("PTTL");
    assert!((604_790_000..=604_800_000).contains(&ttl), "{ttl}");

    // Another tab sent the old cookie at the same moment: the same successor.
    let again = app.refresh(&sid).await.expect("within the grace");
    assert_eq!(again.refresh_token, r1);
    let (second, lines) = monitor.lines(app.refresh(&r1)).await;
    let second = second.expect("refresh with the rotated cookie");
    let r2 = second.refresh_token.clone();
    for token in [&r1, &r2] {
        assert!(
            lines.iter().all(|l| !l.contains(token.as_str())),
            "MONITOR: {lines:?}"
        );
    }
    assert!(
        !dump(&mut conn).await.contains(&r2),
        "a dump holds no live refresh token"
    );
    // Logout and revoke-others send only digests of a rotated token too.
    let (others, lines) = monitor
        .lines(app.client.clone().revoke_other_sessions(
            barazo_session::proto::RevokeOtherSessionsRequest {
                refresh_token: r2.clone(),
            },
        ))
        .await;
    assert_eq!(others.expect("revoke others").into_inner().revoked_count, 0);
    assert!(lines.iter().all(|l| !l.contains(&r2)), "{lines:?}");

    // Once the session id's rotation is older than the grace it is reuse: the session is
    // revoked, nothing is left behind.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        app.refresh(&sid).await.expect_err("reuse").code(),
        Code::NotFound
    );
    assert!(!app.validate(&second.access_token).await.valid);
    assert!(
        keys(&mut conn, &format!("{PREFIX}*")).await.is_empty(),
        "{:?}",
        keys(&mut conn, &format!("{PREFIX}*")).await
    );
}

/// What a session keeps for the grace is bounded: after many rotations inside it, the
/// record holds the previous rotation and four earlier ones (oldest first, in the shape
/// `session_json.lua` and `SessionRecord` write byte for byte), about 180 bytes each; every
/// key keeps a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotations_a_session_remembers_are_bounded_in_bytes() {
    let (app, mut conn) = on_valkey(&["--refresh-token-rotation", "on"]).await;
    let created = app.create(&unique_did(), "alice.test").await;
    let key = created.session.expect("session").session_key;
    let mut cookie = created.refresh_token;
    for _ in 0..10 {
        cookie = app.refresh(&cookie).await.expect("refresh").refresh_token;
    }
    let json = data_json(&mut conn).await;
    let record = barazo_session::domain::SessionRecord::from_json(&json).expect("readable");
    assert_eq!(record.to_json(), json, "Lua and Rust write the same bytes");
    assert_eq!(
        record.earlier_rotations.len(),
        barazo_session::domain::MAX_EARLIER_ROTATIONS
    );
    assert!(
        record
            .earlier_rotations
            .windows(2)
            .all(|w| w[0].rotated_at <= w[1].rotated_at),
        "oldest first"
    );
    assert_eq!(record.refresh_token_hash, Some(sha256_hex(&cookie)));
    assert_eq!(sha256_hex(&record.sid), key);
    let mut without = record.clone();
    without.earlier_rotations.clear();
    let earlier_bytes = json.len() - without.to_json().len();
    assert!(
        earlier_bytes <= 4 * 185,
        "four earlier rotations take {earlier_bytes} bytes"
    );
    assert!(json.len() < 4096, "{} bytes", json.len());
    for key in keys(&mut conn, &format!("{PREFIX}*")).await {
        let ttl: i64 = conn.pttl(&key).await.expect("PTTL");
        assert!(ttl > 0, "{key} has a TTL ({ttl})");
    }
}

/// The one session's stored JSON (the test's Valkey holds one session).
async fn data_json(conn: &mut redis::aio::MultiplexedConnection) -> String {
    let keys = keys(conn, &format!("{PREFIX}data:*")).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    conn.get(&keys[0]).await.expect("data")
}

/// Rotation on: which TypeScript paths stop working, and that this service corrupts
/// nothing they write. The TypeScript refresh and logout look the cookie up as a session
/// id, so a rotated cookie finds nothing there (refresh answers 401; logout leaves the
/// session alive until its TTL). Its requireAuth still accepts the newest access token.
/// If the TypeScript code refreshes a migrated session through an old session-id cookie
/// (rewriting the record without the rotation fields), the rotated cookie no longer
/// finds it here (NOT_FOUND) and its record is left exactly as it wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rotation_on_the_typescript_paths_that_stop_working_are_left_intact() {
    let (app, mut conn) = on_valkey(&["--refresh-token-rotation", "on"]).await;
    let (did, sid, _) = typescript_session(&mut conn, 70).await;
    let rotated = app.refresh(&sid).await.expect("migrates");
    let r1 = rotated.refresh_token.clone();

    // The TypeScript code looks a cookie up as `data:<cookie>`: nothing for a rotated one.
    let found: Option<String> = conn.get(format!("{PREFIX}data:{r1}")).await.expect("GET");
    assert!(
        found.is_none(),
        "TypeScript refresh and logout find no session"
    );
    // Its requireAuth reads accessTokenHash: the newest token's.
    let data_key = format!("{PREFIX}data:{sid}");
    let json: String = conn.get(&data_key).await.expect("data");
    let object: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(
        object["accessTokenHash"],
        sha256_hex(&rotated.access_token).as_str()
    );

    // The TypeScript refresh through the old session-id cookie rewrites the record.
    let ts_access = ts_token(72);
    let rewritten = format!(
        r#"{{"sid":"{sid}","did":"{did}","handle":"carol.test","accessTokenHash":"{}","accessTokenExpiresAt":{},"createdAt":{}}}"#,
        sha256_hex(&ts_access),
        now_ms() + 900_000,
        object["createdAt"]
    );
    write_typescript_refresh(&mut conn, &sid, &rewritten, &ts_access, None).await;
    assert_eq!(
        app.refresh(&r1)
            .await
            .expect_err("not this session's any more")
            .code(),
        Code::NotFound
    );
    assert!(!app.delete(&r1).await.expect("logout answers"));
    let kept: String = conn.get(&data_key).await.expect("data");
    assert_eq!(
        kept, rewritten,
        "what the TypeScript code wrote is untouched"
    );
    assert!(app.validate(&ts_access).await.valid);
    // The session id is the refresh token of that record again.
    assert!(app.refresh(&sid).await.is_ok());
}

/// With rotation on and several tabs, every RPC is still one script: validate finds any
/// tab's token through its access key and the data, and a rotated cookie finds its
/// session through its family key inside the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rpc_is_one_round_trip_with_tabs_and_rotation() {
    use barazo_session::proto::RevokeOtherSessionsRequest;
    let app = without_health_pings(&["--refresh-token-rotation", "on"]).await;
    let did = unique_did();
    // Warm up every script (the first call of each loads it).
    let warm = app.create(&did, "alice.test").await;
    let warm = app.refresh(&warm.refresh_token).await.expect("refresh");
    app.validate(&warm.access_token).await;
    app.delete(&warm.refresh_token).await.expect("delete");
    let other = app.create(&did, "alice.test").await;
    let _ = app
        .client
        .clone()
        .revoke_other_sessions(RevokeOtherSessionsRequest {
            refresh_token: other.refresh_token.clone(),
        })
        .await;

    let mut monitor = Monitor::start(app.valkey()).await;
    let (created, trips) = monitor.round_trips(app.create(&did, "alice.test")).await;
    assert_eq!(trips, ["EVALSHA"], "CreateSession");
    let (tab_a, trips) = monitor
        .round_trips(app.refresh(&created.refresh_token))
        .await;
    assert_eq!(trips, ["EVALSHA"], "RefreshSession");
    let tab_a = tab_a.expect("refresh");
    let (tab_b, trips) = monitor
        .round_trips(app.refresh_tab(&tab_a.refresh_token, &tab_a.access_token))
        .await;
    assert_eq!(trips, ["EVALSHA"], "RefreshSession with the rotated cookie");
    let tab_b = tab_b.expect("refresh");
    for token in [&created.access_token, &tab_b.access_token] {
        let (answer, trips) = monitor.round_trips(app.validate(token)).await;
        assert!(answer.valid);
        assert_eq!(trips, ["EVALSHA"], "ValidateAccessToken");
    }
    let (answer, trips) = monitor
        .round_trips(
            app.client
                .clone()
                .revoke_other_sessions(RevokeOtherSessionsRequest {
                    refresh_token: tab_b.refresh_token.clone(),
                }),
        )
        .await;
    answer.expect("revoke others");
    assert_eq!(trips, ["EVALSHA"], "RevokeOtherSessions");
    let (deleted, trips) = monitor.round_trips(app.delete(&tab_b.refresh_token)).await;
    assert!(deleted.expect("delete"));
    assert_eq!(trips, ["EVALSHA"], "DeleteSession");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_keeps_one_expiring_marker_beside_the_session_keys() {
    let (_app, mut conn) = on_valkey(&[]).await;
    let markers = || {
        let mut conn = conn.clone();
        async move {
            let found: Vec<String> = conn.keys(format!("{PREFIX}feed:*")).await.expect("KEYS");
            found
        }
    };
    crate::cache::eventually("the feed writes its marker", || async {
        !markers().await.is_empty()
    })
    .await;
    let found = markers().await;
    assert_eq!(found.len(), 1, "one per replica: {found:?}");
    assert!(crate::support::is_feed_marker(&found[0]));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&found[0])
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(
        (1..=60_000).contains(&ttl),
        "it expires by itself: {ttl} ms"
    );
}
