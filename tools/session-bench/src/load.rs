//! The load: callers spread over connections, each issuing one RPC after another for a
//! fixed time, recording every latency.

use crate::client::Client;
use crate::interrupt::Stop;
use crate::namespace::{HANDLE, Ledger};
use crate::spawn::BoxError;
use barazo_session::proto::{
    CreateSessionRequest, RefreshSessionRequest, ValidateAccessTokenRequest,
};
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What the callers do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// ValidateAccessToken on pre-created sessions (the hot path).
    Validate,
    /// Envoy ext_authz `Check` of the same tokens, as a gateway sends it (a few request
    /// headers besides `authorization`).
    Check,
    /// CreateSession, each for a fresh DID of the tool's own.
    Create,
    /// RefreshSession on pre-created sessions.
    Refresh,
    /// 90% validate, 7% refresh, 3% create, as a forum's traffic.
    Mix,
}

/// Sessions created before a round, so validations and refreshes hit real data.
pub struct Pool {
    /// Access tokens that stay valid (never refreshed during the run).
    pub access_tokens: Vec<String>,
    /// Refresh tokens (cookies) of other sessions, which the refresh share uses. Each is
    /// replaced by the one its refresh answers with, as a browser's cookie is, so the tool
    /// works against a server with `--refresh-token-rotation on` (an old cookie past the
    /// reuse grace would revoke the session).
    pub refresh_tokens: Vec<std::sync::Mutex<String>>,
}

impl Pool {
    /// Creates `size` sessions to validate and `size` to refresh, each under a DID from
    /// `ledger`; stops early (with fewer) when the tool is asked to stop.
    pub async fn create(
        client: &mut Client,
        size: usize,
        ledger: &Ledger,
        stop: &Stop,
    ) -> Result<Self, BoxError> {
        let mut pool = Self {
            access_tokens: Vec::with_capacity(size),
            refresh_tokens: Vec::with_capacity(size),
        };
        for i in 0..size * 2 {
            if stop.requested().is_some() {
                break;
            }
            let created = client
                .create_session(CreateSessionRequest {
                    did: ledger.next(),
                    handle: HANDLE.into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if i % 2 == 0 {
                pool.access_tokens.push(created.access_token);
            } else {
                pool.refresh_tokens
                    .push(std::sync::Mutex::new(created.refresh_token));
            }
        }
        Ok(pool)
    }
}

/// Width of one timeline slot.
pub const SLOT: Duration = Duration::from_millis(250);

/// Calls that started within one [`SLOT`] of a round.
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    /// Answered OK.
    pub ok: u64,
    /// Failed with UNAVAILABLE.
    pub unavailable: u64,
    /// Failed with any other code.
    pub other: u64,
    /// The longest a failed call took, in microseconds.
    pub slowest_failure_us: u64,
}

/// What one round measured.
pub struct Outcome {
    /// Calls answered (OK or not) per second.
    pub throughput: f64,
    /// Latencies in microseconds.
    pub latency: Histogram<u64>,
    /// Calls that failed with a gRPC error.
    pub errors: u64,
    /// Validations answered `valid=false` for a token that should be valid.
    pub invalid: u64,
    /// Calls made.
    pub calls: u64,
    /// Outcomes over time, one entry per [`SLOT`].
    pub timeline: Vec<Slot>,
}

impl Outcome {
    fn empty() -> Result<Self, BoxError> {
        Ok(Self {
            throughput: 0.0,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            errors: 0,
            invalid: 0,
            calls: 0,
            timeline: Vec::new(),
        })
    }

    fn record(&mut self, offset: Duration, took: Duration, answer: &Result<bool, tonic::Status>) {
        let micros = took.as_micros() as u64;
        self.latency.saturating_record(micros);
        self.calls += 1;
        let index = (offset.as_micros() / SLOT.as_micros()) as usize;
        if self.timeline.len() <= index {
            self.timeline.resize(index + 1, Slot::default());
        }
        let slot = &mut self.timeline[index];
        match answer {
            Ok(valid) => {
                slot.ok += 1;
                if !valid {
                    self.invalid += 1;
                }
            }
            Err(status) => {
                self.errors += 1;
                if status.code() == tonic::Code::Unavailable {
                    slot.unavailable += 1;
                } else {
                    slot.other += 1;
                }
                slot.slowest_failure_us = slot.slowest_failure_us.max(micros);
            }
        }
    }

