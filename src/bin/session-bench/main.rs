//! `session-bench`: load for `barazo-session`.
//!
//! Drives a running server (`--addr`) or starts servers itself, then prints throughput,
//! latency percentiles, errors and invalid answers. `--compare` starts two servers and
//! alternates rounds between them, so machine noise hits both alike. See BENCHMARKS.md.

mod load;
mod sink;
mod spawn;
mod valkey_commands;

use clap::{Parser, ValueEnum};
use load::{Outcome, Pool, Scenario};
use spawn::{BoxError, Server, ServerSpec};
use std::sync::Arc;
use std::time::Duration;

/// Which store the started servers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Store {
    Memory,
    Valkey,
}

/// What two started servers differ in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Compare {
    /// The same store with tracing off, then on (100% sampling, exported over OTLP to a
    /// receiver in this process).
    Tracing,
    /// The in-memory store, then the Valkey store.
    Store,
}

/// Load for barazo-session.
#[derive(Debug, Parser)]
#[command(name = "session-bench")]
struct Args {
    /// A running server to load, `host:port`. Without it the tool starts servers itself
    /// (the `barazo-session` binary built beside this one).
    #[arg(long)]
    addr: Option<String>,
    /// Store of a started server.
    #[arg(long, value_enum, default_value_t = Store::Memory)]
    store: Store,
    /// Valkey for started servers on the Valkey store (its data is not flushed; keys are
    /// under the default prefix).
    #[arg(long, env = "VALKEY_URL", default_value = "redis://127.0.0.1:6379")]
    valkey_url: String,
    /// `standalone`, or `cluster` (then `--valkey-url` lists seed nodes, comma-separated).
    #[arg(long, env = "VALKEY_MODE", default_value = "standalone")]
    valkey_mode: String,
    /// Start two servers and alternate rounds between them.
    #[arg(long, value_enum)]
    compare: Option<Compare>,
    /// What the callers do.
    #[arg(long, value_enum, default_value_t = Scenario::Validate)]
    scenario: Scenario,
    /// HTTP/2 connections per server.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent callers per server, spread over the connections.
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// Seconds per measured round.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Measured rounds per server.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of unmeasured load per server before the first round.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Sessions created per server before the load (validated, and refreshed).
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// `--worker-threads` for every started server (default: the server's own default).
    #[arg(long)]
    server_worker_threads: Option<usize>,
    /// Print each round's outcomes per 250 ms (OK, UNAVAILABLE, other errors, slowest
    /// failure): for watching a fault, e.g. Valkey killed and restarted during the round.
    #[arg(long)]
    timeline: bool,
}

/// One server under load and what it measured.
struct Target {
    label: String,
    server: Option<Server>,
    clients: Vec<
        barazo_session::proto::session_service_client::SessionServiceClient<
            tonic::transport::Channel,
        >,
    >,
    pool: Arc<Pool>,
    rounds: Vec<Outcome>,
    /// Calls made while warming up (unmeasured).
    warmup_calls: u64,
    /// Calls made to create the session pool.
    setup_calls: u64,
    /// Valkey top-level commands during the measured rounds (Valkey-backed servers only).
    valkey_commands: Option<u64>,
    /// Calls made in the rounds whose Valkey commands were counted.
    counted_calls: u64,
}

fn specs(args: &Args, otlp: Option<&str>) -> Vec<ServerSpec> {
    let spec = |label: &str, store: Store, otlp: Option<&str>| ServerSpec {
        label: label.to_owned(),
        store: match store {
            Store::Memory => "memory".into(),
            Store::Valkey => "valkey".into(),
        },
        valkey_url: (store == Store::Valkey).then(|| args.valkey_url.clone()),
        valkey_mode: args.valkey_mode.clone(),
        otlp_endpoint: otlp.map(str::to_owned),
        worker_threads: args.server_worker_threads,
    };
    let store_name = format!("{:?}", args.store).to_lowercase();
    match args.compare {
        None => vec![spec(&store_name, args.store, None)],
        Some(Compare::Store) => vec![
            spec("memory", Store::Memory, None),
            spec("valkey", Store::Valkey, None),
        ],
        Some(Compare::Tracing) => vec![
            spec(&format!("{store_name}, tracing off"), args.store, None),
            spec(&format!("{store_name}, tracing on"), args.store, otlp),
        ],
    }
}

