//! What operators see: Prometheus metrics, logs and traces, the admin HTTP listener
//! (`/metrics`, `/livez`, `/readyz`), and which build this is.

pub(crate) mod admin;
pub mod metrics;
pub mod profile;
pub mod telemetry;
