//! Integration tests: the real server on `127.0.0.1:0`, a real `valkey-server` per test,
//! and the generated client, the way callers use the service. One binary so the crate
//! links once. The checks of the deployment files and the README are in `tests/docs`.

// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// One test per store for each listed `async fn(Backend)`, named `<fn>::memory`,
/// `<fn>::valkey` and `<fn>::cluster`; `store_tests!(<fn> on valkey, cluster)` runs it on
/// the stores named only.
macro_rules! store_tests {
    ($($test:ident),+ $(,)?) => {
        $(store_tests!($test on memory, valkey, cluster);)+
    };
    ($test:ident on $($store:ident),+) => {
        mod $test {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $store() {
                    super::$test(store_tests!(@backend $store)).await;
                }
            )+
        }
    };
    (@backend memory) => {
        crate::support::Backend::Memory
    };
    (@backend valkey) => {
        crate::support::Backend::Valkey
    };
    (@backend cluster) => {
        crate::support::Backend::Cluster
    };
}

mod behaviour;
mod bench_tool;
mod cache;
mod cli;
mod cluster;
mod cluster_cache;
mod cluster_changes;
mod cluster_topology;
mod durability;
mod ext_authz;
mod failover;
mod faults;
mod forward_auth;
mod gateways;
mod grpcurl;
mod hostile;
mod interleavings;
mod metrics;
mod outage;
mod parity;
mod revocations;
mod security;
mod shutdown;
mod storage;
mod support;
mod traces;
