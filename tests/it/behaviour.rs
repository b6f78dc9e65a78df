//! The behaviour every store must have, run against the in-memory store, a standalone
//! Valkey and a three-node Valkey Cluster through the real gRPC server.

use crate::support::{Backend, TestApp, end_reason, sha256_hex, unique_did};
use barazo_session::proto::{
    ClientInfo, CreateSessionRequest, ListSessionsRequest, RefreshSessionRequest,
    RevokeOtherSessionsRequest, RevokeSessionRequest, Session,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::Code;

/// Runs each listed test against every store.
macro_rules! for_each_store {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(crate::support::Backend::Memory).await
                }
            )*
        }
        mod valkey {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(crate::support::Backend::Valkey).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(crate::support::Backend::Cluster).await
                }
            )*
        }
    };
}

for_each_store!(
    a_refresh_after_a_revocation_says_why,
    a_handle_change_reaches_every_live_session_of_the_did,
    a_handle_change_races_refreshes_and_revocations,
    create_then_validate_returns_the_session,
    create_refuses_bad_dids_and_handles_naming_the_field,
    malformed_and_unknown_tokens_are_invalid,
    refresh_rotates_the_access_token_and_keeps_the_session,
    refresh_of_an_unknown_or_malformed_token_is_not_found,
    delete_revokes_and_is_idempotent,
    delete_all_revokes_every_session_of_one_did_only,
    access_tokens_expire_but_the_session_refreshes,
    sessions_slide_with_refreshes_and_expire_when_idle,
    oversized_requests_are_refused,
    concurrent_refreshes_leave_exactly_the_newest_tokens_valid,
    tabs_keep_their_own_access_tokens,
    a_validation_answers_with_the_tokens_own_expiry,
    rotation_issues_a_new_refresh_token_on_every_refresh,
    concurrent_refreshes_with_one_cookie_converge_on_one_successor,
    every_cookie_rotated_within_the_grace_gets_the_current_successor,
    a_cookie_rotated_longer_ago_than_the_grace_is_reuse,
    tabs_with_cookies_of_two_generations_refresh_at_once,
    a_session_remembers_a_bounded_number_of_rotations,
    an_old_cookie_after_the_grace_revokes_the_session,
    a_stolen_cookie_ends_the_session_for_both,
    refresh_racing_delete_never_leaves_a_valid_token,
    users_list_their_sessions_and_end_one_or_all_others,
    session_listing_and_revocation_refuse_bad_input,
    sessions_end_at_their_absolute_lifetime,
    logins_beyond_the_cap_revoke_the_least_recently_refreshed,
    a_batch_answers_each_token_as_its_single_validation_would,
    a_batch_holds_at_most_1000_tokens,
);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn ms(ts: &Option<prost_types::Timestamp>) -> i64 {
    let ts = ts.as_ref().expect("timestamp set");
    ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000
}

