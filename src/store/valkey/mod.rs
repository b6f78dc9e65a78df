//! The Valkey store, in two topologies over one key layout (the TypeScript AppView's):
//!
//! - [`standalone`]: one primary; every operation is one atomic Lua script (`EVALSHA`),
//!   one round trip.
//! - [`cluster`]: Valkey Cluster; a session's keys live in different slots, so each
//!   operation is a sequence of single-key commands (and single-key scripts) in an order
//!   that no interleaving or cancellation can turn into a lost or unrevocable session.
//!
//! Shared here: the connection options, the mapping of client errors to [`StoreError`],
//! the parsing of stored records, and the instrumentation of each round trip (the
//! `/metrics` histogram and the CLIENT span), so both topologies report alike.

pub mod args;
pub mod cluster;
pub(crate) mod identity;
mod link;
pub mod standalone;

pub use cluster::ValkeyClusterStore;
pub use standalone::ValkeyStore;

use super::StoreError;
use crate::domain::{SessionRecord, log_prefix, sha256_hex};
use crate::observe::metrics::Metrics;
use crate::observe::telemetry;
use opentelemetry::KeyValue;
use redis::{ErrorKind, RedisError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How to reach Valkey and how long to wait for it.
#[derive(Clone)]
pub struct ValkeyOptions {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS: one URL in
    /// standalone mode, the seed nodes in cluster mode. May hold a password, so never
    /// logged.
    pub urls: Vec<String>,
    /// A password for when the URL has none (from `VALKEY_PASSWORD_FILE`).
    pub password: Option<String>,
    /// PEM CA bundle that Valkey's TLS certificate must chain to (`rediss://` only).
    pub ca_pem: Option<Vec<u8>>,
    /// Namespace of this service's keys, e.g. `barazo:session:`.
    pub key_prefix: String,
    /// Upper bound for establishing a connection.
    pub connect_timeout: Duration,
    /// Upper bound for one command's answer.
    pub command_timeout: Duration,
}

impl std::fmt::Debug for ValkeyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValkeyOptions")
            .field("urls", &"[redacted]")
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

/// A client for the Valkey of `options` (its password and CA applied) speaking `protocol`,
/// at its first URL or, with `at`, at that host and port with the URL's credentials and
/// TLS (a node of the cluster, as `CLUSTER SHARDS` names it).
pub(crate) fn client_at(
    options: &ValkeyOptions,
    protocol: redis::ProtocolVersion,
    at: Option<(&str, u16)>,
) -> Result<redis::Client, RedisError> {
    use redis::{ConnectionAddr, IntoConnectionInfo};
    let url = options.urls.first().map_or("", String::as_str);
    let mut info = url.into_connection_info()?;
    let mut settings = info.redis_settings().clone().set_protocol(protocol);
    if let Some(password) = &options.password
        && settings.password().is_none()
    {
        settings = settings.set_password(password);
    }
    info = info.set_redis_settings(settings);
    if let Some((host, port)) = at {
        let host = host.to_owned();
        let addr = match info.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        info = info.set_addr(addr);
    }
    match &options.ca_pem {
        Some(ca) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        ),
        None => redis::Client::open(info),
    }
}

/// Classifies a client error: an answer of the wrong shape is our bug (or a foreign
/// writer's), everything else means Valkey could not serve the call. The one mapping for
/// both topologies.
pub(crate) fn store_error(err: RedisError) -> StoreError {
    match err.kind() {
        // `Parse` is left out: redis-rs also reports a broken wire stream that way, an outage.
        ErrorKind::UnexpectedReturnType => StoreError::Protocol(err.to_string()),
        _ => StoreError::unavailable(err),
    }
}

/// The scripts' shared prelude (`scripts/session_json.lua`), prepended to every script that
/// reads or writes a session (all but `validate.lua`, `cluster_read.lua` and
/// `cluster_index.lua`, which return what they find or only touch an index): each session
/// rule once, as one Lua function every script calls, beside its Rust twin (each names the
/// other). Public so that tests can run the rules themselves (`tests/it/parity.rs`).
pub const PRELUDE: &str = include_str!("scripts/session_json.lua");

