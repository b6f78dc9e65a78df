//! The Valkey store: the key layout shared with the TypeScript AppView, one `EVALSHA` per
//! operation.
//!
//! Connection: redis-rs's [`ConnectionManager`], one multiplexed connection that pipelines
//! every concurrent call and reconnects by itself. Unlike a deadpool-redis pool it sends no
//! health-check `PING` per checkout, so each RPC is exactly one round trip. It is created
//! lazily, so the service starts while Valkey is down and recovers when it returns.

use super::{KeyLayout, Lifetimes, PRUNE_SAMPLE, SessionStore, StoreError};
use crate::metrics::Metrics;
use crate::session::{SessionRecord, log_prefix, sha256_hex};
use crate::telemetry;
use opentelemetry::KeyValue;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError, Script};
use std::sync::Arc;
use std::time::Duration;

/// How to reach Valkey and how long to wait for it.
#[derive(Clone)]
pub struct ValkeyOptions {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS; may hold a
    /// password, so never logged.
    pub url: String,
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
            .field("url", &"[redacted]")
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

/// One Lua script, hashed once at startup, with the names its client spans carry.
/// `Script::invoke_async` sends `EVALSHA` and, on `NOSCRIPT` (a restarted or flushed Valkey),
/// loads the script and retries once.
struct LuaScript {
    script: Script,
    /// The script's name, e.g. `validate` (span attribute `db.stored_procedure.name`).
    name: &'static str,
    /// The client span's name, e.g. `EVALSHA validate`.
    span_name: &'static str,
}

macro_rules! lua_script {
    ($name:literal) => {
        LuaScript {
            script: Script::new(include_str!(concat!("scripts/", $name, ".lua"))),
            name: $name,
            span_name: concat!("EVALSHA ", $name),
        }
    };
}

/// The scripts, one per store operation.
struct Scripts {
    validate: LuaScript,
    create: LuaScript,
    refresh: LuaScript,
    delete: LuaScript,
    delete_all: LuaScript,
}

impl Scripts {
    fn new() -> Self {
        Self {
            validate: lua_script!("validate"),
            create: lua_script!("create"),
            refresh: lua_script!("refresh"),
            delete: lua_script!("delete"),
            delete_all: lua_script!("delete_all"),
        }
    }
}

/// Where Valkey is, for the `server.address` / `server.port` span attributes (shared, so a
/// span takes a reference count rather than a copy).
struct Peer {
    address: opentelemetry::StringValue,
    port: u16,
}

/// Session storage in Valkey (or Redis), see the module docs of [`crate::store`].
pub struct ValkeyStore {
    conn: ConnectionManager,
    metrics: Arc<Metrics>,
    peer: Peer,
    scripts: Scripts,
    keys: KeyLayout,
}

impl ValkeyStore {
    /// Prepares a store without connecting; fails only on an unusable URL.
    ///
    /// Must run inside a Tokio runtime (the connection manager spawns its reconnect task).
    pub fn new(options: &ValkeyOptions, metrics: Arc<Metrics>) -> Result<Self, RedisError> {
        let mut info = options.url.as_str().into_connection_info()?;
        if let Some(password) = &options.password
            && info.redis_settings().password().is_none()
        {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = match &options.ca_pem {
            Some(ca) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            )?,
            None => redis::Client::open(info)?,
        };
        let peer = match client.get_connection_info().addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => Peer {
                address: Arc::<str>::from(host.as_str()).into(),
                port: *port,
            },
            // A Unix socket or a future address kind: name it, without a port.
            other => Peer {
                address: Arc::<str>::from(other.to_string()).into(),
                port: 0,
            },
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.command_timeout))
            // No retry loop inside a call: a caller waits at most one connect timeout, and the
            // next call (or the health check) starts a fresh attempt.
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            metrics,
            peer,
            scripts: Scripts::new(),
            keys: KeyLayout::new(&options.key_prefix),
        })
    }

    /// The CLIENT span of one round trip, after the OpenTelemetry database conventions.
    fn span(&self, script: &LuaScript) -> Option<opentelemetry::Context> {
        telemetry::start_client_span(script.span_name, || {
            vec![
                KeyValue::new("db.system.name", "valkey"),
                KeyValue::new("db.operation.name", "EVALSHA"),
                KeyValue::new("db.stored_procedure.name", script.name),
                KeyValue::new("server.address", self.peer.address.clone()),
                KeyValue::new("server.port", i64::from(self.peer.port)),
            ]
        })
    }

    /// Runs one script invocation as one traced, measured round trip.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &LuaScript,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        let span = self.span(script);
        let round_trip = self.metrics.round_trip(script.name);
        let answer = invocation.invoke_async(&mut conn).await;
        if let Some(cx) = &span {
            telemetry::end_client_span(cx, answer.is_ok());
        }
        let answer = answer.map_err(store_error)?;
        round_trip.succeeded();
        Ok(answer)
    }
}

