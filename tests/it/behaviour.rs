//! The behaviour every store must have, run against the in-memory store, a standalone
//! Valkey and a three-node Valkey Cluster through the real gRPC server.

use crate::support::{Backend, TestApp, sha256_hex, unique_did};
use barazo_session::proto::CreateSessionRequest;
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
    concurrent_refreshes_leave_exactly_one_valid_token,
    refresh_racing_delete_never_leaves_a_valid_token,
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
        .refresh(&created.refresh_token)
        .await
        .expect("refreshed");
    assert_ne!(refreshed.access_token, created.access_token);
    let session = refreshed.session.expect("session");
    assert_eq!(session.session_key, first.session_key);
    assert_eq!(session.did, first.did);
    assert_eq!(session.handle, first.handle);
    assert_eq!(session.created_at, first.created_at);
    assert!(ms(&session.access_token_expires_at) >= ms(&first.access_token_expires_at));

    assert!(
        !app.validate(&created.access_token).await.valid,
        "old token revoked at once"
    );
    let validated = app.validate(&refreshed.access_token).await;
    assert!(validated.valid);
    assert_eq!(validated.session, Some(session));
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
        })
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let status = app
        .try_validate(&"a".repeat(20 * 1024))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // The connection stays usable.
    app.create(&unique_did(), "alice.test").await;
}

async fn concurrent_refreshes_leave_exactly_one_valid_token(store: Backend) {
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
    assert_eq!(valid, 1, "exactly one of 21 tokens validates");
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
