//! What happens around every RPC (the session RPCs and ext_authz `Check`), whichever it is: load shedding, the time limit
//! (the server's cap or the caller's shorter `grpc-timeout`), the SERVER span, the duration
//! metric, and the one log line of a failed call. The handlers in [`crate::api::sessions`] only
//! do their RPC's own work.

use crate::api::error::RequestError;
use crate::observe::metrics::Metrics;
use crate::observe::telemetry;
use crate::rpc::Rpc;
use crate::transport::grpc_timeout;
use opentelemetry::context::FutureExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

/// Abuse limits of the session service.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// Calls handled at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_in_progress: usize,
    /// Longest a call may run.
    pub time_limit: Duration,
}

/// What a successful answer adds to its RPC's span when the span ends, all at once: the
/// user's DID (`user.id`) and, for validation, `session.valid`. Set in one call at the end
/// because recording attributes one by one during the call measurably cost throughput
/// (BENCHMARKS.md).
pub trait SpanFacts {
    /// The attributes to add.
    fn span_facts(&self) -> Vec<opentelemetry::KeyValue>;
}

/// The per-call machinery shared by every RPC the listener serves (one instance, so one
/// concurrency limit, for the session service and ext_authz alike).
pub struct Calls {
    metrics: Arc<Metrics>,
    /// Permits for calls in progress; none left means shed the call (RESOURCE_EXHAUSTED).
    in_progress: Semaphore,
    /// The longest a call may run (`DEADLINE_EXCEEDED` after it).
    time_limit: Duration,
}

impl Calls {
    /// At most `limits.max_in_progress` calls at once, each for at most
    /// `limits.time_limit`, counted in `metrics`.
    pub fn new(limits: CallLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            in_progress: Semaphore::new(limits.max_in_progress),
            time_limit: limits.time_limit,
        }
    }

    /// Runs `handler` as one call of `rpc` inside its SERVER span (a child of the caller's
    /// span when the request carries `traceparent`), within the concurrency limit and the
    /// time limit; logs a failure once with its cause chain, records the call's duration,
    /// and converts the result for tonic.
    pub async fn serve<T: SpanFacts>(
        &self,
        rpc: Rpc,
        metadata: &MetadataMap,
        handler: impl Future<Output = Result<T, RequestError>>,
    ) -> Result<Response<T>, Status> {
        let call = CallRecord {
            rpc,
            metrics: &self.metrics,
            started: Instant::now(),
            trace: telemetry::start_rpc_span(
                rpc.span_name(),
                rpc.service(),
                rpc.method(),
                metadata,
            ),
            finished: false,
        };
        // Load shedding: a saturated server refuses at once rather than queueing callers who
        // are waiting on a user's HTTP request; they retry elsewhere or later.
        let Ok(_permit) = self.in_progress.try_acquire() else {
            tracing::debug!(
                rpc.method = rpc.method(),
                "rpc shed: concurrency limit reached"
            );
            let refused = RequestError::Overloaded;
            call.finish(refused.code(), Vec::new);
            return Err(refused.into());
        };
        let limit = caller_timeout(metadata).map_or(self.time_limit, |t| {
            t.saturating_sub(DEADLINE_MARGIN).min(self.time_limit)
        });
        let limited = async {
            tokio::time::timeout(limit, handler)
                .await
                .unwrap_or(Err(RequestError::TimedOut))
        };
        let result = match &call.trace {
            Some(cx) => limited.with_context(cx.clone()).await,
            None => limited.await,
        };
        let code = result.as_ref().err().map_or(Code::Ok, RequestError::code);
        // The failure's log line is written inside the span, so it carries the trace ids.
        let attached = call.trace.clone().map(opentelemetry::Context::attach);
        let response = match result {
            Ok(body) => Ok(Response::new(body)),
            Err(err) => {
                if err.is_server_fault() {
                    tracing::error!(rpc.method = rpc.method(), rpc.grpc.status_code = ?code, error = %err.chain(), "rpc failed");
                } else {
                    tracing::debug!(rpc.method = rpc.method(), rpc.grpc.status_code = ?code, error = %err.chain(), "rpc refused");
                }
                Err(err.into())
            }
        };
        drop(attached);
        call.finish(code, || match &response {
            Ok(body) => body.get_ref().span_facts(),
            Err(_) => Vec::new(),
        });
        response
    }
}

impl Calls {
    /// [`Calls::serve`] for a request message: one larger than its RPC allows
    /// ([`Rpc::max_request_bytes`]; tonic's own limit is the largest of them) is refused
    /// with `OUT_OF_RANGE`, as tonic refuses one over its limit; otherwise `handler` runs
    /// with the message.
    pub async fn serve_request<M, T, F, Fut>(
        &self,
        rpc: Rpc,
        request: Request<M>,
        handler: F,
    ) -> Result<Response<T>, Status>
    where
        M: prost::Message,
        T: SpanFacts,
        F: FnOnce(M) -> Fut,
        Fut: Future<Output = Result<T, RequestError>>,
    {
        let (metadata, _, body) = request.into_parts();
        let limit = rpc.max_request_bytes();
        let handler = async move {
            if body.encoded_len() > limit {
                return Err(RequestError::TooLarge { limit });
            }
            handler(body).await
        };
        self.serve(rpc, &metadata, handler).await
    }
}

/// Whether a code means the service failed (span status error), as opposed to the caller's
/// mistake or an ordinary outcome such as an unknown session.
fn is_server_side(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::DataLoss
            | Code::Unimplemented
    )
}

