//! The gRPC surface: the `SessionService` handlers, Envoy's ext_authz `Check`,
//! `WatchRevocations`, health; what runs around every call (deadline, span, metrics); the
//! one path that validates an access token; and the one mapping of errors to
//! `tonic::Status`.

pub(crate) mod call;
pub mod error;
pub(crate) mod ext_authz;
pub mod headers;
pub mod health;
pub(crate) mod revocations;
pub mod sessions;
pub(crate) mod undecodable;
pub mod validation;