async fn create_then_validate_returns_the_session(store: Backend) {
    let app = TestApp::spawn(store).await;
    let did = unique_did();
    let before = now_ms();
    let created = app.create(&did, "alice.bsky.social").await;
    let after = now_ms();

    for token in [&created.access_token, &created.refresh_token] {
        assert_eq!(token.len(), 64);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
    assert_ne!(created.access_token, created.refresh_token);
    let session = created.session.expect("session");
    assert_eq!(session.did, did);
    assert_eq!(session.handle, "alice.bsky.social");
    assert_eq!(session.session_key, sha256_hex(&created.refresh_token));
    let created_at = ms(&session.created_at);
    assert!((before..=after).contains(&created_at));
    assert_eq!(ms(&session.access_token_expires_at), created_at + 900_000);

    let validated = app.validate(&created.access_token).await;
    assert!(validated.valid);
    assert_eq!(validated.session, Some(session));

    // The refresh token is not an access token.
    assert!(!app.validate(&created.refresh_token).await.valid);
}

async fn create_refuses_bad_dids_and_handles_naming_the_field(store: Backend) {
    let app = TestApp::spawn(store).await;
    let cases = [
        ("", "alice.test", "did"),
        ("alice", "alice.test", "did"),
        ("did:PLC:abc", "alice.test", "did"),
        ("did:plc:abc:", "alice.test", "did"),
        ("did:plc:abc", "", "handle"),
        ("did:plc:abc", "alice", "handle"),
        ("did:plc:abc", "alice.123", "handle"),
        ("did:plc:abc", "-alice.test", "handle"),
    ];
    for (did, handle, field) in cases {
        let status = app
            .client
            .clone()
            .create_session(CreateSessionRequest {
                did: did.into(),
                handle: handle.into(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{did} {handle}");
        assert!(
            status.message().starts_with(field),
            "message names {field}: {}",
            status.message()
        );
    }
    // `handle.invalid` is how the AT Protocol marks an unverified handle: accepted.
    app.create(&unique_did(), "handle.invalid").await;
}

async fn malformed_and_unknown_tokens_are_invalid(store: Backend) {
    let app = TestApp::spawn(store).await;
    let created = app.create(&unique_did(), "alice.test").await;
    let upper = created.access_token.to_uppercase();
    let long = "a".repeat(200);
    let unknown = "0".repeat(64);
    for token in [
        "",
        "abc",
        upper.as_str(),
        long.as_str(),
        &"g".repeat(64),
        unknown.as_str(),
    ] {
        let answer = app.validate(token).await;
        assert!(!answer.valid, "{token}");
        assert_eq!(answer.session, None);
    }
}

async fn refresh_rotates_the_access_token_and_keeps_the_session(store: Backend) {
    let app = TestApp::spawn(store).await;
    let created = app.create(&unique_did(), "alice.test").await;
    let first = created.session.expect("session");

    let refreshed = app
        .refresh_tab(&created.refresh_token, &created.access_token)
        .await
        .expect("refreshed");
    assert_ne!(refreshed.access_token, created.access_token);
    assert!(refreshed.refresh_token.is_empty(), "no rotation by default");
    let session = refreshed.session.expect("session");
    assert_eq!(session.session_key, first.session_key);
    assert_eq!(session.did, first.did);
    assert_eq!(session.handle, first.handle);
    assert_eq!(session.created_at, first.created_at);
    assert!(ms(&session.access_token_expires_at) >= ms(&first.access_token_expires_at));

    assert!(
        !app.validate(&created.access_token).await.valid,
        "the tab's previous token is revoked at once"
    );
    let validated = app.validate(&refreshed.access_token).await;
    assert!(validated.valid);
    assert_eq!(validated.session, Some(session));
}

/// A validation's `access_token_expires_at` is the validated token's own expiry, not the
/// session's newest token's: a caller that caches the answer until then (the revocation
/// feed's contract) stops when that tab's token does. (Two refreshes within one
/// millisecond give equal expiries; the test then cannot tell, but never fails wrongly.)
async fn a_validation_answers_with_the_tokens_own_expiry(store: Backend) {
    let app = TestApp::spawn_with(store, &[]).await;
    let created = app.create(&unique_did(), "alice.test").await;
    let older = app.refresh(&created.refresh_token).await.expect("tab A");
    let newer = app.refresh(&created.refresh_token).await.expect("tab B");
    let expiry = |r: &barazo_session::proto::RefreshSessionResponse| {
        r.session
            .as_ref()
            .expect("a session")
            .access_token_expires_at
    };
    for tab in [&older, &newer] {
        let answer = app.validate(&tab.access_token).await;
        assert!(answer.valid);
        assert_eq!(
            answer.session.expect("a session").access_token_expires_at,
            expiry(tab),
            "the validated token's own expiry"
        );
    }
}

/// Several tabs of one session: refreshes from several tabs at once all succeed and every
/// token they got validates; a tab passing its own token revokes only that one; past the
/// cap the oldest token is revoked; every revocation revokes every token.
async fn tabs_keep_their_own_access_tokens(store: Backend) {
    let app = TestApp::spawn_with(store, &["--max-access-tokens-per-session", "3"]).await;
    let did = unique_did();
    let created = app.create(&did, "alice.test").await;
    let cookie = created.refresh_token.clone();
    // Three tabs load at once, each refreshing with the same cookie and no token yet.
    let tabs = app.refresh_concurrently(&cookie, 3).await;
    // The login's own token was the oldest of four: revoked past the cap of 3.
    assert!(
        !app.validate(&created.access_token).await.valid,
        "oldest revoked"
    );
    for token in &tabs {
        assert!(
            app.validate(token).await.valid,
            "every tab's token validates"
        );
    }
    // Tab A refreshes with its own token: only A's old token goes.
    let a = app.refresh_tab(&cookie, &tabs[0]).await.expect("refresh A");
    assert!(!app.validate(&tabs[0]).await.valid, "A's old token");
    for token in [&tabs[1], &tabs[2], &a.access_token] {
        assert!(app.validate(token).await.valid, "B, C and A's new token");
    }
    // A token of another session, an unknown and a malformed one revoke nothing.
    let other = app.create(&did, "alice.test").await;
    for previous in [other.access_token.as_str(), &"0".repeat(64), "malformed"] {
        let r = app.refresh_tab(&cookie, previous).await.expect("ignored");
        assert!(app.validate(&other.access_token).await.valid);
        // Each of these refreshes adds a token; the cap keeps the newest three.
        assert!(app.validate(&r.access_token).await.valid);
    }
    // A fourth token past the cap: the oldest (B's, then C's, then A's new) went in turn.
    for token in [&tabs[1], &tabs[2], &a.access_token] {
        assert!(!app.validate(token).await.valid, "revoked past the cap");
    }
    // Logout revokes every token of the session at once.
    let tokens = app.refresh_concurrently(&cookie, 3).await;
    assert!(app.delete(&cookie).await.expect("logout"));
    for token in &tokens {
        assert!(!app.validate(token).await.valid, "all revoked by logout");
    }
    // So does a takedown.
    let fresh = app.create(&did, "alice.test").await;
    let tokens = app.refresh_concurrently(&fresh.refresh_token, 2).await;
    assert_eq!(app.delete_all(&did).await.expect("takedown"), 2);
    for token in tokens
        .iter()
        .chain([&fresh.access_token, &other.access_token])
    {
        assert!(
            !app.validate(token).await.valid,
            "all revoked by a takedown"
        );
    }
}

async fn refresh_of_an_unknown_or_malformed_token_is_not_found(store: Backend) {
    let app = TestApp::spawn(store).await;
    let created = app.create(&unique_did(), "alice.test").await;
    for token in [
        String::new(),
        "abc".into(),
        "0".repeat(64),
        "A".repeat(64),
        "a".repeat(129),
        created.access_token.clone(),
    ] {
        let status = app.refresh(&token).await.expect_err("not found");
        assert_eq!(status.code(), Code::NotFound, "{token}");
    }
}

async fn delete_revokes_and_is_idempotent(store: Backend) {
    let app = TestApp::spawn(store).await;
    let created = app.create(&unique_did(), "alice.test").await;
    let other = app.create(&unique_did(), "bob.test").await;
    assert!(app.delete(&created.refresh_token).await.expect("deleted"));
    assert!(!app.validate(&created.access_token).await.valid);
    assert_eq!(
        app.refresh(&created.refresh_token)
            .await
            .expect_err("gone")
            .code(),
        Code::NotFound
    );
    assert!(
        !app.delete(&created.refresh_token)
            .await
            .expect("idempotent")
    );
    assert!(!app.delete("not-a-token").await.expect("answered"));
    assert!(!app.delete("").await.expect("answered"));
    assert!(
        app.validate(&other.access_token).await.valid,
        "others untouched"
    );
}

/// `SESSION_REVOKED`'s metadata for a revocation reason.
fn revocation(reason: &str) -> Vec<(String, String)> {
    vec![("revocation".to_owned(), reason.to_owned())]
}

/// Every way a session is revoked is remembered, and a refresh (or "log out everywhere
/// else") with its cookie afterwards says which; a token that never named a session, and
/// a malformed one, are unknown.
async fn a_refresh_after_a_revocation_says_why(store: Backend) {
    let app = TestApp::spawn_with(store, &["--max-sessions-per-did", "3"]).await;
    let why = async |cookie: &str| {
        let status = app.refresh(cookie).await.expect_err("gone");
        assert_eq!(status.code(), Code::NotFound);
        end_reason(&status)
    };
    let revoked = |reason: &str| Some(("SESSION_REVOKED".to_owned(), revocation(reason)));
    let did = unique_did();

    let logged_out = app.create(&did, "alice.test").await;
    assert!(app.delete(&logged_out.refresh_token).await.expect("logout"));
    assert_eq!(why(&logged_out.refresh_token).await, revoked("logout"));

    let device = app.create(&did, "alice.test").await;
    assert!(
        revoke(&app, &did, &sha256_hex(&device.refresh_token))
            .await
            .expect("revoke")
    );
    assert_eq!(why(&device.refresh_token).await, revoked("user"));

    let other = app.create(&did, "alice.test").await;
    let kept = app.create(&did, "alice.test").await;
    assert_eq!(
        revoke_others(&app, &kept.refresh_token)
            .await
            .expect("others"),
        1
    );
    assert_eq!(why(&other.refresh_token).await, revoked("others"));
    let status = revoke_others(&app, &other.refresh_token)
        .await
        .expect_err("gone");
    assert_eq!(
        end_reason(&status),
        revoked("others"),
        "log out everywhere else says so too"
    );

    // The cap of 3: the fourth login revokes the least recently refreshed.
    let oldest = app.create(&did, "alice.test").await;
    app.refresh(&kept.refresh_token).await.expect("refresh");
    for _ in 0..2 {
        app.create(&did, "alice.test").await;
    }
    assert_eq!(why(&oldest.refresh_token).await, revoked("cap"));

    // An account's end, with and without its status.
    let taken_down = unique_did();
    let session = app.create(&taken_down, "bob.test").await;
    assert_eq!(
        app.delete_all_because(
            &taken_down,
            barazo_session::proto::AccountStatus::AccountTakendown as i32
        )
        .await
        .expect("takedown"),
        1
    );
    assert_eq!(
        why(&session.refresh_token).await,
        revoked("account-takendown")
    );
    let deleted = unique_did();
    let session = app.create(&deleted, "carol.test").await;
    assert_eq!(app.delete_all(&deleted).await.expect("delete all"), 1);
    assert_eq!(why(&session.refresh_token).await, revoked("all-for-did"));

    let unknown = Some(("SESSION_UNKNOWN".to_owned(), Vec::new()));
    assert_eq!(why(&"cd".repeat(32)).await, unknown);
    assert_eq!(why("not a token").await, unknown);
}

/// The handle a token's validation answers with.
async fn handle_of(app: &TestApp, token: &str) -> String {
    let answer = app.validate(token).await;
    assert!(answer.valid, "the token is valid");
    answer.session.expect("a session").handle
}

async fn a_handle_change_reaches_every_live_session_of_the_did(store: Backend) {
    let app = TestApp::spawn(store).await;
    let did = unique_did();
    let sessions: Vec<_> = [0, 1, 2]
        .map(|_| app.create(&did, "alice.test"))
        .into_iter()
        .collect();
    let mut sessions = futures_util::future::join_all(sessions).await;
    // A second tab's token of the first session, and a session that ends before the change.
    let tab = app
        .refresh(&sessions[0].refresh_token)
        .await
        .expect("refresh");
    let ended = sessions.pop().expect("three");
    assert!(app.delete(&ended.refresh_token).await.expect("logout"));
    let bystander = app.create(&unique_did(), "bob.test").await;
    // Answers cached (in the Valkey modes) before the change.
    for token in [
        &sessions[0].access_token,
        &tab.access_token,
        &sessions[1].access_token,
    ] {
        assert_eq!(handle_of(&app, token).await, "alice.test");
    }

    assert_eq!(
        app.update_handle(&did, "alice.example.com")
            .await
            .expect("update"),
        2
    );
    for token in [
        &sessions[0].access_token,
        &tab.access_token,
        &sessions[1].access_token,
    ] {
        assert_eq!(handle_of(&app, token).await, "alice.example.com", "at once");
    }
    assert!(
        !app.validate(&ended.access_token).await.valid,
        "not brought back"
    );
    assert_eq!(handle_of(&app, &bystander.access_token).await, "bob.test");
    // A refresh keeps it; the listing shows it.
    let refreshed = app
        .refresh(&sessions[1].refresh_token)
        .await
        .expect("refresh");
    assert_eq!(
        refreshed.session.expect("a session").handle,
        "alice.example.com"
    );
    let listed = list(&app, &did).await.expect("list");
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|s| s.handle == "alice.example.com"));
    // Again: the same count, nothing else changes.
    assert_eq!(
        app.update_handle(&did, "alice.example.com")
            .await
            .expect("again"),
        2
    );
    assert_eq!(
        app.update_handle(&unique_did(), "carol.test")
            .await
            .expect("none"),
        0
    );
    for (did, handle, field) in [
        ("not a did", "alice.test", "did"),
        (did.as_str(), "-bad-", "handle"),
        (did.as_str(), "", "handle"),
    ] {
        let refused = app.update_handle(did, handle).await.expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{did} {handle}");
        assert!(
            refused.message().starts_with(field),
            "{}",
            refused.message()
        );
    }
    assert_eq!(
        handle_of(&app, &tab.access_token).await,
        "alice.example.com"
    );
}

/// Handle changes racing refreshes of one session (tabs) and a logout: every refresh keeps
/// the session whole, the last change wins everywhere, the logged-out session stays out.
async fn a_handle_change_races_refreshes_and_revocations(store: Backend) {
    let app = TestApp::spawn(store).await;
    let did = unique_did();
    let kept = app.create(&did, "alice.test").await;
    let ended = app.create(&did, "alice.test").await;
    let refreshes = (0..10).map(|_| app.refresh(&kept.refresh_token));
    let renames =
        (0..5).map(|n| app.update_handle(&did, if n % 2 == 0 { "one.test" } else { "two.test" }));
    let (refreshed, renamed, logout) = tokio::join!(
        futures_util::future::join_all(refreshes),
        futures_util::future::join_all(renames),
        app.delete(&ended.refresh_token),
    );
    assert!(logout.expect("logout"));
    let tokens: Vec<String> = refreshed
        .into_iter()
        .map(|r| r.expect("refresh").access_token)
        .collect();
    for count in renamed {
        assert!(count.expect("update") <= 2);
    }
    assert_eq!(
        app.update_handle(&did, "final.test").await.expect("update"),
        1
    );
    assert!(!app.validate(&ended.access_token).await.valid);
    let mut valid = 0;
    for token in &tokens {
        let answer = app.validate(token).await;
        if answer.valid {
            valid += 1;
            assert_eq!(answer.session.expect("a session").handle, "final.test");
        }
    }
    assert!(valid >= 1, "the newest tabs' tokens stay valid");
}

async fn delete_all_revokes_every_session_of_one_did_only(store: Backend) {
    let app = TestApp::spawn(store).await;
    let did = unique_did();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(app.create(&did, "alice.test").await);
    }
    // A refreshed session is still one session.
    let refreshed = app
        .refresh(&sessions[0].refresh_token)
        .await
        .expect("refresh");
    let bystander = app.create(&unique_did(), "bob.test").await;

    assert_eq!(app.delete_all(&did).await.expect("deleted"), 3);
    assert!(!app.validate(&refreshed.access_token).await.valid);
    for s in &sessions {
        assert!(!app.validate(&s.access_token).await.valid);
        assert_eq!(
            app.refresh(&s.refresh_token)
                .await
                .expect_err("gone")
                .code(),
            Code::NotFound
        );
    }
    assert!(app.validate(&bystander.access_token).await.valid);
    assert_eq!(app.delete_all(&did).await.expect("idempotent"), 0);
    assert_eq!(
        app.delete_all("not a did")
            .await
            .expect_err("refused")
            .code(),
        Code::InvalidArgument
    );
}

async fn access_tokens_expire_but_the_session_refreshes(store: Backend) {
    let app = TestApp::spawn_with(store, &["--access-token-ttl", "1", "--session-ttl", "30"]).await;
    let created = app.create(&unique_did(), "alice.test").await;
    assert!(app.validate(&created.access_token).await.valid);

    // Waiting out a TTL is the behaviour under test; there is no event to wait for.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(!app.validate(&created.access_token).await.valid, "expired");

    let refreshed = app
        .refresh(&created.refresh_token)
        .await
        .expect("session lives on");
    assert!(app.validate(&refreshed.access_token).await.valid);
}

async fn sessions_slide_with_refreshes_and_expire_when_idle(store: Backend) {
    let app = TestApp::spawn_with(store, &["--access-token-ttl", "1", "--session-ttl", "2"]).await;
    let created = app.create(&unique_did(), "alice.test").await;

    // Refreshing every 1.2 s keeps a 2 s session alive past its first 2 s.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        app.refresh(&created.refresh_token)
            .await
            .expect("still alive");
    }
    // Left alone for longer than its TTL, it is gone.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(
        app.refresh(&created.refresh_token)
            .await
            .expect_err("expired")
            .code(),
        Code::NotFound
    );
}

