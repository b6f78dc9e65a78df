//! `session-bench`: load for `barazo-session`.
//!
//! Drives a running server (`--addr`, reached with TLS, mTLS and a service key like a real
//! caller) or starts servers itself, then prints throughput, latency percentiles, errors
//! and invalid answers. `--compare` starts two servers and alternates rounds between them,
//! so machine noise hits both alike. Every session it creates belongs to a DID of its own
//! run and is deleted when it is done, also on Ctrl-C and SIGTERM. See BENCHMARKS.md.

mod cleanup;
mod client;
mod floor;
mod interrupt;
mod load;
mod namespace;
mod profile;
mod propagation;
mod serve;
mod sink;
mod spawn;
mod valkey_commands;

use barazo_session::api::error::chain;
use barazo_session::config::Secret;
use clap::{Parser, ValueEnum};
use cleanup::{Cleanup, Dids};
use client::{Client, Connector};
use interrupt::Stop;
use load::{Load, Outcome, Pool, Scenario};
use namespace::{Ledger, Run};
use spawn::{BoxError, Server, ServerSpec};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;

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
    /// Three servers: the in-memory store, Valkey with the validation cache, Valkey
    /// without it (`--validation-cache off`).
    Cache,
}

/// Load for barazo-session: throughput, latency percentiles, errors.
///
/// Its sessions: every session it creates belongs to a DID of its own, new for each run:
/// did:web:session-bench.invalid:run-<unix time>-<random>:<server>:<n> (".invalid" never
/// resolves, so no real account has such a DID). When the load ends, also on Ctrl-C or
/// SIGTERM, it deletes them with DeleteAllSessionsForDid and prints how many it removed; a
/// second Ctrl-C exits at once. Whatever it cannot delete, it lists in a file, with the
/// command that deletes it (--delete-dids).
///
/// Permissions: against a server with an authorization policy, its caller (service key or
/// client certificate) must be allowed CreateSession, ValidateAccessToken, RefreshSession
/// and DeleteAllSessionsForDid (and Check for --scenario check). It checks
/// DeleteAllSessionsForDid before creating anything and does not start without it.
///
/// Figures from a debug build mean nothing: it warns when it is one, and when a server it
/// loads says it is one (debug builds of barazo-session mark their answers).
#[derive(Debug, Parser)]
#[command(name = "session-bench")]
struct Args {
    /// Instead of a load: one of the tool's servers on its own, for another load tool.
    #[command(subcommand)]
    serve: Option<serve::Serve>,
    /// A running server to load, `host:port`. Without it the tool starts servers itself
    /// (the `barazo-session` binary built beside this one).
    #[arg(long)]
    addr: Option<String>,
    /// PEM CA bundle that issued `--addr`'s certificate: connect with TLS (the system's
    /// roots are not used).
    #[arg(long, value_name = "PEM", requires = "addr")]
    tls_ca: Option<PathBuf>,
    /// The name `--addr`'s certificate must carry when it is not the address's host, e.g.
    /// `--addr 10.0.0.5:50051 --tls-domain session.internal`.
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_domain: Option<String>,
    /// PEM client certificate chain, for a server that requires mTLS (with `--tls-key`).
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,
    /// Service key for `--addr`, sent as `authorization: Bearer <key>` like a real
    /// caller's. Prefer the environment variable: a flag's value stays in the shell's
    /// history and shows in the process list.
    #[arg(
        long,
        env = "SESSION_BENCH_SERVICE_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    service_key: Option<Secret>,
    /// No load: delete the sessions of the DIDs in this file (one per line, all of them
    /// session-bench's, as a run whose cleanup failed writes them) on `--addr`.
    #[arg(long, value_name = "FILE", requires = "addr")]
    delete_dids: Option<PathBuf>,
    /// Store of a started server.
    #[arg(long, value_enum, default_value_t = Store::Memory)]
    store: Store,
    /// Valkey for started servers on the Valkey store (keys under the default prefix; the
    /// tool deletes its sessions when done and flushes nothing). Its value is not shown
    /// here: it may hold a password.
    #[arg(
        long,
        env = "VALKEY_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    valkey_url: String,
    /// `standalone`, or `cluster` (then `--valkey-url` lists seed nodes, comma-separated).
    #[arg(long, env = "VALKEY_MODE", default_value = "standalone")]
    valkey_mode: String,
    /// Start two servers and alternate rounds between them.
    #[arg(long, value_enum)]
    compare: Option<Compare>,

