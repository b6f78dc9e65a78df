//! `--propagation N`: how long a revocation takes to reach another replica's validation
//! cache. Two servers (A and B, cache on) on one Valkey; B under validate load from
//! `callers` callers on a token of its own; N times: a session is created on A, validated
//! on B until B answers from its cache (twice in a row valid), deleted on A, and B is
//! asked back to back until it answers `valid=false`. Two figures, both from A's answer:
//! until B's `WatchRevocations` stream (on a connection of its own) delivers the event
//! naming the token's hash, which B sends only after dropping the token from its cache (so
//! this bounds the propagation itself, plus one stream message under load); and until B's
//! first `valid=false` answer (which adds one full B call under load).

use crate::client::{Client, Connector};
use crate::namespace::Run;
use crate::spawn::{BoxError, Server, ServerSpec};
use barazo_session::domain::sha256_hex;
use barazo_session::proto::revocation_event::Event;
use barazo_session::proto::{
    CreateSessionRequest, DeleteAllSessionsForDidRequest, DeleteSessionRequest,
    ValidateAccessTokenRequest, WatchRevocationsRequest,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

async fn valid(client: &mut Client, token: &str) -> Result<bool, BoxError> {
    Ok(client
        .validate_access_token(ValidateAccessTokenRequest {
            access_token: token.to_owned(),
        })
        .await?
        .into_inner()
        .valid)
}

/// B's `WatchRevocations` stream, asked again while B's feed is still subscribing
/// (`UNAVAILABLE`: SERVING comes before the feed is live, in cluster mode one per primary).
async fn watch_when_live(
    mut client: Client,
) -> Result<tonic::Streaming<barazo_session::proto::RevocationEvent>, BoxError> {
    let start = Instant::now();
    loop {
        match client.watch_revocations(WatchRevocationsRequest {}).await {
            Ok(stream) => return Ok(stream.into_inner()),
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && start.elapsed() < Duration::from_secs(10) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => return Err(status.into()),
        }
    }
}

/// Runs the scenario and prints the figures.
pub async fn run(
    spec: ServerSpec,
    count: usize,
    callers: usize,
    run: &Run,
) -> Result<(), BoxError> {
    let a = Server::start(ServerSpec {
        label: "A".into(),
        ..spec.clone()
    })
    .await?;
    let b = Server::start(ServerSpec {
        label: "B".into(),
        ..spec
    })
    .await?;
    let ledger = run.ledger(0);
    let connector = Connector::plaintext();
    let mut on_a = connector.client(connector.channel(&a.addr).await?);
    let mut on_b = connector.client(connector.channel(&b.addr).await?);
    let mut feed = watch_when_live(connector.client(connector.channel(&b.addr).await?)).await?;
    let load_did = ledger.did(0);
    let load_token = on_a
        .create_session(CreateSessionRequest {
            did: load_did.clone(),
            handle: "bench.test".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .access_token;
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    let load_clients = connector.clients(&b.addr, 4).await?;
    for i in 0..callers {
        let mut client = load_clients[i % load_clients.len()].clone();
        let (token, stop) = (load_token.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut calls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if valid(&mut client, &token).await.is_ok() {
                    calls += 1;
                }
            }
            calls
        }));
    }
    let started = Instant::now();
    let mut took = Vec::with_capacity(count);
    let mut events = Vec::with_capacity(count);
    for n in 1..=count {
        let did = ledger.did(n);
        let created = on_a
            .create_session(CreateSessionRequest {
                did: did.clone(),
                handle: "bench.test".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        while !(valid(&mut on_b, &created.access_token).await?
            && valid(&mut on_b, &created.access_token).await?)
        {}
        on_a.delete_session(DeleteSessionRequest {
            refresh_token: created.refresh_token,
        })
        .await?;
        let revoked = Instant::now();
        let hash = sha256_hex(&created.access_token);
        loop {
            let event = tokio::time::timeout(Duration::from_secs(5), feed.message())
                .await
                .map_err(|_| "no revocation event from B within 5 s")??
                .ok_or("B's revocation stream ended")?;
            if matches!(event.event, Some(Event::AccessTokenHash(h)) if h == hash) {
                break;
            }
        }
        events.push(revoked.elapsed());
        let mut polls = 0u32;
        while valid(&mut on_b, &created.access_token).await? {
            polls += 1;
            if revoked.elapsed() > Duration::from_secs(5) {
                return Err(
                    format!("B still validates a token revoked 5 s ago ({polls} polls)").into(),
                );
            }
        }
        took.push(revoked.elapsed());
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut load_calls = 0;
    for task in load {
        load_calls += task.await.unwrap_or(0);
    }
    on_a.delete_all_sessions_for_did(DeleteAllSessionsForDidRequest {
        did: load_did,
        ..Default::default()
    })
    .await?;
    took.sort();
    events.sort();
    let at = |took: &[Duration], q: f64| {
        let index = ((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1;
        took[index].as_secs_f64() * 1000.0
    };
    println!(
        "propagation of {count} revocations from A to B's cache, B under validate load from {callers} callers ({:.0} calls/s):",
        load_calls as f64 / elapsed.as_secs_f64()
    );
    println!("| from A's answer to | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    for (what, took) in [
        ("B's revocation event (cache dropped)", &events),
        ("B's `valid=false`", &took),
    ] {
        println!(
            "| {what} | {:.3} | {:.3} | {:.3} | {:.3} |",
            at(took, 0.50),
            at(took, 0.90),
            at(took, 0.99),
            at(took, 1.0)
        );
    }
    Ok(())
}