async fn oversized_requests_are_refused(store: Backend) {
    let app = TestApp::spawn(store).await;
    let status = app
        .client
        .clone()
        .create_session(CreateSessionRequest {
            did: unique_did(),
            handle: format!("{}.test", "a".repeat(17 * 1024)),
            ..Default::default()
        })
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let status = app
        .try_validate(&"a".repeat(20 * 1024))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // A batch may be larger (1,000 tokens are 66 KB), up to 128 KiB.
    let batch = vec!["a".repeat(100); 200];
    assert_eq!(app.validate_many(&batch).await.expect("20 KiB").len(), 200);
    let status = app
        .validate_many(&["a".repeat(129 * 1024)])
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // The connection stays usable.
    app.create(&unique_did(), "alice.test").await;
}

async fn concurrent_refreshes_leave_exactly_the_newest_tokens_valid(store: Backend) {
    let app = TestApp::spawn(store).await;
    let created = app.create(&unique_did(), "alice.test").await;
    let mut tokens = app.refresh_concurrently(&created.refresh_token, 20).await;
    tokens.push(created.access_token);
    let mut valid = 0;
    for token in &tokens {
        if app.validate(token).await.valid {
            valid += 1;
        }
    }
    assert_eq!(valid, 8, "the cap's 8 of 21 tokens validate");
}

