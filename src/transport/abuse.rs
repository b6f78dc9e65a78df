//! Connection-level abuse, counted instead of logged: anyone who reaches the port can cause
//! these events, so a log line each would let them flood the log (an HTTP/2 rapid-reset
//! flood made h2 write one warning per connection, 28,706 lines in 20 s). They are counted
//! in `barazo_session_connection_events_total{event}` and kept out of the log at the
//! default level; `RUST_LOG=h2=warn` (or `hyper=…`) shows the HTTP/2 layer's own lines again.
//!
//! The counters are process-wide: h2 reports a reset flood only as a log event, which the
//! [`Http2Events`] tracing layer turns into a count, with no handle on a [`crate::observe::metrics::Metrics`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::LazyLock;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::Context;

/// A connection-level event worth counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// A connection closed for not finishing its handshake in time.
    HandshakeTimeout,
    /// An HTTP/2 connection closed for resetting too many streams (rapid reset).
    ResetFlood,
    /// Another HTTP/2 protocol violation the HTTP/2 layer warned about.
    ProtocolError,
    /// A failed accept (e.g. out of file descriptors): a connection refused.
    AcceptFailed,
    /// A connection closed (GOAWAY) for having no open stream for the idle timeout.
    IdleClose,
    /// A stream reset because its response waited on the client's flow control past the
    /// call's time limit (a client that does not read its answers).
    SendTimeout,
}

impl ConnectionEvent {
    /// The `event` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::HandshakeTimeout => "handshake_timeout",
            Self::ResetFlood => "reset_flood",
            Self::ProtocolError => "protocol_error",
            Self::AcceptFailed => "accept_failed",
            Self::IdleClose => "idle_close",
            Self::SendTimeout => "send_timeout",
        }
    }
}

/// The label set of a connection event count (`event`: what happened).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionEventLabels {
    /// What happened, [`ConnectionEvent::label`].
    pub event: &'static str,
}

/// The process-wide counts, registered by [`crate::observe::metrics::Metrics::new`].
pub static CONNECTION_EVENTS: LazyLock<Family<ConnectionEventLabels, Counter>> =
    LazyLock::new(Family::default);

/// Counts one event.
pub fn record(event: ConnectionEvent) {
    CONNECTION_EVENTS
        .get_or_create(&ConnectionEventLabels {
            event: event.label(),
        })
        .inc();
}

/// Whether `metadata` is a warning of the HTTP/2 layer (h2, or hyper's HTTP/2 server).
pub fn is_http2_warning(metadata: &Metadata<'_>) -> bool {
    *metadata.level() == Level::WARN
        && (metadata.target().starts_with("h2") || metadata.target().starts_with("hyper"))
}

/// Tracing layer that counts the HTTP/2 layer's warnings (install it with a filter that
/// lets them through, whatever the log filter says).
pub struct Http2Events;

/// The `message` of an event.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Http2Events {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if !is_http2_warning(event.metadata()) {
            return;
        }
        let mut message = Message::default();
        event.record(&mut message);
        record(classify(&message.0));
    }
}

/// Which event an HTTP/2 warning reports.
fn classify(message: &str) -> ConnectionEvent {
    if message.contains("reset") && message.contains("reached limit") {
        ConnectionEvent::ResetFlood
    } else {
        ConnectionEvent::ProtocolError
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2s_warnings_are_classified() {
        assert_eq!(
            classify("recv_reset; remotely-reset pending-accept streams reached limit (20)"),
            ConnectionEvent::ResetFlood
        );
        assert_eq!(
            classify("locally-reset streams reached limit (1024)"),
            ConnectionEvent::ResetFlood
        );
        assert_eq!(
            classify("recv PING ack that we never sent"),
            ConnectionEvent::ProtocolError
        );
    }
}
