//! Which Valkey connection setup serves `ValidateAccessToken` faster: the service's redis-rs
//! `ConnectionManager` (one multiplexed connection) or a deadpool-redis pool (which checks
//! each connection out with UNWATCH+PING). Both run the service's own validate script.
//!
//! Needs a running Valkey: `VALKEY_URL=redis://127.0.0.1:6399 cargo bench --bench valkey_connection`
//! (see docs/operations.md, "Valkey connection"). Rounds alternate between the two setups so that machine
//! noise hits both alike.

// A measurement tool, not the service: a failed setup step ends the run with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use barazo_session::domain::Lifetimes;
use barazo_session::domain::{SessionRecord, now_ms, sha256_hex};
use barazo_session::store::SessionStore;
use barazo_session::store::valkey::{ValkeyOptions, ValkeyStore};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const ROUND: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;
const PREFIX: &str = "bench:session:";

async fn run<F, Fut>(concurrency: usize, call: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (call, stop, done) = (call.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    call().await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(ROUND).await;
    stop.store(true, Ordering::Relaxed);
    let calls = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for task in tasks {
        let _ = task.await;
    }
    calls as f64 / elapsed
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("VALKEY_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let store = Arc::new(ValkeyStore::new(
        &ValkeyOptions {
            urls: vec![url.clone()],
            password: None,
            ca_pem: None,
            key_prefix: PREFIX.into(),
            connect_timeout: Duration::from_millis(500),
            command_timeout: Duration::from_millis(500),
        },
        Arc::new(barazo_session::observe::metrics::Metrics::new()),
    )?);
    let access_hash = sha256_hex("bench-access-token");
    let record = SessionRecord {
        sid: sha256_hex("bench-sid"),
        did: "did:plc:bench".into(),
        handle: "bench.test".into(),
        access_token_hash: access_hash.clone(),
        access_token_expires_at: now_ms() + 3_600_000,
        created_at: now_ms(),
        ..Default::default()
    };
    let lifetimes = Lifetimes {
        session: Duration::from_secs(3600),
        access_token: Duration::from_secs(3600),
        max: None,
        max_per_did: None,
        tokens: barazo_session::domain::TokenRules::DEFAULT,
    };
    store.create(&record, lifetimes).await?;

    let script = Arc::new(redis::Script::new(include_str!(
        "../src/store/valkey/scripts/validate.lua"
    )));
    let access_key = Arc::new(format!("{PREFIX}access:{access_hash}"));
    let data_prefix = Arc::new(format!("{PREFIX}data:"));

    println!("ops/s of the validate script, {ROUNDS} alternating rounds of {ROUND:?}");
    println!("| callers | ConnectionManager | deadpool-redis (pool = callers) | ratio |");
    println!("|---|---|---|---|");
    for concurrency in [1, 16, 64] {
        let mut config = deadpool_redis::Config::from_url(url.clone());
        config.pool = Some(deadpool_redis::PoolConfig::new(concurrency));
        let pool = config.create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
        let (mut manager_total, mut pool_total) = (0.0, 0.0);
        for _ in 0..ROUNDS {
            let s = store.clone();
            let h = access_hash.clone();
            manager_total += run(concurrency, move || {
                let (s, h) = (s.clone(), h.clone());
                async move {
                    let found = s.find_by_access_hash(&h).await.expect("valkey answers");
                    assert!(found.is_some());
                }
            })
            .await;
            let (p, sc, k, d) = (
                pool.clone(),
                script.clone(),
                access_key.clone(),
                data_prefix.clone(),
            );
            pool_total += run(concurrency, move || {
                let (p, sc, k, d) = (p.clone(), sc.clone(), k.clone(), d.clone());
                async move {
                    let mut conn = p.get().await.expect("pool checkout");
                    let found: Option<(String, String)> = sc
                        .key(k.as_str())
                        .arg(d.as_str())
                        .invoke_async(&mut conn)
                        .await
                        .expect("valkey answers");
                    assert!(found.is_some());
                }
            })
            .await;
        }
        let (m, p) = (manager_total / ROUNDS as f64, pool_total / ROUNDS as f64);
        println!("| {concurrency} | {m:.0} | {p:.0} | {:.2} |", m / p);
    }
    if let Some(presented) = barazo_session::domain::rotation::Presented::parse(&record.sid) {
        let _ = store.delete(&presented, Duration::ZERO).await?;
    }
    Ok(())
}