async fn refresh_racing_delete_never_leaves_a_valid_token(store: Backend) {
    let app = TestApp::spawn(store).await;
    for _ in 0..25 {
        let created = app.create(&unique_did(), "alice.test").await;
        let (refreshed, deleted) = tokio::join!(
            app.refresh(&created.refresh_token),
            app.delete(&created.refresh_token),
        );
        assert!(deleted.expect("delete answers"));
        if let Ok(refreshed) = refreshed {
            assert!(!app.validate(&refreshed.access_token).await.valid);
        } else {
            assert_eq!(refreshed.expect_err("lost the race").code(), Code::NotFound);
        }
        assert!(!app.validate(&created.access_token).await.valid);
    }
}

fn client(user_agent: &str, ip_address: &str) -> Option<ClientInfo> {
    Some(ClientInfo {
        user_agent: user_agent.into(),
        ip_address: ip_address.into(),
    })
}

async fn create_from(
    app: &TestApp,
    did: &str,
    device: Option<ClientInfo>,
) -> barazo_session::proto::CreateSessionResponse {
    app.client
        .clone()
        .create_session(CreateSessionRequest {
            did: did.into(),
            handle: "alice.test".into(),
            client: device,
        })
        .await
        .expect("create")
        .into_inner()
}

async fn list(app: &TestApp, did: &str) -> Result<Vec<Session>, tonic::Status> {
    app.client
        .clone()
        .list_sessions(ListSessionsRequest { did: did.into() })
        .await
        .map(|r| r.into_inner().sessions)
}

async fn revoke(app: &TestApp, did: &str, key: &str) -> Result<bool, tonic::Status> {
    app.client
        .clone()
        .revoke_session(RevokeSessionRequest {
            did: did.into(),
            session_key: key.into(),
        })
        .await
        .map(|r| r.into_inner().revoked)
}

async fn revoke_others(app: &TestApp, refresh_token: &str) -> Result<u32, tonic::Status> {
    app.client
        .clone()
        .revoke_other_sessions(RevokeOtherSessionsRequest {
            refresh_token: refresh_token.into(),
        })
        .await
        .map(|r| r.into_inner().revoked_count)
}