/// 2^53, above every time a stored record may hold: below it a double (JavaScript's
/// number, with which the TypeScript AppView writes sessions, and Lua's) holds every
/// integer, so the scripts carry such a time unchanged. A time outside `0..MAX_EPOCH_MS`
/// makes a record corrupt, in both languages (the prelude's `epoch_ms_value`).
pub const MAX_EPOCH_MS: i64 = 1 << 53;

/// Every time a record holds (epoch ms).
fn times_of(record: &SessionRecord) -> impl Iterator<Item = i64> + '_ {
    [record.access_token_expires_at, record.created_at]
        .into_iter()
        .chain(record.refreshed_at)
        .chain(record.rotated_at)
        .chain(record.access_tokens.iter().map(|t| t.expires_at))
        .chain(record.earlier_rotations.iter().map(|r| r.rotated_at))
}

/// Parses a stored session read under `sid`, as raw bytes: bytes that are not UTF-8,
/// corrupt JSON, JSON that is not a [`SessionRecord`] ([`SessionRecord::from_json`]), a
/// time outside `0..`[`MAX_EPOCH_MS`], or JSON naming another sid are
/// [`StoreError::CorruptSession`] (fail closed). Read as bytes because redis-rs's own
/// `String` conversion reports bad UTF-8 as a client error, which would read as an outage.
/// The rules of the prelude's `record_readable`, with which every script reads a record
/// before acting on it.
pub fn parse_record(sid: &str, raw: &[u8]) -> Result<SessionRecord, StoreError> {
    let corrupt = |reason: String| StoreError::CorruptSession {
        key_prefix: log_prefix(&sha256_hex(sid)).to_owned(),
        reason,
    };
    let json = std::str::from_utf8(raw).map_err(|e| {
        corrupt(format!(
            "not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    // Not the parser's message: it quotes the offending value, which may be a credential.
    let record = SessionRecord::from_json(json).map_err(|e| {
        corrupt(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    if !times_of(&record).all(|t| (0..MAX_EPOCH_MS).contains(&t)) {
        return Err(corrupt(
            "a time is not epoch milliseconds from 0 to 2^53".to_owned(),
        ));
    }
    if record.sid != sid {
        return Err(corrupt("its sid field does not match its key".to_owned()));
    }
    Ok(record)
}

/// The records among `found` (a DID index's members and their data) that parse and belong to `did`;
/// an unreadable or foreign one is left out of a listing, never an error.
pub(crate) fn readable_of_did(did: &str, found: &[(String, Vec<u8>)]) -> Vec<SessionRecord> {
    found
        .iter()
        .filter_map(|(sid, json)| parse_record(sid, json).ok())
        .filter(|record| record.did == did)
        .collect()
}

/// Valkey's `TIME` (seconds and microseconds, as strings) in epoch milliseconds.
pub(crate) fn time_ms(seconds: &str, micros: &str) -> Result<i64, StoreError> {
    let parse = |text: &str| text.parse::<i64>().ok();
    match (parse(seconds), parse(micros)) {
        (Some(s), Some(us)) => Ok(s.saturating_mul(1000).saturating_add(us / 1000)),
        _ => Err(StoreError::Protocol(
            "TIME answered something other than integers".into(),
        )),
    }
}

/// A key's remaining life from `PTTL`: `None` when it has no expiry (-1; -2, a key
/// already gone, cannot come back from a script that just read it, and reads as 0).
pub(crate) fn ttl_ms(pttl: i64) -> Option<i64> {
    (pttl != -1).then_some(pttl.max(0))
}

/// A duration in whole milliseconds, as `PX` and `PEXPIRE` take it.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Where a round trip goes, for the `server.address` / `server.port` span attributes
/// (shared, so a span takes a reference count rather than a copy).
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub address: opentelemetry::StringValue,
    pub port: u16,
}

impl Endpoint {
    /// The peer of a connection address.
    pub fn of(addr: &redis::ConnectionAddr) -> Self {
        match addr {
            redis::ConnectionAddr::Tcp(host, port)
            | redis::ConnectionAddr::TcpTls { host, port, .. } => Self {
                address: Arc::<str>::from(host.as_str()).into(),
                port: *port,
            },
            // A Unix socket or a future address kind: name it, without a port.
            other => Self {
                address: Arc::<str>::from(other.to_string()).into(),
                port: 0,
            },
        }
    }
}

/// What one round trip is, for its metric label and CLIENT span.
pub(crate) struct Operation {
    /// The span's name, e.g. `EVALSHA validate` or `GET`.
    pub span_name: &'static str,
    /// `db.operation.name`, e.g. `EVALSHA` or `SET`.
    pub command: &'static str,
    /// The script's name in standalone mode (`db.stored_procedure.name`, and the metric's
    /// operation label); `None` for a plain command, labelled by the command.
    pub script: Option<&'static str>,
}

/// Runs one round trip inside its CLIENT span (when the call is traced) and the
/// `barazo_session_valkey_round_trip_duration_seconds` histogram: the one place both
/// topologies measure Valkey.
pub(crate) async fn observe<T, F>(
    metrics: &Metrics,
    operation: &Operation,
    peer: Option<&Endpoint>,
    round_trip: F,
) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, RedisError>>,
{
    let span = telemetry::start_client_span(operation.span_name, || {
        let mut attributes = vec![
            KeyValue::new("db.system.name", "valkey"),
            KeyValue::new("db.operation.name", operation.command),
        ];
        if let Some(script) = operation.script {
            attributes.push(KeyValue::new("db.stored_procedure.name", script));
        }
        if let Some(peer) = peer {
            attributes.push(KeyValue::new("server.address", peer.address.clone()));
            attributes.push(KeyValue::new("server.port", i64::from(peer.port)));
        }
        attributes
    });
    let timer = metrics.round_trip(operation.script.unwrap_or(operation.command));
    let answer = round_trip.await;
    if let Some(cx) = &span {
        telemetry::end_client_span(cx, answer.is_ok());
    }
    let answer = answer.map_err(store_error)?;
    timer.succeeded();
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_are_not_utf8_are_a_corrupt_session_not_an_outage() {
        let err = parse_record("sid", b"{\"sid\":\"\xff\"}").expect_err("corrupt");
        assert!(
            matches!(&err, StoreError::CorruptSession { reason, .. } if reason.contains("UTF-8")),
            "{err:?}"
        );
    }

    #[test]
    fn times_outside_what_a_double_holds_are_a_corrupt_session() {
        let record = |created_at: &str| {
            format!(
                r#"{{"sid":"s","did":"d","handle":"h","accessTokenHash":"x","accessTokenExpiresAt":1,"createdAt":{created_at}}}"#
            )
        };
        for fine in ["0", "1764357100000", "9007199254740991"] {
            assert!(parse_record("s", record(fine).as_bytes()).is_ok(), "{fine}");
        }
        // serde reads every one of these as an i64; a double (JavaScript's, Lua's) does not
        // hold the large ones, and no writer stamps a time before 1970.
        for out in ["-1", "9007199254740992", "9223372036854775807"] {
            let err = parse_record("s", record(out).as_bytes()).expect_err(out);
            assert!(
                matches!(&err, StoreError::CorruptSession { reason, .. } if reason.contains("2^53")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn valkey_time_reads_as_epoch_milliseconds() {
        assert_eq!(
            time_ms("1700000000", "123456").ok(),
            Some(1_700_000_000_123)
        );
        assert!(time_ms("x", "1").is_err());
    }

    #[test]
    fn a_wrong_shape_is_a_protocol_error_everywhere_else_unavailable() {
        let wrong = RedisError::from((ErrorKind::UnexpectedReturnType, "shape"));
        assert!(matches!(store_error(wrong), StoreError::Protocol(_)));
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(store_error(refused), StoreError::Unavailable(_)));
    }
}
