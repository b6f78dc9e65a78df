//! The standalone Valkey store: the key layout shared with the TypeScript AppView, one
//! `EVALSHA` per operation.
//!
//! Connection: redis-rs's [`ConnectionManager`], one multiplexed connection that pipelines
//! every concurrent call and reconnects by itself. Unlike a deadpool-redis pool it sends no
//! health-check `PING` per checkout, so each RPC is exactly one round trip. It is created
//! lazily, so the service starts while Valkey is down and recovers when it returns.

use super::args::{CreateArgs, DeleteArgs, HandleArgs, PresentedArgs, RefreshArgs, ScriptArgs};
use super::identity::{CommandSide, Failures};
use super::{
    Endpoint, Operation, ValkeyOptions, observe, parse_record, store_error, time_ms, ttl_ms,
};
use crate::domain::rotation::{Lookup, Presented};
use crate::domain::{Lifetimes, Revocation};
use crate::domain::{SessionRecord, log_prefix, sha256_hex};
use crate::observe::metrics::Metrics;
use crate::store::ended;
use crate::store::{
    ByRefresh, Created, Found, FoundByHash, KeyLayout, Refresh, Refreshed, SessionStore, StoreError,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ProtocolVersion, RedisError, Script};
use std::sync::Arc;
use std::time::Duration;

/// One Lua script, hashed once at startup, with the names its round trips carry.
/// `Script::invoke_async` sends `EVALSHA` and, on `NOSCRIPT` (a restarted or flushed Valkey),
/// loads the script and retries once.
struct LuaScript {
    script: Script,
    operation: Operation,
}

macro_rules! lua_script {
    // Validation, the hot path, applies no session rule (it returns what it finds, for the
    // service to judge) and runs without the prelude, whose functions cost a few µs of Lua
    // to define on every call.
    (bare $name:literal) => {
        lua_script!(@ Script::new(include_str!(concat!("scripts/", $name, ".lua"))), $name)
    };
    // Every other script starts with the shared prelude (the session rules, the scripts'
    // arguments by name, the key names, Valkey's clock).
    ($name:literal) => {
        lua_script!(@ Script::new(
            &[
                super::PRELUDE,
                include_str!(concat!("scripts/", $name, ".lua")),
            ]
            .concat(),
        ), $name)
    };
    (@ $script:expr, $name:literal) => {
        LuaScript {
            script: $script,
            operation: Operation {
                span_name: concat!("EVALSHA ", $name),
                command: "EVALSHA",
                script: Some($name),
            },
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
    list: LuaScript,
    revoke_others: LuaScript,
    update_handle: LuaScript,
}

impl Scripts {
    fn new() -> Self {
        Self {
            validate: lua_script!(bare "validate"),
            create: lua_script!("create"),
            refresh: lua_script!("refresh"),
            delete: lua_script!("delete"),
            delete_all: lua_script!("delete_all"),
            list: lua_script!("list"),
            revoke_others: lua_script!("revoke_others"),
            update_handle: lua_script!("update_handle"),
        }
    }
}

/// A client for the Valkey of `options` (its password and CA applied) speaking `protocol`:
/// RESP2 for the store's connection, RESP3 for the validation cache's invalidation feed
/// (push messages need it).
pub fn client(
    options: &ValkeyOptions,
    protocol: ProtocolVersion,
) -> Result<redis::Client, RedisError> {
    super::client_at(options, protocol, None)
}

/// Session storage in Valkey (or Redis), see the module docs of [`crate::store`].
pub struct ValkeyStore {
    conn: ConnectionManager,
    /// Every failed round trip, after which the connection manager reconnects, perhaps to
    /// another server: the validation cache's feed re-checks (see [`super::identity`]).
    failures: Arc<Failures>,
    metrics: Arc<Metrics>,
    peer: Endpoint,
    scripts: Scripts,
    keys: KeyLayout,
}

impl ValkeyStore {
    /// Prepares a store without connecting; fails only on an unusable URL.
    ///
    /// Must run inside a Tokio runtime (the connection manager spawns its reconnect task).
    pub fn new(options: &ValkeyOptions, metrics: Arc<Metrics>) -> Result<Self, RedisError> {
        let client = client(options, ProtocolVersion::RESP2)?;
        let peer = Endpoint::of(client.get_connection_info().addr());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.command_timeout))
            // No retry loop inside a call: a caller waits at most one connect timeout, and the
            // next call (or the health check) starts a fresh attempt.
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            failures: Arc::default(),
            metrics,
            peer,
            scripts: Scripts::new(),
            keys: KeyLayout::new(&options.key_prefix),
        })
    }

    /// The key a presented refresh token names its session by: the data key of a sid, the
    /// family key of a rotated token.
    fn lookup_key(&self, presented: &Presented) -> String {
        match &presented.lookup {
            Lookup::Sid(sid) => self.keys.data(sid),
            Lookup::Family(family) => self.keys.refresh(family),
        }
    }

    /// Runs one script invocation as one traced, measured round trip.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &LuaScript,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        let answer = observe(
            &self.metrics,
            &script.operation,
            Some(&self.peer),
            invocation.invoke_async(&mut conn),
        )
        .await;
        if matches!(answer, Err(StoreError::Unavailable(_))) {
            self.failures.raise();
        }
        answer
    }

    /// The command side as the validation cache's feed checks it.
    pub fn command_side(&self) -> CommandSide {
        CommandSide {
            conn: self.conn.clone(),
            failures: self.failures.clone(),
        }
    }
}