/// Classifies a client error: an answer of the wrong shape is our bug (or a foreign
/// writer's), everything else means Valkey could not serve the call.
fn store_error(err: RedisError) -> StoreError {
    match err.kind() {
        // `Parse` is left out: redis-rs also reports a broken wire stream that way, an outage.
        ErrorKind::UnexpectedReturnType => StoreError::Protocol(err.to_string()),
        _ => StoreError::Unavailable(err),
    }
}

/// Parses a stored session read under `sid`: corrupt JSON, or JSON naming another sid, is
/// [`StoreError::CorruptSession`] (fail closed). Shared with the cluster store.
pub(super) fn parse_record(sid: &str, json: &str) -> Result<SessionRecord, StoreError> {
    let corrupt = |reason: String| StoreError::CorruptSession {
        key_prefix: log_prefix(&sha256_hex(sid)).to_owned(),
        reason,
    };
    // Not the parser's message: it quotes the offending value, which may be a credential.
    let record = SessionRecord::from_json(json).map_err(|e| {
        corrupt(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    if record.sid != sid {
        return Err(corrupt("its sid field does not match its key".to_owned()));
    }
    Ok(record)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl SessionStore for ValkeyStore {
    async fn create(&self, record: &SessionRecord, lifetimes: Lifetimes) -> Result<(), StoreError> {
        let script = &self.scripts.create;
        let mut invocation = script.script.prepare_invoke();
        invocation
            .key(self.keys.data(&record.sid))
            .key(self.keys.access(&record.access_token_hash))
            .key(self.keys.did(&record.did))
            .arg(record.to_json())
            .arg(&record.sid)
            .arg(millis(lifetimes.session))
            .arg(millis(lifetimes.access_token))
            .arg(self.keys.data_prefix())
            .arg(PRUNE_SAMPLE);
        let _: i64 = self.invoke(script, &invocation).await?;
        Ok(())
    }

    async fn find_by_access_hash(
        &self,
        access_hash: &str,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let script = &self.scripts.validate;
        let mut invocation = script.script.prepare_invoke();
        invocation
            .key(self.keys.access(access_hash))
            .arg(self.keys.data_prefix());
        let found: Option<(String, String)> = self.invoke(script, &invocation).await?;
        found
            .map(|(sid, json)| parse_record(&sid, &json))
            .transpose()
    }

    async fn refresh(
        &self,
        sid: &str,
        new_access_hash: &str,
        access_expires_at_ms: i64,
        lifetimes: Lifetimes,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let script = &self.scripts.refresh;
        let mut invocation = script.script.prepare_invoke();
        invocation
            .key(self.keys.data(sid))
            .key(self.keys.access(new_access_hash))
            .arg(self.keys.prefix())
            .arg(sid)
            .arg(new_access_hash)
            .arg(access_expires_at_ms)
            .arg(millis(lifetimes.session))
            .arg(millis(lifetimes.access_token));
        let outcome: Option<(String, String)> = self.invoke(script, &invocation).await?;
        match outcome {
            None => Ok(None),
            Some((status, json)) if status == "ok" => parse_record(sid, &json).map(Some),
            Some((status, reason)) if status == "corrupt" => Err(StoreError::CorruptSession {
                key_prefix: log_prefix(&sha256_hex(sid)).to_owned(),
                reason,
            }),
            Some((status, _)) => Err(StoreError::Protocol(format!(
                "refresh script returned status {status:?}"
            ))),
        }
    }

    async fn delete(&self, sid: &str) -> Result<bool, StoreError> {
        let script = &self.scripts.delete;
        let mut invocation = script.script.prepare_invoke();
        invocation
            .key(self.keys.data(sid))
            .arg(self.keys.prefix())
            .arg(sid);
        let existed: i64 = self.invoke(script, &invocation).await?;
        Ok(existed == 1)
    }

    async fn delete_all_for_did(&self, did: &str) -> Result<u32, StoreError> {
        let script = &self.scripts.delete_all;
        let mut invocation = script.script.prepare_invoke();
        invocation.key(self.keys.did(did)).arg(self.keys.prefix());
        self.invoke(script, &invocation).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // The validate script on a key that cannot exist, rather than PING: it proves that
        // this Valkey user may run scripts (ACLs), and after a Valkey restart it reloads the
        // script before a caller's request needs it. Not traced: it is no caller's work.
        let mut conn = self.conn.clone();
        let _: Option<(String, String)> = self
            .scripts
            .validate
            .script
            .key(self.keys.health_probe())
            .arg(self.keys.data_prefix())
            .invoke_async(&mut conn)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}
