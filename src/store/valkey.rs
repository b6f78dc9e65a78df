//! The Valkey store: the key layout shared with the TypeScript AppView, one `EVALSHA` per
//! operation.
//!
//! Connection: redis-rs's [`ConnectionManager`], one multiplexed connection that pipelines
//! every concurrent call and reconnects by itself. Unlike a deadpool-redis pool it sends no
//! health-check `PING` per checkout, so each RPC is exactly one round trip. It is created
//! lazily, so the service starts while Valkey is down and recovers when it returns.

use super::{Lifetimes, PRUNE_SAMPLE, SessionStore, StoreError};
use crate::session::{SessionRecord, log_prefix, sha256_hex};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Script};
use std::time::Duration;

/// How to reach Valkey and how long to wait for it.
#[derive(Clone)]
pub struct ValkeyOptions {
    /// `redis://[user:password@]host:port[/db]`; may hold a password, so never logged.
    pub url: String,
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
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

/// The Lua scripts, hashed once at startup. `Script::invoke_async` sends `EVALSHA` and, on
/// `NOSCRIPT` (a restarted or flushed Valkey), loads the script and retries once.
struct Scripts {
    validate: Script,
    create: Script,
    refresh: Script,
    delete: Script,
    delete_all: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            validate: Script::new(include_str!("scripts/validate.lua")),
            create: Script::new(include_str!("scripts/create.lua")),
            refresh: Script::new(include_str!("scripts/refresh.lua")),
            delete: Script::new(include_str!("scripts/delete.lua")),
            delete_all: Script::new(include_str!("scripts/delete_all.lua")),
        }
    }
}

/// Session storage in Valkey (or Redis), see the module docs of [`crate::store`].
pub struct ValkeyStore {
    conn: ConnectionManager,
    scripts: Scripts,
    prefix: String,
    data_prefix: String,
}

impl ValkeyStore {
    /// Prepares a store without connecting; fails only on an unusable URL.
    ///
    /// Must run inside a Tokio runtime (the connection manager spawns its reconnect task).
    pub fn new(options: &ValkeyOptions) -> Result<Self, RedisError> {
        let client = redis::Client::open(options.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.command_timeout))
            // No retry loop inside a call: a caller waits at most one connect timeout, and the
            // next call (or the health check) starts a fresh attempt.
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            scripts: Scripts::new(),
            prefix: options.key_prefix.clone(),
            data_prefix: format!("{}data:", options.key_prefix),
        })
    }

    fn data_key(&self, sid: &str) -> String {
        format!("{}{sid}", self.data_prefix)
    }

    fn access_key(&self, access_hash: &str) -> String {
        format!("{}access:{access_hash}", self.prefix)
    }

    fn did_key(&self, did: &str) -> String {
        format!("{}did:{did}", self.prefix)
    }
}

/// Classifies a client error: an answer of the wrong shape is our bug (or a foreign
/// writer's), everything else means Valkey could not serve the call.
fn store_error(err: RedisError) -> StoreError {
    match err.kind() {
        ErrorKind::UnexpectedReturnType | ErrorKind::Parse => StoreError::Protocol(err.to_string()),
        _ => StoreError::Unavailable(err),
    }
}

fn parse_record(sid: &str, json: &str) -> Result<SessionRecord, StoreError> {
    let corrupt = |reason: String| StoreError::CorruptSession {
        key_prefix: log_prefix(&sha256_hex(sid)).to_owned(),
        reason,
    };
    let record = SessionRecord::from_json(json).map_err(|e| corrupt(e.to_string()))?;
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
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .create
            .key(self.data_key(&record.sid))
            .key(self.access_key(&record.access_token_hash))
            .key(self.did_key(&record.did))
            .arg(record.to_json())
            .arg(&record.sid)
            .arg(millis(lifetimes.session))
            .arg(millis(lifetimes.access_token))
            .arg(&self.data_prefix)
            .arg(PRUNE_SAMPLE)
            .invoke_async(&mut conn)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn find_by_access_hash(
        &self,
        access_hash: &str,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let found: Option<(String, String)> = self
            .scripts
            .validate
            .key(self.access_key(access_hash))
            .arg(&self.data_prefix)
            .invoke_async(&mut conn)
            .await
            .map_err(store_error)?;
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
        let mut conn = self.conn.clone();
        let outcome: Option<(String, String)> = self
            .scripts
            .refresh
            .key(self.data_key(sid))
            .key(self.access_key(new_access_hash))
            .arg(&self.prefix)
            .arg(sid)
            .arg(new_access_hash)
            .arg(access_expires_at_ms)
            .arg(millis(lifetimes.session))
            .arg(millis(lifetimes.access_token))
            .invoke_async(&mut conn)
            .await
            .map_err(store_error)?;
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
        let mut conn = self.conn.clone();
        let existed: i64 = self
            .scripts
            .delete
            .key(self.data_key(sid))
            .arg(&self.prefix)
            .arg(sid)
            .invoke_async(&mut conn)
            .await
            .map_err(store_error)?;
        Ok(existed == 1)
    }

    async fn delete_all_for_did(&self, did: &str) -> Result<u32, StoreError> {
        let mut conn = self.conn.clone();
        let count: u32 = self
            .scripts
            .delete_all
            .key(self.did_key(did))
            .arg(&self.prefix)
            .invoke_async(&mut conn)
            .await
            .map_err(store_error)?;
        Ok(count)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}
