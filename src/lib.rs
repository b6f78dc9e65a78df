//! The Barazo session authority: a gRPC `SessionService` backed by Valkey.
//!
//! # Layout
//!
//! - [`domain`]: what a session is, without I/O: the stored record and its rules (which
//!   tokens it accepts, refresh roles, rotation, tabs), credentials, lifetimes, syntax of
//!   DIDs and handles, and the view callers get.
//! - [`store`]: the [`store::SessionStore`] trait with an in-memory and a Valkey
//!   implementation (standalone and cluster), its Lua scripts and the key layout.
//! - [`cache`]: the coherent validation cache and its invalidation feed (Valkey's client
//!   tracking), which also feeds `WatchRevocations`.
//! - [`api`]: the gRPC handlers (`SessionService`, ext_authz `Check`, `WatchRevocations`,
//!   health), the one validation path, what runs around every call, and the one mapping
//!   of errors to `tonic::Status`.
//! - [`rpc`]: the one table of RPC names, limits and metric labels, which the handlers, the
//!   authorization policy, spans and metrics all read.
//! - [`authz`]: who may call what: credentials (mTLS names, service keys), the policy file,
//!   the layer that enforces it with per-caller budgets.
//! - [`transport`]: accepting and serving connections: TLS, HTTP/2, connection caps, slow
//!   handshakes, responses never taken, file descriptors.
//! - [`observe`]: metrics, logs and traces, the admin listener.
//! - [`config`]: flags and environment variables, checked all at once.
//! - [`server`]: the wiring: builds the store, the cache and the request stack, and serves
//!   until a shutdown signal; [`probe`]: `barazo-session --probe`, its client for container
//!   health checks.
//!
//! `ARCHITECTURE.md` shows how one validation and one refresh flow through these.

#![warn(missing_docs)]

pub mod api;
pub mod authz;
pub mod cache;
pub mod config;
pub mod domain;
pub mod gateway;
pub mod observe;
pub mod probe;
pub mod rpc;
pub mod server;
pub mod store;
pub mod transport;

/// Code generated from `proto/barazo/session/v1/session.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("barazo.session.v1");

    /// The encoded descriptors of the proto files, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("session_descriptor");

    /// The encoded descriptors of Envoy's `envoy.service.auth.v3.Authorization` and its
    /// imports, for reflection (the code is `envoy-types`'; see `third_party/envoy-api`).
    pub const EXT_AUTHZ_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("ext_authz_descriptor");
}