async fn users_list_their_sessions_and_end_one_or_all_others(store: Backend) {
    let app = TestApp::spawn(store).await;
    let (alice, bob) = (unique_did(), unique_did());
    let laptop = create_from(&app, &alice, client("Firefox/140", "203.0.113.7")).await;
    let phone = create_from(&app, &alice, client("Safari/26", "2001:db8::1")).await;
    let tablet = create_from(&app, &alice, None).await;
    let bobs = create_from(&app, &bob, None).await;
    assert!(list(&app, &unique_did()).await.expect("list").is_empty());

    // A refresh from a new place moves the laptop to the top and replaces its facts.
    let refreshed = app
        .client
        .clone()
        .refresh_session(RefreshSessionRequest {
            refresh_token: laptop.refresh_token.clone(),
            client: client("Firefox/141", "198.51.100.2"),
            ..Default::default()
        })
        .await
        .expect("refresh")
        .into_inner();
    let sessions = list(&app, &alice).await.expect("list");
    let keys: Vec<&str> = sessions.iter().map(|s| s.session_key.as_str()).collect();
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    assert_eq!(keys[0], sha256_hex(&laptop.refresh_token));
    let top = &sessions[0];
    let device = top.client.clone().expect("client");
    assert_eq!(
        (device.user_agent.as_str(), device.ip_address.as_str()),
        ("Firefox/141", "198.51.100.2")
    );
    assert!(ms(&top.refreshed_at) >= ms(&top.created_at));
    assert_eq!(
        ms(&top.access_token_expires_at),
        ms(&refreshed.session.expect("session").access_token_expires_at)
    );
    assert!(ms(&top.expires_at) > ms(&top.access_token_expires_at));
    let tablet_listed = sessions
        .iter()
        .find(|s| s.session_key == sha256_hex(&tablet.refresh_token))
        .expect("the tablet is listed");
    assert_eq!(
        tablet_listed.client.clone().unwrap_or_default(),
        ClientInfo::default()
    );
    // No credential anywhere in a listing.
    let text = format!("{sessions:?}");
    for secret in [
        &laptop.refresh_token,
        &phone.access_token,
        &refreshed.access_token,
    ] {
        assert!(!text.contains(secret.as_str()));
    }

    // Log out the phone: its token stops at once; the others stay.
    let phone_key = sha256_hex(&phone.refresh_token);
    assert!(revoke(&app, &alice, &phone_key).await.expect("revoke"));
    assert!(!app.validate(&phone.access_token).await.valid);
    assert_eq!(
        app.refresh(&phone.refresh_token)
            .await
            .expect_err("gone")
            .code(),
        Code::NotFound
    );
    assert!(
        !revoke(&app, &alice, &phone_key).await.expect("again"),
        "already gone"
    );
    // Another user's key changes nothing and says only "no".
    let bobs_key = sha256_hex(&bobs.refresh_token);
    assert!(!revoke(&app, &alice, &bobs_key).await.expect("foreign key"));
    assert!(app.validate(&bobs.access_token).await.valid);

    // Log out everywhere else, from the laptop.
    assert_eq!(
        revoke_others(&app, &laptop.refresh_token)
            .await
            .expect("others"),
        1
    );
    assert!(!app.validate(&tablet.access_token).await.valid);
    assert!(app.validate(&refreshed.access_token).await.valid);
    assert!(
        app.validate(&bobs.access_token).await.valid,
        "another user's session"
    );
    let left = list(&app, &alice).await.expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(
        revoke_others(&app, &laptop.refresh_token)
            .await
            .expect("none left"),
        0
    );
    // A deleted session is gone from the listing too.
    assert!(app.delete(&laptop.refresh_token).await.expect("logout"));
    assert!(list(&app, &alice).await.expect("list").is_empty());
}

async fn session_listing_and_revocation_refuse_bad_input(store: Backend) {
    let app = TestApp::spawn(store).await;
    let did = unique_did();
    let bad_did = list(&app, "not-a-did").await.expect_err("bad DID");
    assert_eq!(bad_did.code(), Code::InvalidArgument);
    assert!(bad_did.message().contains("did"), "{}", bad_did.message());
    let bad_key = revoke(&app, &did, "ABC").await.expect_err("bad key");
    assert_eq!(bad_key.code(), Code::InvalidArgument);
    assert!(
        bad_key.message().contains("session_key"),
        "{}",
        bad_key.message()
    );
    for token in ["", "nope", &"0".repeat(64)] {
        let status = revoke_others(&app, token).await.expect_err("unknown");
        assert_eq!(status.code(), Code::NotFound, "{token:?}");
    }
    // A bad address refuses the login and writes nothing; a long User-Agent is cut.
    let refused = app
        .client
        .clone()
        .create_session(CreateSessionRequest {
            did: did.clone(),
            handle: "alice.test".into(),
            client: client("Firefox", "localhost"),
        })
        .await
        .expect_err("bad address");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("ip_address"),
        "{}",
        refused.message()
    );
    assert!(list(&app, &did).await.expect("list").is_empty());
    let long = "é".repeat(300);
    create_from(&app, &did, client(&long, "")).await;
    let stored = list(&app, &did).await.expect("list");
    let agent = stored[0].client.clone().expect("client").user_agent;
    assert_eq!(agent.len(), 512);
    assert!(long.starts_with(&agent));
}

