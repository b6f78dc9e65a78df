//! `WatchRevocations`: `reset` first, then an event for every change of a session's keys
//! (refresh, delete, revoke, the cap, any writer), `reset` for a consumer that falls
//! behind, the stream cap, and no stream where there is no feed.

use crate::support::{Backend, TestApp, sha256_hex, unique_did};
use barazo_session::config::StoreKind;
use barazo_session::proto::revocation_event::Event;
use barazo_session::proto::{
    Reset, RevocationEvent, RevokeSessionRequest, WatchRevocationsRequest,
};
use std::time::Duration;
use tonic::{Code, Streaming};

const PREFIX: &str = "barazo:session:";

async fn watch(app: &TestApp) -> Result<Streaming<RevocationEvent>, tonic::Status> {
    app.client
        .clone()
        .watch_revocations(WatchRevocationsRequest {})
        .await
        .map(tonic::Response::into_inner)
}

/// A stream from `app`, retried while its feed is still subscribing (UNAVAILABLE).
async fn live_stream(app: &TestApp) -> Streaming<RevocationEvent> {
    let start = std::time::Instant::now();
    loop {
        match watch(app).await {
            Ok(stream) => return stream,
            Err(status) if status.code() == Code::Unavailable => {
                assert!(start.elapsed() < Duration::from_secs(10), "feed never live");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(status) => panic!("WatchRevocations: {status:?}"),
        }
    }
}

async fn next(stream: &mut Streaming<RevocationEvent>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
        .expect("not ended")
        .event
        .expect("an event")
}

/// Reads events until `wanted` arrives; how many came before it.
async fn expect(stream: &mut Streaming<RevocationEvent>, wanted: Event) -> usize {
    let mut before = 0;
    loop {
        let event = next(stream).await;
        if event == wanted {
            return before;
        }
        before += 1;
        assert!(before < 100_000, "no {wanted:?} in time");
    }
}

fn reset() -> Event {
    Event::Reset(Reset {})
}

store_tests!(reset_first_then_refresh_delete_revoke_and_cap_events on valkey, cluster);

async fn reset_first_then_refresh_delete_revoke_and_cap_events(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--max-sessions-per-did", "2"]).await;
    let mut stream = live_stream(&app).await;
    assert_eq!(next(&mut stream).await, reset(), "reset is always first");

    let did = unique_did();
    let first = app.create(&did, "alice.test").await;
    let key = |refresh: &str| Event::SessionKey(sha256_hex(refresh));
    // Refresh: the old token's hash and the session.
    let refreshed = app.refresh(&first.refresh_token).await.expect("refresh");
    expect(
        &mut stream,
        Event::AccessTokenHash(sha256_hex(&first.access_token)),
    )
    .await;
    expect(&mut stream, key(&first.refresh_token)).await;
    assert!(!refreshed.access_token.is_empty());

    // Delete (logout).
    assert!(app.delete(&first.refresh_token).await.expect("delete"));
    expect(&mut stream, key(&first.refresh_token)).await;

    // RevokeSession by its key.
    let second = app.create(&did, "alice.test").await;
    let revoked = app
        .client
        .clone()
        .revoke_session(RevokeSessionRequest {
            did: did.clone(),
            session_key: sha256_hex(&second.refresh_token),
        })
        .await
        .expect("revoke")
        .into_inner();
    assert!(revoked.revoked);
    expect(&mut stream, key(&second.refresh_token)).await;

    // The cap: a third login revokes the least recently refreshed of two.
    let third = app.create(&did, "alice.test").await;
    let _fourth = app.create(&did, "alice.test").await;
    let _fifth = app.create(&did, "alice.test").await;
    expect(&mut stream, key(&third.refresh_token)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_gets_a_reset_and_the_stream_goes_on() {
    let app = TestApp::spawn(StoreKind::Valkey).await;
    let mut stream = live_stream(&app).await;
    assert_eq!(next(&mut stream).await, reset());
    // Far more events than the feed's ring, the stream's buffer and HTTP/2's window hold,
    // written while this consumer reads nothing.
    let mut conn = app.valkey().client().await;
    for batch in 0..4 {
        let mut pipe = redis::pipe();
        for i in 0..10_000 {
            pipe.cmd("SET")
                .arg(format!(
                    "{PREFIX}access:{}",
                    sha256_hex(&format!("{batch}-{i}"))
                ))
                .arg("x")
                .arg("EX")
                .arg(60)
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.expect("SETs");
    }
    let before = expect(&mut stream, reset()).await;
    // Fewer than were written: the gap is where the reset stands.
    assert!(before < 40_000, "{before} events before the reset");
    // And it goes on: a later change arrives.
    let _: () = redis::cmd("SET")
        .arg(format!("{PREFIX}access:after"))
        .arg("x")
        .query_async(&mut conn)
        .await
        .expect("SET after");
    expect(&mut stream, Event::AccessTokenHash("after".into())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_cap_are_refused() {
    let app = TestApp::spawn_with(StoreKind::Valkey, &["--max-revocation-streams", "1"]).await;
    let mut first = live_stream(&app).await;
    assert_eq!(next(&mut first).await, reset());
    let refused = watch(&app).await.expect_err("one stream at most");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    drop(first);
    // The slot comes back once the server sees the stream closed.
    let start = std::time::Instant::now();
    while watch(&app).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_feed_ends_the_stream_with_unavailable() {
    let app = TestApp::spawn(StoreKind::Valkey).await;
    let mut stream = live_stream(&app).await;
    assert_eq!(next(&mut stream).await, reset());
    let mut conn = app.valkey().client().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .expect("CLIENT LIST");
    let id = list
        .lines()
        .find(|line| {
            line.split(' ').any(|f| {
                f.strip_prefix("flags=")
                    .is_some_and(|flags| flags.contains('t'))
            })
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
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("ends in time")
        .expect_err("ends with a status");
    assert_eq!(ended.code(), Code::Unavailable);
    // A new stream once the feed is back starts with reset.
    let mut again = live_stream(&app).await;
    assert_eq!(next(&mut again).await, reset());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_without_a_feed_refuse_the_stream() {
    let app = TestApp::spawn(StoreKind::Memory).await;
    let refused = watch(&app).await.expect_err("no feed");
    assert_eq!(refused.code(), Code::FailedPrecondition);
}

store_tests!(a_handle_change_is_an_event_per_session_and_reaches_every_replica on valkey, cluster);

/// `UpdateHandle` on A: a `session_key` event per session of the DID on B's stream, and B's
/// cached answers show the new handle within a second.
async fn a_handle_change_is_an_event_per_session_and_reaches_every_replica(backend: Backend) {
    let a = TestApp::spawn_with(backend, &["--metrics-listen", "127.0.0.1:0"]).await;
    let b = crate::cache::second_replica(&a).await;
    let did = unique_did();
    let first = a.create(&did, "alice.test").await;
    let second = a.create(&did, "alice.test").await;
    for session in [&first, &second] {
        crate::cache::cache(&b, &session.access_token).await;
    }
    let mut stream = live_stream(&b).await;
    assert_eq!(next(&mut stream).await, reset());

    let changed = std::time::Instant::now();
    assert_eq!(
        a.update_handle(&did, "alice.example.com")
            .await
            .expect("update"),
        2
    );
    // One event per session, in whatever order the sessions' index lists them.
    let mut awaited: Vec<Event> = [&first, &second]
        .iter()
        .map(|session| Event::SessionKey(sha256_hex(&session.refresh_token)))
        .collect();
    while !awaited.is_empty() {
        let event = next(&mut stream).await;
        awaited.retain(|wanted| *wanted != event);
    }
    for session in [&first, &second] {
        crate::cache::eventually("B answers with the new handle", || async {
            b.validate(&session.access_token)
                .await
                .session
                .is_some_and(|s| s.handle == "alice.example.com")
        })
        .await;
    }
    assert!(
        changed.elapsed() < Duration::from_secs(1),
        "{:?}",
        changed.elapsed()
    );
}
