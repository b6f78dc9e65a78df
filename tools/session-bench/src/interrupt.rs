//! Ctrl-C (SIGINT) and SIGTERM. The first stops the load, so that the tool deletes the
//! sessions it created before it exits; the second means "now": the tool exits at once.

use tokio::sync::watch;

/// A signal that asks the tool to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT, Ctrl-C.
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Signal {
    /// `SIGINT` or `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }

    /// The exit code of a process stopped by this signal, by shell convention (128 + its
    /// number), so that scripts can tell an interrupted run from a finished one.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }
}

/// Whether the tool has been asked to stop, once or twice.
#[derive(Clone)]
pub struct Stop {
    first: watch::Receiver<Option<Signal>>,
    second: watch::Receiver<Option<Signal>>,
}

impl Stop {
    /// The first signal, if one has arrived.
    pub fn requested(&self) -> Option<Signal> {
        *self.first.borrow()
    }

    /// Resolves when the first signal arrives (at once if it has).
    pub async fn first(&self) -> Signal {
        wait(self.first.clone()).await
    }

    /// Resolves when a second signal arrives.
    pub async fn second(&self) -> Signal {
        wait(self.second.clone()).await
    }
}

async fn wait(mut receiver: watch::Receiver<Option<Signal>>) -> Signal {
    match receiver.wait_for(Option::is_some).await {
        Ok(signal) => signal.unwrap_or(Signal::Interrupt),
        // The listener is gone without sending: no signal will come.
        Err(_) => std::future::pending().await,
    }
}

/// Listens for SIGINT and SIGTERM from now on, instead of letting the first one kill the
/// process.
#[cfg(unix)]
pub fn install() -> std::io::Result<Stop> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (first_tx, first) = watch::channel(None);
    let (second_tx, second) = watch::channel(None);
    tokio::spawn(async move {
        let mut next = async || {
            tokio::select! {
                _ = interrupt.recv() => Signal::Interrupt,
                _ = terminate.recv() => Signal::Terminate,
            }
        };
        let signal = next().await;
        eprintln!(
            "session-bench: {}: stopping the load, then deleting this run's sessions (a second Ctrl-C exits at once)",
            signal.name()
        );
        first_tx.send_replace(Some(signal));
        let signal = next().await;
        second_tx.send_replace(Some(signal));
    });
    Ok(Stop { first, second })
}

/// Listens for Ctrl-C (platforms without Unix signals).
#[cfg(not(unix))]
pub fn install() -> std::io::Result<Stop> {
    let (first_tx, first) = watch::channel(None);
    let (second_tx, second) = watch::channel(None);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!(
            "session-bench: Ctrl-C: stopping the load, then deleting this run's sessions (a second Ctrl-C exits at once)"
        );
        first_tx.send_replace(Some(Signal::Interrupt));
        let _ = tokio::signal::ctrl_c().await;
        second_tx.send_replace(Some(Signal::Interrupt));
    });
    Ok(Stop { first, second })
}
