//! What operators see: Prometheus metrics, logs and traces, the admin HTTP listener
//! (`/metrics`, `/livez`, `/readyz`), the `--probe` client, and which build this is.

pub(crate) mod admin;
pub(crate) mod labels;
pub mod metrics;
pub mod probe;
pub mod profile;
pub mod telemetry;