async fn sessions_end_at_their_absolute_lifetime(store: Backend) {
    // A sliding TTL of a minute, an absolute lifetime of 1.5 s: refreshes never carry the
    // session, its data or a token past the deadline.
    let app = TestApp::spawn_with(
        store,
        &[
            "--session-ttl",
            "60",
            "--access-token-ttl",
            "30",
            "--session-max-lifetime",
            "2",
        ],
    )
    .await;
    let did = unique_did();
    let created = app.create(&did, "alice.test").await;
    let session = created.session.expect("session");
    let deadline = ms(&session.created_at) + 2_000;
    assert!(ms(&session.access_token_expires_at) <= deadline);
    assert!(ms(&session.expires_at) <= deadline);
    let refreshed = app.refresh(&created.refresh_token).await.expect("refresh");
    let session = refreshed.session.expect("session");
    assert!(
        ms(&session.access_token_expires_at) <= deadline,
        "{session:?}"
    );
    assert!(ms(&session.expires_at) <= deadline, "{session:?}");
    assert!(app.validate(&refreshed.access_token).await.valid);
    // Waiting is the point here: the deadline passes in real time.
    let wait = u64::try_from(deadline + 50 - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    assert!(!app.validate(&refreshed.access_token).await.valid);
    assert_eq!(
        app.refresh(&created.refresh_token)
            .await
            .expect_err("over")
            .code(),
        Code::NotFound
    );
    assert!(list(&app, &did).await.expect("list").is_empty());
}

/// Waits until the clock has passed `ts`, so that the next session's `refreshedAt` differs
/// from it (the cap ranks by it; a tie would fall to the random sids).
async fn after(ts: &Option<prost_types::Timestamp>) {
    let at = ms(ts);
    while now_ms() <= at + 1 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn logins_beyond_the_cap_revoke_the_least_recently_refreshed(store: Backend) {
    let app = TestApp::spawn_with(store, &["--max-sessions-per-did", "3"]).await;
    let (did, other) = (unique_did(), unique_did());
    let theirs = app.create(&other, "bob.test").await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let created = app.create(&did, "alice.test").await;
        after(&created.session.as_ref().expect("session").refreshed_at).await;
        sessions.push(created);
    }
    let (first, second, third) = (&sessions[0], &sessions[1], &sessions[2]);
    assert_eq!(list(&app, &did).await.expect("list").len(), 3, "at the cap");
    // The oldest login is refreshed: the second becomes the least recently refreshed.
    let refreshed = app.refresh(&first.refresh_token).await.expect("refresh");
    after(&refreshed.session.as_ref().expect("session").refreshed_at).await;

    // A fourth login succeeds and ends the second, completely and at once.
    let fourth = app.create(&did, "alice.test").await;
    assert!(app.validate(&fourth.access_token).await.valid);
    assert!(!app.validate(&second.access_token).await.valid, "revoked");
    assert_eq!(
        app.refresh(&second.refresh_token)
            .await
            .expect_err("revoked")
            .code(),
        Code::NotFound
    );
    let listed: Vec<String> = list(&app, &did)
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.session_key)
        .collect();
    let key = |c: &barazo_session::proto::CreateSessionResponse| sha256_hex(&c.refresh_token);
    assert_eq!(listed, [key(&fourth), key(first), key(third)]);
    assert!(app.validate(&refreshed.access_token).await.valid);
    assert!(app.validate(&third.access_token).await.valid);

    // The next login ends the third; another DID's session is never touched.
    after(&fourth.session.as_ref().expect("session").refreshed_at).await;
    let fifth = app.create(&did, "alice.test").await;
    assert!(!app.validate(&third.access_token).await.valid);
    let listed = list(&app, &did).await.expect("list");
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].session_key, key(&fifth));
    assert!(app.validate(&theirs.access_token).await.valid);
    assert_eq!(list(&app, &other).await.expect("list").len(), 1);

    // Revoking brings the DID below the cap: the next login revokes nothing.
    assert!(revoke(&app, &did, &key(&fourth)).await.expect("revoke"));
    let sixth = app.create(&did, "alice.test").await;
    assert!(app.validate(&sixth.access_token).await.valid);
    assert!(app.validate(&refreshed.access_token).await.valid);
    assert!(app.validate(&fifth.access_token).await.valid);
    assert_eq!(list(&app, &did).await.expect("list").len(), 3);
}