    fn merge(&mut self, other: Outcome) -> Result<(), BoxError> {
        self.latency.add(other.latency)?;
        self.errors += other.errors;
        self.invalid += other.invalid;
        self.calls += other.calls;
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), Slot::default());
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(other.timeline) {
            mine.ok += theirs.ok;
            mine.unavailable += theirs.unavailable;
            mine.other += theirs.other;
            mine.slowest_failure_us = mine.slowest_failure_us.max(theirs.slowest_failure_us);
        }
        Ok(())
    }
}

/// What the callers do, and with what.
pub struct Load<'a> {
    /// What the callers do.
    pub scenario: Scenario,
    /// The connections, shared out among the callers.
    pub clients: &'a [Client],
    /// Concurrent callers.
    pub callers: usize,
    /// The sessions to validate and refresh.
    pub pool: Arc<Pool>,
    /// Where created sessions get their DIDs.
    pub ledger: Arc<Ledger>,
}

/// Runs the load for `duration`, or until the tool is asked to stop: then the callers
/// finish their calls in flight and the outcome covers the time until then.
pub async fn run(load: &Load<'_>, duration: Duration, stop: &Stop) -> Result<Outcome, BoxError> {
    let Load {
        scenario,
        clients,
        callers,
        ..
    } = *load;
    let done = Arc::new(AtomicBool::new(false));
    let round_started = Instant::now();
    let mut tasks = Vec::with_capacity(callers);
    for caller in 0..callers {
        let mut client = clients[caller % clients.len()].clone();
        let (done, pool, ledger) = (done.clone(), load.pool.clone(), load.ledger.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Outcome::empty()?;
            let mut n = caller;
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                let answer = one_call(scenario, &mut client, &pool, &ledger, n).await;
                tally.record(started - round_started, started.elapsed(), &answer);
                n = n.wrapping_add(callers);
            }
            Ok::<_, BoxError>(tally)
        }));
    }
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        _ = stop.first() => {}
    }
    done.store(true, Ordering::Relaxed);
    let mut outcome = Outcome::empty()?;
    for task in tasks {
        outcome.merge(task.await??)?;
    }
    outcome.throughput = outcome.calls as f64 / round_started.elapsed().as_secs_f64();
    Ok(outcome)
}

/// One call of the scenario; `Ok(false)` when a validation unexpectedly says invalid.
async fn one_call(
    scenario: Scenario,
    client: &mut Client,
    pool: &Pool,
    ledger: &Ledger,
    n: usize,
) -> Result<bool, tonic::Status> {
    let kind = match scenario {
        Scenario::Mix => match n % 100 {
            0..90 => Scenario::Validate,
            90..97 => Scenario::Refresh,
            _ => Scenario::Create,
        },
        other => other,
    };
    match kind {
        Scenario::Validate => {
            let token = &pool.access_tokens[n % pool.access_tokens.len()];
            let answer = client
                .validate_access_token(ValidateAccessTokenRequest {
                    access_token: token.clone(),
                })
                .await?;
            Ok(answer.into_inner().valid)
        }
        Scenario::Check => {
            let token = &pool.access_tokens[n % pool.access_tokens.len()];
            let answer = client.authz.check(check_request(token)).await?;
            Ok(answer.into_inner().status.is_some_and(|s| s.code == 0))
        }
        Scenario::Refresh => {
            let cookie = &pool.refresh_tokens[n % pool.refresh_tokens.len()];
            let presented = lock(cookie).clone();
            let answer = client
                .refresh_session(RefreshSessionRequest {
                    refresh_token: presented.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            // Rotated: the new cookie replaces the one presented, unless another caller's
            // refresh of the same session got there first (within the grace both get the
            // same successor anyway).
            if !answer.refresh_token.is_empty() {
                let mut held = lock(cookie);
                if *held == presented {
                    *held = answer.refresh_token;
                }
            }
            Ok(true)
        }
        Scenario::Create | Scenario::Mix => {
            client
                .create_session(CreateSessionRequest {
                    did: ledger.next(),
                    handle: HANDLE.into(),
                    ..Default::default()
                })
                .await?;
            Ok(true)
        }
    }
}

/// A pool cookie's lock; a poisoned one is used as is (a caller that panicked holding it
/// left a whole token in it either way).
fn lock(cookie: &std::sync::Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    cookie
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A `CheckRequest` for `token` with the headers a browser's API call through Envoy has.
fn check_request(token: &str) -> envoy_types::ext_authz::v3::pb::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    let headers = [
        (":method", "GET".to_owned()),
        (":path", "/api/plugins/polls".to_owned()),
        (":authority", "forum.example".to_owned()),
        ("accept", "application/json".to_owned()),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/141.0".to_owned(),
        ),
        ("authorization", format!("Bearer {token}")),
    ];
    envoy_types::ext_authz::v3::pb::CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/api/plugins/polls".into(),
                    headers: headers
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}
