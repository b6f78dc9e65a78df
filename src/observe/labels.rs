//! The label set of an event counter, shared by the injected [`super::metrics::Metrics`]
//! and the process-wide connection counts of [`crate::transport::abuse`] (which no handle
//! reaches).

use prometheus_client::encoding::EncodeLabelSet;

/// Labels of an event: a session lifecycle event (`created`, `refreshed`, `deleted`) or a
/// connection event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// What happened.
    pub event: &'static str,
}
