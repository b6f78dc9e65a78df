//! The Barazo session authority: a gRPC `SessionService` backed by Valkey.
//!
//! See `ARCHITECTURE.md` for where things live and how a request flows.

#![warn(missing_docs)]

pub mod abuse;
pub mod admin;
pub mod auth;
pub mod cache;
pub mod call;
pub mod config;
pub mod connections;
pub mod delivery;
pub mod descriptors;
pub mod error;
pub mod ext_authz;
pub mod handshake;
pub mod health;
pub mod metrics;
pub mod probe;
pub mod profile;
pub mod revocations;
pub mod rotation;
pub mod rpc;
pub mod server;
pub mod service;
pub mod session;
pub mod session_view;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod undecodable;
pub mod validation;

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