/// What one call leaves behind whichever way it ends: its duration metric, the validation
/// outcome when it was a failed validation, and its span's end. Dropped before `finish`,
/// the call was cancelled (the caller went away or its deadline passed in tonic).
struct CallRecord<'a> {
    rpc: Rpc,
    metrics: &'a Metrics,
    started: Instant,
    trace: Option<opentelemetry::Context>,
    finished: bool,
}

impl CallRecord<'_> {
    fn record(&self, code: Code, facts: impl FnOnce() -> Vec<opentelemetry::KeyValue>) {
        self.metrics
            .rpc(&self.rpc.labels(code), self.started.elapsed());
        if code != Code::Ok && self.rpc.validates() {
            // No answer at all: counted apart from valid and invalid tokens.
            self.metrics.validation("error");
        }
        if let Some(cx) = &self.trace {
            telemetry::end_rpc_span(cx, code, is_server_side(code), facts());
        }
    }

    fn finish(mut self, code: Code, facts: impl FnOnce() -> Vec<opentelemetry::KeyValue>) {
        self.finished = true;
        self.record(code, facts);
    }
}

impl Drop for CallRecord<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.record(Code::Cancelled, Vec::new);
            tracing::debug!(
                rpc.method = self.rpc.method(),
                "rpc cancelled before it finished"
            );
        }
    }
}

/// How much earlier than the caller's own deadline the service gives up, so that it (and
/// not tonic's timer for the same deadline) answers, with DEADLINE_EXCEEDED.
const DEADLINE_MARGIN: Duration = Duration::from_millis(2);

/// The caller's `grpc-timeout`, if it sent one.
fn caller_timeout(metadata: &MetadataMap) -> Option<Duration> {
    grpc_timeout::parse(metadata.get("grpc-timeout")?.to_str().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer with nothing to add to its span.
    #[derive(Debug)]
    struct Done;

    impl SpanFacts for Done {
        fn span_facts(&self) -> Vec<opentelemetry::KeyValue> {
            Vec::new()
        }
    }

    fn calls(max_in_progress: usize, time_limit: Duration) -> (Calls, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let limits = CallLimits {
            max_in_progress,
            time_limit,
        };
        (Calls::new(limits, metrics.clone()), metrics)
    }

    /// The count of calls of `rpc` that ended with `code`, from the exposition.
    fn count(metrics: &Metrics, rpc: Rpc, code: Code) -> u64 {
        let prefix = format!(
            "rpc_server_call_duration_seconds_count{{rpc_system=\"grpc\",rpc_service=\"{}\",rpc_method=\"{}\",rpc_grpc_status_code=\"{}\"}} ",
            rpc.service(),
            rpc.method(),
            code as i32
        );
        metrics
            .encode()
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map_or(0, |n| n.parse().expect("a count"))
    }

    #[tokio::test]
    async fn a_full_server_sheds_at_once_and_counts_it() {
        let (calls, metrics) = calls(1, Duration::from_secs(5));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
        let metadata = MetadataMap::new();
        let holder = calls.serve(Rpc::CreateSession, &metadata, async {
            let _ = entered_tx.send(());
            let _ = released.await;
            Ok(Done)
        });
        let shed = async {
            // Only once the first call holds the one permit.
            entered.await.expect("the first call runs");
            let status = calls
                .serve(Rpc::ValidateAccessToken, &metadata, async { Ok(Done) })
                .await
                .expect_err("no permit left");
            let _ = release.send(());
            status
        };
        let (held, status) = tokio::join!(holder, shed);
        assert!(held.is_ok());
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(count(&metrics, Rpc::CreateSession, Code::Ok), 1);
        assert_eq!(
            count(&metrics, Rpc::ValidateAccessToken, Code::ResourceExhausted),
            1
        );
        assert!(
            metrics
                .encode()
                .contains("barazo_session_validations_total{outcome=\"error\"} 1"),
            "a shed validation has no answer"
        );
        // The permit is back: the next call runs.
        let again = calls
            .serve(Rpc::ValidateAccessToken, &metadata, async { Ok(Done) })
            .await;
        assert!(again.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_shorter_deadline_wins_over_the_servers() {
        let (calls, metrics) = calls(4, Duration::from_secs(5));
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "100m".parse().expect("ascii"));
        let started = tokio::time::Instant::now();
        let status = calls
            .serve(Rpc::RefreshSession, &metadata, std::future::pending())
            .await
            .map(|_: Response<Done>| ())
            .expect_err("never answers");
        assert_eq!(status.code(), Code::DeadlineExceeded);
        // Paused time: exactly the caller's deadline less the margin, not the server's 5 s.
        assert_eq!(started.elapsed(), Duration::from_millis(98));
        assert_eq!(
            count(&metrics, Rpc::RefreshSession, Code::DeadlineExceeded),
            1
        );
    }

    #[tokio::test]
    async fn a_dropped_call_counts_as_cancelled() {
        let (calls, metrics) = calls(4, Duration::from_secs(5));
        let metadata = MetadataMap::new();
        let call = calls.serve(Rpc::DeleteSession, &metadata, async {
            std::future::pending::<Result<Done, RequestError>>().await
        });
        // Polled once (the record exists), then dropped as tonic drops a call whose caller
        // went away.
        let mut call = Box::pin(call);
        assert!(futures_poll_once(call.as_mut()).await.is_none());
        drop(call);
        assert_eq!(count(&metrics, Rpc::DeleteSession, Code::Cancelled), 1);
    }

    /// Polls `future` once; its output if it was ready.
    async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
                std::task::Poll::Ready(out) => Some(out),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