impl SessionStore for ValkeyStore {
    async fn create(
        &self,
        record: &SessionRecord,
        lifetimes: Lifetimes,
    ) -> Result<Created, StoreError> {
        let script = &self.scripts.create;
        let mut invocation = script.script.prepare_invoke();
        invocation
            .key(self.keys.data(&record.sid))
            .key(self.keys.access(&record.access_token_hash))
            .key(self.keys.did(&record.did));
        if let Some(family) = &record.refresh_family {
            invocation.key(self.keys.refresh(family));
        }
        CreateArgs {
            prefix: self.keys.prefix(),
            record,
            lifetimes,
        }
        .push(&mut invocation);
        let (json, revoked): (Vec<u8>, u32) = self.invoke(script, &invocation).await?;
        Ok(Created {
            record: parse_record(&record.sid, &json)?,
            revoked,
        })
    }

    async fn find_by_access_hash(&self, access_hash: &str) -> Result<Option<Found>, StoreError> {
        let mut found = self
            .find_by_access_hashes(std::slice::from_ref(&access_hash.to_owned()))
            .await?;
        found.pop().unwrap_or(Ok(None))
    }

    async fn find_by_access_hashes(
        &self,
        access_hashes: &[String],
    ) -> Result<Vec<FoundByHash>, StoreError> {
        let script = &self.scripts.validate;
        let mut invocation = script.script.prepare_invoke();
        for hash in access_hashes {
            invocation.key(self.keys.access(hash));
        }
        invocation.arg(self.keys.data_prefix());
        // Bytes, not String: a stored value that is not UTF-8 is a corrupt session, not a
        // client error (which would read as an outage).
        type Answer = (String, String, Vec<Option<(String, Vec<u8>, i64, i64)>>);
        let (seconds, micros, found): Answer = self.invoke(script, &invocation).await?;
        if found.len() != access_hashes.len() {
            return Err(StoreError::Protocol(format!(
                "validate answered {} sessions for {} keys",
                found.len(),
                access_hashes.len()
            )));
        }
        let now_ms = time_ms(&seconds, &micros)?;
        Ok(found
            .into_iter()
            .map(|found| {
                found
                    .map(|(sid, json, data_ttl, access_ttl)| {
                        Ok(Found {
                            record: parse_record(&sid, &json)?,
                            now_ms,
                            keys_ttl_ms: earliest(ttl_ms(data_ttl), ttl_ms(access_ttl)),
                        })
                    })
                    .transpose()
            })
            .collect())
    }

    async fn refresh(
        &self,
        presented: &Presented,
        refresh: &Refresh<'_>,
        lifetimes: Lifetimes,
    ) -> Result<ByRefresh<Refreshed>, StoreError> {
        let script = &self.scripts.refresh;
        let mut invocation = script.script.prepare_invoke();
        invocation
            .key(self.lookup_key(presented))
            .key(self.keys.access(refresh.new_access_hash));
        RefreshArgs {
            presented: PresentedArgs::new(&self.keys, presented, lifetimes.tokens.grace_ms()),
            new_hash: refresh.new_access_hash,
            lifetimes,
            client: refresh.client,
            previous_hash: refresh.previous_access_hash,
            candidate: refresh.rotation,
        }
        .push(&mut invocation);
        let outcome: Option<Vec<Vec<u8>>> = self.invoke(script, &invocation).await?;
        let Some(outcome) = outcome else {
            return Ok(ByRefresh::NotFound);
        };
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        match outcome.as_slice() {
            [status, json, sid] if status == b"ok" => {
                let sid = text(sid);
                Ok(ByRefresh::Found(Refreshed {
                    record: parse_record(&sid, json)?,
                }))
            }
            // Past its absolute lifetime: the script has removed it.
            [status, _, _] if status == b"expired" => Ok(ByRefresh::PastLifetime),
            [status, did, sid] if status == b"reuse" => Ok(ByRefresh::Reused {
                sid: text(sid),
                did: text(did),
            }),
            [status, reason, sid] if status == b"corrupt" => Err(StoreError::CorruptSession {
                key_prefix: log_prefix(&sha256_hex(&text(sid))).to_owned(),
                reason: text(reason),
            }),
            _ => Err(StoreError::Protocol(
                "refresh script answered an unexpected shape".into(),
            )),
        }
    }

