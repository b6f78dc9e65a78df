//! `barazo-session`: reads the configuration, starts the server, stops on SIGTERM/SIGINT.

use barazo_session::config::{Config, LoadError};
use barazo_session::observe::telemetry;
use barazo_session::server::Application;
use std::process::ExitCode;

/// jemalloc, with a background thread that returns freed memory to the OS within seconds
/// (settings built in by `.cargo/config.toml`): after a burst of connections or a flushed
/// validation cache, RSS falls back instead of staying at its peak as with glibc's malloc.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        // --help and --version: printed by clap, exit 0.
        Err(LoadError::Display(help)) => help.exit(),
        Err(LoadError::Invalid(err)) => {
            eprintln!("barazo-session: {err}");
            return ExitCode::from(2);
        }
    };
    // Built by hand rather than with #[tokio::main], so the worker count is configurable.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads.get());
    }
    match runtime.build() {
        Ok(runtime) => runtime.block_on(serve(config)),
        Err(err) => {
            eprintln!("barazo-session: cannot start the runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    if config.probe {
        return if barazo_session::probe::ready(&config).await {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let telemetry = match telemetry::init(config.log_format) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!(
                "barazo-session: {}",
                barazo_session::api::error::chain(&err)
            );
            return ExitCode::from(2);
        }
    };
    let code = match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %barazo_session::api::error::chain(err.as_ref()), "barazo-session stopped");
            ExitCode::FAILURE
        }
    };
    // Spans still buffered are exported before the process ends.
    telemetry.shutdown();
    code
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    if config.test_clock_offset_ms != 0 {
        tracing::warn!(
            offset_ms = config.test_clock_offset_ms,
            "--test-clock-offset-ms: this process's clock is moved (tests only)"
        );
        barazo_session::domain::skew_clock_for_tests(config.test_clock_offset_ms);
    }
    // Signal handlers first, so a SIGTERM right after "listening" still drains.
    let shutdown = barazo_session::server::shutdown_signal()?;
    let app = Application::build(&config).await?;
    barazo_session::observe::profile::warn_if_debug();
    app.announce(&config);
    app.run_until(shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