/// Refreshes `cookie` from `n` concurrent tasks; every one must succeed. Returns each
/// answer's access token and refresh token.
async fn refresh_all(app: &TestApp, cookie: &str, n: usize) -> Vec<(String, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let mut client = app.client.clone();
            let refresh_token = cookie.to_owned();
            tokio::spawn(async move {
                let answer = client
                    .refresh_session(RefreshSessionRequest {
                        refresh_token,
                        ..Default::default()
                    })
                    .await
                    .expect("every concurrent refresh succeeds")
                    .into_inner();
                (answer.access_token, answer.refresh_token)
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    for task in tasks {
        answers.push(task.await.expect("refresh task"));
    }
    answers
}

const ROTATION: &[&str] = &["--refresh-token-rotation", "on"];
/// A grace short enough to wait out in a test.
const SHORT_GRACE: Duration = Duration::from_secs(1);
const ROTATION_SHORT_GRACE: &[&str] = &[
    "--refresh-token-rotation",
    "on",
    "--refresh-reuse-grace",
    "1",
];
const ROTATION_NO_GRACE: &[&str] = &[
    "--refresh-token-rotation",
    "on",
    "--refresh-reuse-grace",
    "0",
];

/// With rotation on every refresh returns a new refresh token; the session is the same
/// (its `session_key` is not the SHA-256 of any cookie), and logout takes the newest.
async fn rotation_issues_a_new_refresh_token_on_every_refresh(store: Backend) {
    let app = TestApp::spawn_with(store, ROTATION).await;
    let created = app.create(&unique_did(), "alice.test").await;
    let r0 = created.refresh_token.clone();
    let key = created.session.expect("session").session_key;
    assert_ne!(key, sha256_hex(&r0), "the cookie is not the session id");
    let first = app.refresh(&r0).await.expect("refresh");
    let r1 = first.refresh_token.clone();
    assert!(!r1.is_empty() && r1 != r0);
    assert_eq!(first.session.expect("session").session_key, key);
    let second = app.refresh(&r1).await.expect("refresh with the new cookie");
    let r2 = second.refresh_token.clone();
    assert!(!r2.is_empty() && r2 != r1 && r2 != r0);
    for token in [
        &created.access_token,
        &first.access_token,
        &second.access_token,
    ] {
        assert!(app.validate(token).await.valid, "tabs keep their tokens");
    }
    assert!(app.delete(&r2).await.expect("logout"));
    for token in [
        &created.access_token,
        &first.access_token,
        &second.access_token,
    ] {
        assert!(!app.validate(token).await.valid, "all revoked");
    }
    assert_eq!(
        app.refresh(&r2).await.expect_err("gone").code(),
        Code::NotFound
    );
}

/// 20 tabs refresh with one cookie at once: every one succeeds, they all get the same
/// successor, and that successor refreshes; three tabs' access tokens all validate.
async fn concurrent_refreshes_with_one_cookie_converge_on_one_successor(store: Backend) {
    let app = TestApp::spawn_with(store, ROTATION).await;
    let created = app.create(&unique_did(), "alice.test").await;
    let answers = refresh_all(&app, &created.refresh_token, 20).await;
    let successors: std::collections::HashSet<&str> =
        answers.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(successors.len(), 1, "exactly one successor: {successors:?}");
    let successor = answers[0].1.clone();
    assert!(!successor.is_empty() && successor != created.refresh_token);

    let tabs = refresh_all(&app, &successor, 3).await;
    for (access, _) in &tabs {
        assert!(
            app.validate(access).await.valid,
            "every tab's token validates"
        );
    }
    let next = &tabs[0].1;
    assert!(
        tabs.iter().all(|(_, r)| r == next),
        "three tabs converge too"
    );
    app.refresh(next).await.expect("the successor refreshes");
}

/// Three tabs load together while the cookie jar moves on twice:
/// every cookie the session rotated away from within the grace gets the current
/// successor, however many rotations ago, and every tab's access token validates.
async fn every_cookie_rotated_within_the_grace_gets_the_current_successor(store: Backend) {
    let app = TestApp::spawn_with(store, ROTATION).await;
    let created = app.create(&unique_did(), "alice.test").await;
    let r0 = created.refresh_token.clone();
    let first = app.refresh(&r0).await.expect("refresh");
    let again = app.refresh(&r0).await.expect("within the grace");
    assert_eq!(
        again.refresh_token, first.refresh_token,
        "the same successor"
    );
    // Logout and "log out everywhere else" accept it within the grace too.
    assert_eq!(revoke_others(&app, &r0).await.expect("previous cookie"), 0);
    let second = app.refresh(&first.refresh_token).await.expect("refresh");
    // r0 is two rotations old now, but was rotated away from well inside the grace.
    let late = app
        .refresh(&r0)
        .await
        .expect("two rotations back, within the grace");
    assert_eq!(late.refresh_token, second.refresh_token, "the current one");
    let third = app.refresh(&second.refresh_token).await.expect("refresh");
    for cookie in [&r0, &first.refresh_token] {
        let tab = app.refresh(cookie).await.expect("any rotated cookie");
        assert_eq!(tab.refresh_token, third.refresh_token);
    }
    for token in [
        &created.access_token,
        &first.access_token,
        &again.access_token,
        &second.access_token,
        &late.access_token,
        &third.access_token,
    ] {
        assert!(app.validate(token).await.valid, "every tab's token");
    }
    app.refresh(&third.refresh_token)
        .await
        .expect("the current cookie rotates on");
}

/// Tabs holding cookies of two generations refresh at once (raced): every one succeeds,
/// each gets a cookie that is the current one or the one before it, and the session is
/// never judged stolen.
async fn tabs_with_cookies_of_two_generations_refresh_at_once(store: Backend) {
    let app = TestApp::spawn_with(store, ROTATION).await;
    let created = app.create(&unique_did(), "alice.test").await;
    let r0 = created.refresh_token.clone();
    let r1 = app.refresh(&r0).await.expect("refresh").refresh_token;
    // Three and three: with the first two, eight access tokens, the cap, all live.
    let (old, new) = tokio::join!(refresh_all(&app, &r0, 3), refresh_all(&app, &r1, 3));
    let from_r1: std::collections::HashSet<&str> = new.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(from_r1.len(), 1, "r1 moves on once: {from_r1:?}");
    let r2 = new[0].1.clone();
    assert!(r2 != r1 && r2 != r0);
    for (access, cookie) in old.iter().chain(&new) {
        assert!(*cookie == r1 || *cookie == r2, "r0's tabs get r1 or r2");
        assert!(app.validate(access).await.valid);
    }
    let last = app.refresh(&r2).await.expect("the session lives on");
    assert!(app.validate(&last.access_token).await.valid);
}

/// Only a cookie whose own rotation is older than the grace is reuse, even when a later
/// one of the session is still inside it: the session ends, every token with it.
async fn a_cookie_rotated_longer_ago_than_the_grace_is_reuse(store: Backend) {
    let app = TestApp::spawn_with(store, ROTATION_SHORT_GRACE).await;
    let created = app.create(&unique_did(), "alice.test").await;
    let r0 = created.refresh_token.clone();
    let first = app.refresh(&r0).await.expect("refresh");
    // The grace is a span of time: let it pass for r0's rotation.
    tokio::time::sleep(SHORT_GRACE + Duration::from_millis(50)).await;
    let second = app.refresh(&first.refresh_token).await.expect("refresh");
    let tab = app
        .refresh(&first.refresh_token)
        .await
        .expect("r1 was rotated away from just now");
    assert_eq!(tab.refresh_token, second.refresh_token);
    let status = app.refresh(&r0).await.expect_err("reuse");
    assert_eq!(status.code(), Code::NotFound);
    for token in [
        &created.access_token,
        &first.access_token,
        &second.access_token,
        &tab.access_token,
    ] {
        assert!(
            !app.validate(token).await.valid,
            "the whole session is revoked"
        );
    }
    assert_eq!(
        app.refresh(&second.refresh_token)
            .await
            .expect_err("revoked")
            .code(),
        Code::NotFound
    );
}

/// A session remembers the previous rotation and four before it (bounded storage): a
/// cookie pushed out by more rotations within the grace is judged as any old one.
async fn a_session_remembers_a_bounded_number_of_rotations(store: Backend) {
    let app = TestApp::spawn_with(store, ROTATION).await;
    let created = app.create(&unique_did(), "alice.test").await;
    let mut cookies = vec![created.refresh_token.clone()];
    for _ in 0..6 {
        let next = app
            .refresh(cookies.last().expect("a cookie"))
            .await
            .expect("refresh");
        cookies.push(next.refresh_token);
    }
    let current = cookies[6].clone();
    // cookies[1..=5] are remembered: each gets the current one.
    for cookie in &cookies[1..6] {
        let tab = app.refresh(cookie).await.expect("remembered");
        assert_eq!(tab.refresh_token, current);
    }
    let status = app.refresh(&cookies[0]).await.expect_err("pushed out");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        app.refresh(&current).await.expect_err("revoked").code(),
        Code::NotFound
    );
}

/// Without a grace the old cookie is reuse at once: the session is revoked (every access
/// token invalid, NOT_FOUND for every cookie), also through logout and revoke-others.
async fn an_old_cookie_after_the_grace_revokes_the_session(store: Backend) {
    let app = TestApp::spawn_with(store, ROTATION_NO_GRACE).await;
    let did = unique_did();
    let created = app.create(&did, "alice.test").await;
    let first = app.refresh(&created.refresh_token).await.expect("refresh");
    let status = app
        .refresh(&created.refresh_token)
        .await
        .expect_err("old cookie");
    assert_eq!(status.code(), Code::NotFound);
    // The call that found the reuse says so, with the DID to tell; later ones that it was
    // revoked as reuse.
    assert_eq!(
        end_reason(&status),
        Some((
            "REFRESH_TOKEN_REUSED".to_owned(),
            vec![("did".to_owned(), did.clone())]
        ))
    );
    assert_eq!(
        end_reason(
            &app.refresh(&first.refresh_token)
                .await
                .expect_err("revoked")
        ),
        Some(("SESSION_REVOKED".to_owned(), revocation("reuse")))
    );
    for token in [&created.access_token, &first.access_token] {
        assert!(!app.validate(token).await.valid);
    }
    assert_eq!(
        app.refresh(&first.refresh_token)
            .await
            .expect_err("revoked")
            .code(),
        Code::NotFound
    );
    assert!(list(&app, &did).await.expect("list").is_empty());

    // An old cookie at logout ends the session too, and answers "not yours".
    let other = app.create(&did, "alice.test").await;
    let next = app.refresh(&other.refresh_token).await.expect("refresh");
    assert!(
        !app.delete(&other.refresh_token)
            .await
            .expect("logout answers")
    );
    assert!(!app.validate(&next.access_token).await.valid);
    // And at "log out everywhere else": NOT_FOUND, that session revoked, no other touched.
    let kept = app.create(&did, "alice.test").await;
    let third = app.create(&did, "alice.test").await;
    let moved = app.refresh(&third.refresh_token).await.expect("refresh");
    let status = revoke_others(&app, &third.refresh_token)
        .await
        .expect_err("reuse");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        end_reason(&status).map(|(reason, _)| reason).as_deref(),
        Some("REFRESH_TOKEN_REUSED")
    );
    assert!(!app.validate(&moved.access_token).await.valid);
    assert!(app.validate(&kept.access_token).await.valid);
}

