//! Checks of the repository's own files against the service: the deployment files in
//! `deploy/` (variables, Kubernetes wiring, the Grafana dashboard's queries), README.md
//! (its quick start and grpcurl session run as written), the configuration tables of
//! README.md and docs/configuration.md, and the Markdown files' links. Apart
//! from the protocol tests in `tests/it`, so that either runs alone:
//! `cargo test --test docs`.

// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dashboard;
mod deploy;
mod links;
mod readme;
// The YAML shapes deploy.rs reads.
mod yaml;
// The harness of tests/it (a real server, a real Valkey, the external programs); these
// checks use only part of it.
#[allow(dead_code)]
#[path = "../it/support/mod.rs"]
mod support;