fn print_timeline(label: &str, round: usize, outcome: &Outcome) {
    println!("timeline of round {round}, {label}:");
    println!("| from s | ok | unavailable | other errors | slowest failure ms |");
    println!("|---|---|---|---|---|");
    for (i, slot) in outcome.timeline.iter().enumerate() {
        println!(
            "| {:.2} | {} | {} | {} | {:.1} |",
            i as f64 * load::SLOT.as_secs_f64(),
            slot.ok,
            slot.unavailable,
            slot.other,
            ms(slot.slowest_failure_us)
        );
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Peak resident memory of a process, from /proc (Linux), in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let sink = if args.compare == Some(Compare::Tracing) {
        Some(sink::Sink::start()?)
    } else {
        None
    };
    let mut targets = Vec::new();
    if let Some(addr) = &args.addr {
        targets.push((addr.clone(), addr.clone(), None));
    } else {
        for spec in specs(&args, sink.as_ref().map(|(_, endpoint)| endpoint.as_str())) {
            let server = Server::start(spec.clone()).await?;
            targets.push((spec.label, server.addr.clone(), Some(server)));
        }
    }
    let mut loaded = Vec::new();
    for (label, addr, server) in targets {
        let mut clients = spawn::clients(&addr, args.connections.max(1)).await?;
        let pool = Arc::new(Pool::create(&mut clients[0], args.sessions.max(1)).await?);
        loaded.push(Target {
            label,
            server,
            clients,
            pool,
            rounds: Vec::new(),
            warmup_calls: 0,
            valkey_commands: None,
            counted_calls: 0,
            setup_calls: 2 * args.sessions.max(1) as u64,
        });
    }
    let callers = args.callers.max(1);
    for target in &mut loaded {
        let warmup = load::run(
            args.scenario,
            &target.clients,
            callers,
            Duration::from_secs(args.warmup),
            target.pool.clone(),
        )
        .await?;
        target.warmup_calls = warmup.calls;
    }
    // Count Valkey's commands whenever a started server uses it.
    // (Standalone only: a cluster's commands are spread over its nodes' statistics.)
    let mut counter = if args.addr.is_none()
        && args.valkey_mode == "standalone"
        && (args.store == Store::Valkey || args.compare == Some(Compare::Store))
    {
        Some(valkey_commands::CommandCounter::connect(&args.valkey_url).await?)
    } else {
        None
    };
    for round in 0..args.rounds.max(1) {
        for target in &mut loaded {
            let uses_valkey = target.label.starts_with("valkey");
            let before = match (&mut counter, uses_valkey) {
                (Some(counter), true) => counter.top_level_commands().await.ok(),
                _ => None,
            };
            let outcome = load::run(
                args.scenario,
                &target.clients,
                callers,
                Duration::from_secs(args.duration),
                target.pool.clone(),
            )
            .await?;
            if let (Some(counter), Some(before)) = (&mut counter, before) {
                // A Valkey restarted during the round (a fault test) resets its counters:
                // such a round is left out of the count, and said so.
                match counter.top_level_commands().await {
                    Ok(after) if after >= before => {
                        *target.valkey_commands.get_or_insert(0) += after - before;
                        target.counted_calls += outcome.calls;
                    }
                    _ => eprintln!("round {}: Valkey's command count was lost", round + 1),
                }
            }
            eprintln!(
                "round {} {:<24} {:>9.0} calls/s  p99 {:.2} ms",
                round + 1,
                target.label,
                outcome.throughput,
                ms(outcome.latency.value_at_quantile(0.99))
            );
            if args.timeline {
                print_timeline(&target.label, round + 1, &outcome);
            }
            target.rounds.push(outcome);
        }
    }

    println!(
        "scenario {:?}, {} connections x {} callers, {} rounds of {} s",
        args.scenario, args.connections, callers, args.rounds, args.duration
    );
    println!(
        "| server | calls/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | invalid | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut throughputs = Vec::new();
    for target in &loaded {
        let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let (mut errors, mut invalid) = (0, 0);
        for outcome in &target.rounds {
            latency.add(&outcome.latency)?;
            errors += outcome.errors;
            invalid += outcome.invalid;
        }
        let throughput =
            target.rounds.iter().map(|o| o.throughput).sum::<f64>() / target.rounds.len() as f64;
        throughputs.push(throughput);
        let rss = target
            .server
            .as_ref()
            .and_then(|s| peak_rss_mib(s.pid()))
            .map_or("-".to_owned(), |mib| format!("{mib:.1}"));
        println!(
            "| {} | {throughput:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {errors} | {invalid} | {rss} |",
            target.label,
            ms(latency.value_at_quantile(0.50)),
            ms(latency.value_at_quantile(0.90)),
            ms(latency.value_at_quantile(0.99)),
            ms(latency.value_at_quantile(0.999)),
        );
    }
    for target in &loaded {
        if let Some(commands) = target.valkey_commands {
            let calls = target.counted_calls;
            println!(
                "{}: {commands} Valkey commands (top level, health probes included) for {calls} calls = {:.4} per call",
                target.label,
                commands as f64 / calls.max(1) as f64
            );
        }
    }
    if let [first, second] = throughputs[..] {
        println!("second / first throughput: {:.1}%", 100.0 * second / first);
    }
    if let Some((sink, _)) = &sink {
        // The traced server is the second; spans still buffered in it are not counted.
        let traced_calls = loaded.last().map_or(0, |t| {
            t.setup_calls + t.warmup_calls + t.rounds.iter().map(|o| o.calls).sum::<u64>()
        });
        println!(
            "export requests accepted by the OTLP receiver: {}; spans received: {} for {} calls to the traced server",
            sink.exports(),
            sink.spans(),
            traced_calls,
        );
    }
    Ok(())
}
