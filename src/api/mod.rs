//! The gRPC surface: the `SessionService` handlers, Envoy's ext_authz `Check`,
//! `WatchRevocations`, health; what runs around every call (deadline, span, metrics); the
//! RPC table; the one path that validates an access token; and the one mapping of errors to
//! `tonic::Status`.

pub mod call;
pub mod error;
pub mod ext_authz;
pub mod health;
pub mod revocations;
pub mod rpc;
pub mod sessions;
pub mod undecodable;
pub mod validation;