/// A stolen cookie: the attacker refreshes first, the victim's later refresh with the old
/// cookie ends the session for both.
async fn a_stolen_cookie_ends_the_session_for_both(store: Backend) {
    let app = TestApp::spawn_with(store, ROTATION_NO_GRACE).await;
    let victim = app.create(&unique_did(), "alice.test").await;
    let stolen = victim.refresh_token.clone();
    let attacker = app
        .refresh(&stolen)
        .await
        .expect("the attacker refreshes first");
    assert!(app.validate(&attacker.access_token).await.valid);
    let status = app
        .refresh(&victim.refresh_token)
        .await
        .expect_err("the victim's old cookie");
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        !app.validate(&attacker.access_token).await.valid,
        "attacker out"
    );
    assert!(
        !app.validate(&victim.access_token).await.valid,
        "victim out"
    );
    assert_eq!(
        app.refresh(&attacker.refresh_token)
            .await
            .expect_err("the attacker's cookie is dead")
            .code(),
        Code::NotFound
    );
}

async fn a_batch_answers_each_token_as_its_single_validation_would(store: Backend) {
    let app = TestApp::spawn(store).await;
    let alice = app.create(&unique_did(), "alice.test").await;
    let bob = app.create(&unique_did(), "bob.test").await;
    let gone = app.create(&unique_did(), "carol.test").await;
    assert!(app.delete(&gone.refresh_token).await.expect("logout"));
    // A second tab of Alice's: both of her tokens live.
    let tab = app.refresh(&alice.refresh_token).await.expect("refresh");
    let tokens = [
        (alice.access_token.clone(), true),
        ("malformed".to_owned(), false),
        ("0".repeat(64), false),
        (bob.access_token.clone(), true),
        (alice.access_token.clone(), true),
        (gone.access_token.clone(), false),
        (alice.refresh_token.clone(), false),
        (String::new(), false),
        (bob.access_token.to_uppercase(), false),
        (tab.access_token.clone(), true),
        ("0".repeat(64), false),
    ];
    let batch: Vec<String> = tokens.iter().map(|(token, _)| token.clone()).collect();
    let answers = app.validate_many(&batch).await.expect("the batch answers");
    assert_eq!(
        answers.iter().map(|a| a.valid).collect::<Vec<_>>(),
        tokens.iter().map(|(_, valid)| *valid).collect::<Vec<_>>()
    );
    let did = |i: usize| answers[i].session.as_ref().map(|s| s.did.clone());
    assert_eq!(did(0), alice.session.as_ref().map(|s| s.did.clone()));
    assert_eq!(did(3), bob.session.as_ref().map(|s| s.did.clone()));
    // Each answer is the one its token gets alone, the token's own expiry included.
    for (token, answer) in batch.iter().zip(&answers) {
        assert_eq!(answer, &app.validate(token).await, "{token:?}");
    }
}

async fn a_batch_holds_at_most_1000_tokens(store: Backend) {
    let app = TestApp::spawn(store).await;
    let alice = app.create(&unique_did(), "alice.test").await;
    assert!(app.validate_many(&[]).await.expect("empty").is_empty());
    // 1,000 distinct tokens, each looked up, and the one valid among them found.
    let mut tokens: Vec<String> = (0..1000_u32).map(|i| format!("{i:064x}")).collect();
    tokens[500] = alice.access_token.clone();
    let answers = app.validate_many(&tokens).await.expect("1,000 answer");
    assert_eq!(answers.len(), 1000);
    let valid: Vec<usize> = (0..1000).filter(|&i| answers[i].valid).collect();
    assert_eq!(valid, [500]);
    tokens.push(alice.access_token.clone());
    let status = app.validate_many(&tokens).await.expect_err("1,001");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "access_tokens holds 1001 tokens: at most 1000 per call"
    );
}
