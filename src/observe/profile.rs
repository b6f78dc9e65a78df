//! Which build this is, debug or release, and how a debug build says so.
//!
//! A debug build is unoptimised and several times slower than a release build, and the
//! quick start's `cargo run` makes one: figures measured against it say nothing about the
//! service (a newcomer once took 3.3k validations/s on one for the service's speed). So a
//! debug build warns at startup and adds [`HEADER`]` = debug` to every gRPC response,
//! which `session-bench` looks for. A release build adds nothing: a production server
//! tells callers nothing about its build and its hot path pays nothing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tonic::codegen::{Service, http};

/// `debug` or `release`: whether this binary was built with debug assertions (Cargo's
/// `dev` profile) or without (`release`).
pub const PROFILE: &str = if cfg!(debug_assertions) {
    "debug"
} else {
    "release"
};

/// The response header a debug build adds to every response; its value is `debug`.
pub const HEADER: &str = "barazo-build-profile";

/// Logs a warning when this is a debug build, so that nobody measures or deploys it
/// unawares.
pub fn warn_if_debug() {
    if cfg!(debug_assertions) {
        tracing::warn!(
            profile = PROFILE,
            "this is a debug build: unoptimised and several times slower than a release build; do not deploy it or measure it (cargo build --release)"
        );
    }
}

/// Tower layer that adds [`HEADER`] to every response of a debug build, and does nothing
/// in a release build.
#[derive(Clone, Debug)]
pub struct ProfileLayer {
    value: Option<http::HeaderValue>,
}

impl Default for ProfileLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ProfileLayer {
    /// Announces this build's profile if it is a debug build.
    pub fn new() -> Self {
        Self::announcing(cfg!(debug_assertions))
    }

    /// Adds `HEADER: debug` when `debug` is true (separate from [`ProfileLayer::new`] so
    /// that both behaviours are tested in either profile).
    fn announcing(debug: bool) -> Self {
        Self {
            value: debug.then(|| http::HeaderValue::from_static("debug")),
        }
    }
}

impl<S> tower_layer::Layer<S> for ProfileLayer {
    type Service = Profiled<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Profiled {
            inner,
            value: self.value.clone(),
        }
    }
}

/// A service behind a [`ProfileLayer`].
#[derive(Clone, Debug)]
pub struct Profiled<S> {
    inner: S,
    value: Option<http::HeaderValue>,
}

impl<S, Req, B> Service<Req> for Profiled<S>
where
    S: Service<Req, Response = http::Response<B>>,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = ProfiledFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        ProfiledFuture {
            inner: self.inner.call(request),
            value: self.value.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future; adds the header to its response.
    pub struct ProfiledFuture<F> {
        #[pin]
        inner: F,
        value: Option<http::HeaderValue>,
    }
}

impl<F, B, E> Future for ProfiledFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(value) = this.value.take() {
            response.headers_mut().insert(HEADER, value);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_layer::Layer as _;

    /// A service answering an empty response at once.
    #[derive(Clone)]
    struct Empty;

    impl Service<()> for Empty {
        type Response = http::Response<()>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, (): ()) -> Self::Future {
            std::future::ready(Ok(http::Response::new(())))
        }
    }

    fn header_after(layer: &ProfileLayer) -> Option<String> {
        let future = layer.layer(Empty).call(());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let Poll::Ready(Ok(response)) = std::pin::pin!(future).poll(&mut cx) else {
            panic!("the inner future is ready at once");
        };
        response
            .headers()
            .get(HEADER)
            .map(|v| v.to_str().expect("ascii").to_owned())
    }

    #[test]
    fn a_debug_build_says_so_and_a_release_build_says_nothing() {
        assert_eq!(
            header_after(&ProfileLayer::announcing(true)).as_deref(),
            Some("debug")
        );
        assert_eq!(header_after(&ProfileLayer::announcing(false)), None);
        let expected = cfg!(debug_assertions).then_some("debug");
        assert_eq!(header_after(&ProfileLayer::new()).as_deref(), expected);
        assert_eq!(PROFILE == "debug", cfg!(debug_assertions));
    }
}
