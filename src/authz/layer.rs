//! The tower layer that enforces a [`Policy`] before any gRPC service sees a request, with
//! each caller's concurrency budget.

use super::credentials::{AuthorizationHeader, caller_identities, presented_key};
use super::policy::{Denial, Policy, method_of};
use crate::observe::metrics::{Metrics, RpcLabels};
use crate::proto::session_service_server::SERVICE_NAME;
use crate::rpc::{EXT_AUTHZ_SERVICE, REFLECTION, REFLECTION_SERVICE, Rpc, metric_name};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::codegen::{Service, http};

/// Tower layer enforcing a [`Policy`] before any gRPC service sees the request; without a
/// policy it lets everything through.
#[derive(Clone)]
pub struct AuthLayer {
    policy: Option<Arc<Policy>>,
    metrics: Arc<Metrics>,
    budgets: Arc<BTreeMap<String, Arc<Semaphore>>>,
}

impl AuthLayer {
    /// Enforces `policy`, or nothing when `None`; refusals are counted in `metrics`. Each
    /// caller's calls in progress are limited by its budget ([`Policy::budgets`] of
    /// `max_concurrent_requests`).
    pub fn new(
        policy: Option<Arc<Policy>>,
        metrics: Arc<Metrics>,
        max_concurrent_requests: usize,
    ) -> Self {
        let budgets = policy
            .as_ref()
            .map(|p| p.budgets(max_concurrent_requests))
            .unwrap_or_default();
        Self {
            policy,
            metrics,
            budgets: Arc::new(budgets),
        }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorized {
            inner,
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
            budgets: self.budgets.clone(),
        }
    }
}

/// A service behind an [`AuthLayer`].
#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    policy: Option<Arc<Policy>>,
    metrics: Arc<Metrics>,
    budgets: Arc<BTreeMap<String, Arc<Semaphore>>>,
}

/// Decides one call: `Ok(None)` for calls outside the policy (health), `Ok(Some(permit))`
/// for an allowed call within its caller's budget (held until the call ends).
fn decide<B>(
    policy: &Policy,
    metrics: &Metrics,
    budgets: &BTreeMap<String, Arc<Semaphore>>,
    request: &http::Request<B>,
) -> Result<Option<OwnedSemaphorePermit>, Status> {
    let Some(method) = method_of(request.uri().path()) else {
        return Ok(None);
    };
    let identities = caller_identities(request);
    match admit(
        policy,
        budgets,
        method,
        identities,
        presented_key(request.headers()),
    ) {
        Ok((_, permit)) => Ok(permit),
        Err(denial) => {
            // Debug level: anyone who reaches the port can cause these, so they must not be
            // able to flood the log; the refusal counts are in the RPC metrics instead.
            // (Nothing secret is in a denial: the RPC and the caller's name in the policy.)
            tracing::debug!(rpc.method = method, denial = %denial, "call refused by the authorization policy");
            let status = Status::from(denial);
            let service = match Rpc::from_method(method) {
                Some(rpc) => rpc.service(),
                None if method == REFLECTION => REFLECTION_SERVICE,
                // A method neither service has, named by its path (see `method_of`).
                None if method
                    .strip_prefix('/')
                    .is_some_and(|p| p.starts_with(EXT_AUTHZ_SERVICE)) =>
                {
                    EXT_AUTHZ_SERVICE
                }
                None => SERVICE_NAME,
            };
            metrics.rpc(
                &RpcLabels::grpc(service, metric_name(method), status.code()),
                std::time::Duration::ZERO,
            );
            Err(status)
        }
    }
}

/// The policy's verdict on one call: when allowed, the caller's name and a slot of its
/// budget, if it has one (a full budget refuses at once, as the global limit does: no
/// queue).
fn admit(
    policy: &Policy,
    budgets: &BTreeMap<String, Arc<Semaphore>>,
    method: &str,
    identities: &[String],
    presented: AuthorizationHeader<'_>,
) -> Result<(String, Option<OwnedSemaphorePermit>), Denial> {
    let caller = policy.authorize(method, identities, presented)?;
    match budgets.get(&caller) {
        Some(budget) => match budget.clone().try_acquire_owned() {
            Ok(permit) => Ok((caller, Some(permit))),
            Err(_) => Err(Denial::OverBudget {
                caller,
                method: method.to_owned(),
            }),
        },
        None => Ok((caller, None)),
    }
}

/// A call let in by [`AuthLayer::admit`].
#[derive(Debug)]
pub(crate) struct Admitted {
    /// The caller's name in the policy; `None` without a policy.
    pub(crate) caller: Option<String>,
    /// A slot of the caller's budget, held until the call ends.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

impl AuthLayer {
    /// Decides a call that comes in by another door than the gRPC stack (the HTTP
    /// listener, [`crate::gateway`]) with the same policy and the same budgets: the caller
    /// presents `identities` (its certificate's) and `presented` (its service key). Allowed
    /// without a policy. The permit, if any, is held until the call ends.
    pub(crate) fn admit(
        &self,
        rpc: Rpc,
        identities: &[String],
        presented: AuthorizationHeader<'_>,
    ) -> Result<Admitted, Denial> {
        let Some(policy) = &self.policy else {
            return Ok(Admitted {
                caller: None,
                permit: None,
            });
        };
        let method = rpc.policy_right().method();
        let (caller, permit) = admit(policy, &self.budgets, method, identities, presented)?;
        Ok(Admitted {
            caller: Some(caller),
            permit,
        })
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future, or the refusal: no allocation on the allowed path.
    /// (Fields: `inner`, the service's future; `response`, the refusal until polled. The
    /// macro takes no doc comments on enum fields.)
    #[project = AuthFutureProj]
    #[allow(missing_docs)]
    pub enum AuthFuture<F> {
        /// The call was allowed; the caller's budget permit, if any, is held until it ends.
        Allowed { #[pin] inner: F, permit: Option<OwnedSemaphorePermit> },
        /// The call was refused; the response is taken once.
        Refused { response: Option<http::Response<tonic::body::Body>> },
    }
}

impl<F, E> Future for AuthFuture<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthFutureProj::Allowed { inner, permit } => {
                let polled = inner.poll(cx);
                if polled.is_ready() {
                    // The call is over: its budget slot frees at once.
                    permit.take();
                }
                polled
            }
            AuthFutureProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after completion: a caller bug; answer as tonic would.
                None => Poll::Ready(Ok(crate::rpc::polled_after_completion().into_http())),
            },
        }
    }
}

impl<S, B> Service<http::Request<B>> for Authorized<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let verdict = match &self.policy {
            Some(policy) => decide(policy, &self.metrics, &self.budgets, &request),
            None => Ok(None),
        };
        match verdict {
            Ok(permit) => AuthFuture::Allowed {
                inner: self.inner.call(request),
                permit,
            },
            Err(status) => AuthFuture::Refused {
                response: Some(status.into_http()),
            },
        }
    }
}