    /// Instead of a throughput run: N revocations on one started server (A), each timed
    /// until a second (B, validation cache on, under validate load) stops validating the
    /// token it had cached. Needs `--valkey-url`.
    #[arg(long, value_name = "N", conflicts_with_all = ["addr", "compare"])]
    propagation: Option<usize>,
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

impl Args {
    fn connection_flags(&self) -> client::Flags<'_> {
        client::Flags {
            tls_ca: self.tls_ca.as_deref(),
            tls_domain: self.tls_domain.as_deref(),
            tls_cert: self.tls_cert.as_deref(),
            tls_key: self.tls_key.as_deref(),
            service_key: self.service_key.as_ref(),
        }
    }

    fn callers(&self) -> usize {
        self.callers.max(1)
    }
}

/// Deletions in flight at once during a cleanup: as many as the load's callers, at most 64,
/// so that the cleanup presses a production server no harder than the load did.
fn cleanup_concurrency(args: &Args) -> usize {
    args.callers().min(64)
}

/// One server under load and what it measured.
struct Target {
    label: String,
    server: Option<Server>,
    clients: Vec<Client>,
    /// The DIDs its sessions were created under.
    ledger: Arc<Ledger>,
    /// Whether its sessions outlive the run (a server at `--addr`, or a started one on
    /// Valkey), so that the tool must delete them.
    persistent: bool,
    pool: Option<Arc<Pool>>,
    rounds: Vec<Outcome>,
    /// Calls made while warming up (unmeasured).
    warmup_calls: u64,
    /// Calls made before the load: the session pool, and the check that deleting is allowed.
    setup_calls: u64,
    /// Valkey top-level commands during the measured rounds (Valkey-backed servers only).
    valkey_commands: Option<u64>,
    /// Calls made in the rounds whose Valkey commands were counted.
    counted_calls: u64,
}

impl Target {
    /// The load against this target; an error before its session pool exists.
    fn load(&self, args: &Args) -> Result<Load<'_>, BoxError> {
        let pool = self
            .pool
            .clone()
            .ok_or("the session pool is created before any load")?;
        Ok(Load {
            scenario: args.scenario,
            clients: &self.clients,
            callers: args.callers(),
            pool,
            ledger: self.ledger.clone(),
        })
    }
}

/// Warnings worth repeating under the figures, where a reader of a pasted report sees them.
#[derive(Default)]
struct Warnings(Vec<String>);

impl Warnings {
    fn add(&mut self, warning: String) {
        eprintln!("session-bench: WARNING: {warning}");
        self.0.push(warning);
    }

