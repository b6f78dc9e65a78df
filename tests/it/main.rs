//! Integration tests: the real server on `127.0.0.1:0`, a real `valkey-server` per test,
//! and the generated client, the way callers use the service. One binary so the crate
//! links once.

// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod behaviour;
#[cfg(feature = "bench-tool")]
mod bench_tool;
mod cache;
mod cli;
mod cluster;
mod dashboard;
mod deploy;
mod durability;
mod ext_authz;
mod failover;
mod faults;
mod grpcurl;
mod hostile;
mod interleavings;
mod metrics;
mod outage;
mod parity;
mod readme;
mod revocations;
mod security;
mod shutdown;
mod storage;
mod support;
mod traces;