    async fn delete(
        &self,
        presented: &Presented,
        grace: Duration,
    ) -> Result<ByRefresh<String>, StoreError> {
        let script = &self.scripts.delete;
        let mut invocation = script.script.prepare_invoke();
        invocation.key(self.lookup_key(presented));
        DeleteArgs {
            presented: PresentedArgs::new(&self.keys, presented, grace_ms(grace)),
            did: "",
        }
        .push(&mut invocation);
        let (code, sid, did): (i64, String, String) = self.invoke(script, &invocation).await?;
        Ok(match code {
            1 => ByRefresh::Found(sid),
            2 => ByRefresh::Reused { sid, did },
            _ => ByRefresh::NotFound,
        })
    }

    async fn list_for_did(&self, did: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let script = &self.scripts.list;
        let mut invocation = script.script.prepare_invoke();
        invocation.key(self.keys.did(did)).arg(self.keys.prefix());
        let flat: Vec<Vec<u8>> = self.invoke(script, &invocation).await?;
        let found: Vec<(String, Vec<u8>)> = flat
            .chunks_exact(2)
            .map(|pair| {
                (
                    String::from_utf8_lossy(&pair[0]).into_owned(),
                    pair[1].clone(),
                )
            })
            .collect();
        Ok(super::readable_of_did(did, &found))
    }

    async fn revoke_in_did(&self, did: &str, sid: &str) -> Result<bool, StoreError> {
        let script = &self.scripts.delete;
        let mut invocation = script.script.prepare_invoke();
        invocation.key(self.keys.data(sid));
        DeleteArgs {
            presented: PresentedArgs::session(&self.keys, sid),
            did,
        }
        .push(&mut invocation);
        let (revoked, _, _): (i64, String, String) = self.invoke(script, &invocation).await?;
        Ok(revoked == 1)
    }

    async fn revoke_others(
        &self,
        presented: &Presented,
        grace: Duration,
    ) -> Result<ByRefresh<u32>, StoreError> {
        let script = &self.scripts.revoke_others;
        let mut invocation = script.script.prepare_invoke();
        invocation.key(self.lookup_key(presented));
        PresentedArgs::new(&self.keys, presented, grace_ms(grace)).push(&mut invocation);
        let (count, sid, did): (i64, String, String) = self.invoke(script, &invocation).await?;
        Ok(match count {
            -2 => ByRefresh::Reused { sid, did },
            count => u32::try_from(count).map_or(ByRefresh::NotFound, ByRefresh::Found),
        })
    }

    async fn delete_all_for_did(&self, did: &str, reason: Revocation) -> Result<u32, StoreError> {
        let script = &self.scripts.delete_all;
        let mut invocation = script.script.prepare_invoke();
        invocation
            .key(self.keys.did(did))
            .arg(self.keys.prefix())
            .arg(reason.as_str());
        self.invoke(script, &invocation).await
    }

    async fn ended(&self, presented: &Presented) -> Result<Option<Revocation>, StoreError> {
        let mut conn = self.conn.clone();
        let mut get = redis::cmd("GET");
        get.arg(self.keys.ended(&ended::presented_id(presented)));
        let operation = &Operation {
            span_name: "GET",
            command: "GET",
            script: None,
        };
        let label: Option<String> = observe(
            &self.metrics,
            operation,
            Some(&self.peer),
            get.query_async(&mut conn),
        )
        .await
        .inspect_err(|err| {
            if matches!(err, StoreError::Unavailable(_)) {
                self.failures.raise();
            }
        })?;
        Ok(label.as_deref().and_then(Revocation::parse))
    }

    async fn update_handle(&self, did: &str, handle: &str) -> Result<u32, StoreError> {
        let script = &self.scripts.update_handle;
        let mut invocation = script.script.prepare_invoke();
        invocation.key(self.keys.did(did));
        HandleArgs {
            prefix: self.keys.prefix(),
            did,
            handle,
            sid: "",
        }
        .push(&mut invocation);
        self.invoke(script, &invocation).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // The validate script on a key that cannot exist, rather than PING: it proves that
        // this Valkey user may run scripts (ACLs), and after a Valkey restart it reloads the
        // script before a caller's request needs it. Not traced: it is no caller's work.
        let mut conn = self.conn.clone();
        let _: redis::Value = self
            .scripts
            .validate
            .script
            .key(self.keys.health_probe())
            .arg(self.keys.data_prefix())
            .invoke_async(&mut conn)
            .await
            .map_err(|err| {
                self.failures.raise();
                store_error(err)
            })?;
        Ok(())
    }
}

/// A grace in milliseconds, as the scripts take it.
fn grace_ms(grace: Duration) -> i64 {
    i64::try_from(grace.as_millis()).unwrap_or(i64::MAX)
}

/// The earlier of two optional expiries (`None`: never).
fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