    fn print(&self) {
        for warning in &self.0 {
            println!("WARNING: {warning}");
        }
    }
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
        validation_cache: None,
    };
    let store_name = format!("{:?}", args.store).to_lowercase();
    match args.compare {
        None => vec![spec(&store_name, args.store, None)],
        Some(Compare::Store) => vec![
            spec("memory", Store::Memory, None),
            spec("valkey", Store::Valkey, None),
        ],
        Some(Compare::Cache) => vec![
            spec("memory", Store::Memory, None),
            ServerSpec {
                validation_cache: Some("on"),
                ..spec("valkey, cache on", Store::Valkey, None)
            },
            ServerSpec {
                validation_cache: Some("off"),
                ..spec("valkey, cache off", Store::Valkey, None)
            },
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
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(serve) = &args.serve {
        return serve::run(serve).await;
    }
    // Everything the connection needs is read now, before anything is created.
    let connector = match &args.addr {
        Some(_) => match Connector::from_flags(&args.connection_flags()) {
            Ok(connector) => connector,
            Err(problems) => {
                for problem in problems {
                    eprintln!("session-bench: {problem}");
                }
                return ExitCode::from(2);
            }
        },
        None => Connector::plaintext(),
    };
    if let Some(file) = &args.delete_dids {
        return delete_listed(&args, &connector, file).await;
    }
    if let Some(count) = args.propagation {
        let spec = ServerSpec {
            validation_cache: Some("on"),
            ..specs(&args, None).remove(0)
        };
        let run = match Run::new() {
            Ok(run) => run,
            Err(err) => {
                eprintln!("session-bench: {err}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(warning) = profile::own_warning() {
            eprintln!("{warning}");
        }
        return match propagation::run(spec, count, args.callers(), &run).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("session-bench: {}", chain(err.as_ref()));
                ExitCode::FAILURE
            }
        };
    }
    let mut warnings = Warnings::default();
    if let Some(warning) = profile::own_warning() {
        warnings.add(warning);
    }
    let (run, stop) = match Run::new()
        .map_err(BoxError::from)
        .and_then(|run| Ok((run, interrupt::install()?)))
    {
        Ok(started) => started,
        Err(err) => {
            eprintln!("session-bench: {}", chain(err.as_ref()));
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        code = bench(&args, &connector, &run, &stop, &mut warnings) => code,
        signal = stop.second() => {
            // The unfinished run is dropped here, and with it the servers it started.
            let prefix = run.did_prefix();
            eprintln!(
                "session-bench: second {}: exiting at once; this run's sessions not yet deleted remain. Their DIDs start with {prefix}; they expire after the server's session TTL (OAUTH_SESSION_TTL, 7 days by default). With access to Valkey, valkey-cli --scan --pattern '<key prefix>did:{prefix}*' lists their DID indexes (key prefix barazo:session: by default); DeleteAllSessionsForDid for each DID deletes them.",
                signal.name()
            );
            ExitCode::from(signal.exit_code())
        }
    }
}

/// A whole run: start or reach the servers, load them, report, delete what was created.
async fn bench(
    args: &Args,
    connector: &Connector,
    run: &Run,
    stop: &Stop,
    warnings: &mut Warnings,
) -> ExitCode {
    eprintln!(
        "session-bench {}: its sessions belong to DIDs starting with {}; it deletes them when done",
        run.id(),
        run.did_prefix()
    );
    let sink = if args.compare == Some(Compare::Tracing) {
        match sink::Sink::start() {
            Ok(sink) => Some(sink),
            Err(err) => {
                eprintln!("session-bench: cannot start the OTLP receiver: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let otlp = sink.as_ref().map(|(_, endpoint)| endpoint.as_str());
    // Nothing is created until every server has been reached and checked.
    let mut targets = match prepare(args, connector, run, otlp, warnings).await {
        Ok(targets) => targets,
        Err(err) => {
            eprintln!("session-bench: {}", chain(err.as_ref()));
            return ExitCode::FAILURE;
        }
    };
    let loaded = load_all(args, &mut targets, stop).await;
    let mut code = ExitCode::SUCCESS;
    match (&loaded, stop.requested()) {
        (Err(err), _) => {
            eprintln!("session-bench: the load failed: {}", chain(err.as_ref()));
            code = ExitCode::FAILURE;
        }
        (Ok(()), None) => report(args, &targets, sink.as_ref().map(|(sink, _)| sink)),
        (Ok(()), Some(signal)) => {
            println!("interrupted by {}: no figures", signal.name());
            code = ExitCode::from(signal.exit_code());
        }
    }
    warnings.print();
    if !clean_up(args, &targets, run).await {
        code = ExitCode::FAILURE;
    }
    code
}

/// Starts the servers (or reaches `--addr`), connects, checks that each is SERVING and
/// that the tool may delete what it will create there. Creates nothing.
async fn prepare(
    args: &Args,
    connector: &Connector,
    run: &Run,
    otlp: Option<&str>,
    warnings: &mut Warnings,
) -> Result<Vec<Target>, BoxError> {
    // Each with whether its sessions outlive the run: a started server on the memory store
    // takes them with it when it stops.
    let mut servers = Vec::new();
    if let Some(addr) = &args.addr {
        servers.push((
            format!("at {addr}"),
            addr.clone(),
            None,
            connector.clone(),
            true,
        ));
    } else {
        for spec in specs(args, otlp) {
            let server = Server::start(spec.clone()).await?;
            let (addr, persistent) = (server.addr.clone(), spec.store == "valkey");
            servers.push((
                spec.label,
                addr,
                Some(server),
                Connector::plaintext(),
                persistent,
            ));
        }
    }
    let mut targets = Vec::new();
    for (index, (label, addr, server, connector, persistent)) in servers.into_iter().enumerate() {
        let health = client::health(connector.channel(&addr).await?).await?;
        let described = match server {
            Some(_) => format!("{label:?} (started by this tool)"),
            None => label.clone(),
        };
        if let Some(warning) = profile::server_warning(&described, &health.metadata) {
            warnings.add(warning);
        }
        if health.status != ServingStatus::Serving {
            return Err(format!(
                "the server {described} is not serving (health: {:?}); is its store up?",
                health.status
            )
            .into());
        }
        let mut clients = connector.clients(&addr, args.connections.max(1)).await?;
        let ledger = Arc::new(run.ledger(index));
        if persistent {
            cleanup::check_allowed(&mut clients[0], &ledger).await?;
        }
        targets.push(Target {
            label,
            server,
            clients,
            ledger,
            persistent,
            pool: None,
            rounds: Vec::new(),
            warmup_calls: 0,
            setup_calls: u64::from(persistent),
            valkey_commands: None,
            counted_calls: 0,
        });
    }
    Ok(targets)
}

/// Creates the session pools, warms up, runs the rounds. Returns early, with `Ok`, when
/// the tool is asked to stop.
async fn load_all(args: &Args, targets: &mut [Target], stop: &Stop) -> Result<(), BoxError> {
    let sessions = args.sessions.max(1);
    for target in targets.iter_mut() {
        eprintln!(
            "{}: creating {} sessions ({sessions} to validate, {sessions} to refresh)",
            target.label,
            2 * sessions
        );
        let mut client = target.clients[0].clone();
        let pool = Pool::create(&mut client, sessions, &target.ledger, stop).await?;
        target.pool = Some(Arc::new(pool));
        target.setup_calls += target.ledger.issued() as u64;
        if stop.requested().is_some() {
            return Ok(());
        }
    }
    for target in targets.iter_mut() {
        eprintln!("{}: warming up for {} s", target.label, args.warmup);
        let warmup = load::run(&target.load(args)?, Duration::from_secs(args.warmup), stop).await?;
        target.warmup_calls = warmup.calls;
        if stop.requested().is_some() {
            return Ok(());
        }
    }
    // Count Valkey's commands whenever a started server uses it.
    // (Standalone only: a cluster's commands are spread over its nodes' statistics.)
    let mut counter = if args.addr.is_none()
        && args.valkey_mode == "standalone"
        && (args.store == Store::Valkey
            || matches!(args.compare, Some(Compare::Store | Compare::Cache)))
    {
        Some(valkey_commands::CommandCounter::connect(&args.valkey_url).await?)
    } else {
        None
    };
    for round in 0..args.rounds.max(1) {
        for target in targets.iter_mut() {
            let uses_valkey = target.label.starts_with("valkey");
            let before = match (&mut counter, uses_valkey) {
                (Some(counter), true) => counter.top_level_commands().await.ok(),
                _ => None,
            };
            eprintln!(
                "round {} {}: loading for {} s",
                round + 1,
                target.label,
                args.duration
            );
            let outcome = load::run(
                &target.load(args)?,
                Duration::from_secs(args.duration),
                stop,
            )
            .await?;
            if stop.requested().is_some() {
                return Ok(());
            }
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
    Ok(())
}

/// Deletes the sessions of every server whose sessions outlive the run and prints how
/// many; when some are left, says which and how to delete them. True when none are left.
async fn clean_up(args: &Args, targets: &[Target], run: &Run) -> bool {
    let mut unfinished = Vec::new();
    // A server this tool started on the memory store takes its sessions with it.
    for target in targets.iter().filter(|t| !t.persistent) {
        let dids = target.ledger.issued();
        if dids > 0 {
            println!(
                "{}: its {dids} DIDs' sessions went with the memory store of the server this run started (nothing to delete)",
                target.label
            );
        }
    }
    for target in targets.iter().filter(|t| t.persistent) {
        let dids = target.ledger.issued();
        if dids == 0 {
            continue;
        }
        eprintln!(
            "{}: deleting this run's sessions ({dids} DIDs)",
            target.label
        );
        let cleanup = cleanup::delete_all(
            &target.clients,
            Dids::Issued(target.ledger.clone()),
            cleanup_concurrency(args),
        )
        .await;
        println!(
            "{}: removed {} sessions of this run ({} of {} DIDs done)",
            target.label,
            cleanup.removed,
            cleanup.dids - cleanup.left.len(),
            cleanup.dids
        );
        if !cleanup.left.is_empty() {
            unfinished.push(cleanup);
        }
    }
    if unfinished.is_empty() {
        return true;
    }
    // One account for the whole run: any server on the same store can finish the job.
    let mut all = Cleanup {
        removed: 0,
        dids: 0,
        left: Vec::new(),
        error: None,
    };
    for cleanup in unfinished {
        all.removed += cleanup.removed;
        all.dids += cleanup.dids;
        all.left.extend(cleanup.left);
        all.error = all.error.or(cleanup.error);
    }
    let file = cleanup::leftovers_file(run.id());
    eprintln!(
        "session-bench: {}",
        cleanup::account_of_leftovers(&all, &file, &run.did_prefix())
    );
    false
}

/// `--delete-dids`: deletes the sessions of the DIDs a failed cleanup left in a file.
async fn delete_listed(args: &Args, connector: &Connector, file: &Path) -> ExitCode {
    let dids = match cleanup::read_dids(file) {
        Ok(dids) => dids,
        Err(problem) => {
            eprintln!("session-bench: {problem}");
            return ExitCode::from(2);
        }
    };
    let Some(addr) = args.addr.as_deref() else {
        eprintln!("session-bench: --delete-dids needs --addr");
        return ExitCode::from(2);
    };
    let clients = match connector.clients(addr, args.connections.max(1)).await {
        Ok(clients) => clients,
        Err(err) => {
            eprintln!(
                "session-bench: cannot reach {addr}: {}",
                chain(err.as_ref())
            );
            return ExitCode::FAILURE;
        }
    };
    let cleanup = cleanup::delete_all(
        &clients,
        Dids::Listed(Arc::new(dids)),
        cleanup_concurrency(args),
    )
    .await;
    println!(
        "removed {} sessions of {} DIDs listed in {}",
        cleanup.removed,
        cleanup.dids - cleanup.left.len(),
        file.display()
    );
    if cleanup.left.is_empty() {
        ExitCode::SUCCESS
    } else {
        // The file is rewritten with what is still left, so the same command continues.
        eprintln!(
            "session-bench: {}",
            cleanup::account_of_leftovers(&cleanup, file, namespace::DID_PREFIX)
        );
        ExitCode::FAILURE
    }
}

/// The figures of a finished run.
fn report(args: &Args, targets: &[Target], sink: Option<&sink::Sink>) {
    let callers = args.callers();
    println!(
        "scenario {:?}, {} connections x {} callers, {} rounds of {} s",
        args.scenario, args.connections, callers, args.rounds, args.duration
    );
    println!(
        "| server | calls/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | invalid | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut throughputs = Vec::new();
    for target in targets {
        let Ok(mut latency) = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        else {
            continue;
        };
        let (mut errors, mut invalid) = (0, 0);
        for outcome in &target.rounds {
            // Histograms of the same bounds always add; a failure would only lose figures.
            let _ = latency.add(&outcome.latency);
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
    for target in targets {
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
    if let [first, ref others @ ..] = throughputs[..]
        && others.len() > 1
    {
        for (target, throughput) in targets.iter().skip(1).zip(others) {
            println!(
                "{} / {} throughput: {:.1}%",
                target.label,
                targets[0].label,
                100.0 * throughput / first
            );
        }
    }
    if let Some(sink) = sink {
        // The traced server is the second; spans still buffered in it are not counted.
        let traced_calls = targets.last().map_or(0, |t| {
            t.setup_calls + t.warmup_calls + t.rounds.iter().map(|o| o.calls).sum::<u64>()
        });
        println!(
            "export requests accepted by the OTLP receiver: {}; spans received: {} for {} calls to the traced server",
            sink.exports(),
            sink.spans(),
            traced_calls,
        );
    }
}
