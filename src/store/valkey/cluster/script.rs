//! A single-key script of cluster mode, run by its hash (`EVALSHA`) and, on a node that has
//! not loaded it, by its body (`EVAL`, which loads it there too).
//!
//! Why not redis-rs's own reload: on `NOSCRIPT` it loads the script on the primaries its
//! slot map names and retries. A primary that owns no slots yet is not among them, yet a
//! slot being moved onto it answers there (the source redirects with `ASK`): every call on
//! that slot failed until the move ended, and each failure dropped the validation cache.

use crate::store::valkey::args::{Arg, ArgSink};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisResult, ServerErrorKind, ToRedisArgs};

/// A script and its body.
pub(super) struct ClusterScript {
    script: redis::Script,
    body: String,
}

impl ClusterScript {
    pub(super) fn new(body: String) -> Self {
        Self {
            script: redis::Script::new(&body),
            body,
        }
    }

    /// A call of the script, its keys and arguments to be added.
    pub(super) fn prepare_invoke(&self) -> ClusterInvocation<'_> {
        ClusterInvocation {
            script: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// One call of a [`ClusterScript`].
pub(super) struct ClusterInvocation<'a> {
    script: &'a ClusterScript,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl ClusterInvocation<'_> {
    pub(super) fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    pub(super) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    fn command(&self, verb: &str, script: &str) -> Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(script)
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }

    /// `EVALSHA`; on `NOSCRIPT`, `SCRIPT LOAD` on every primary redis-rs knows (as its own
    /// reload does, so the other nodes have it too) and `EVALSHA` again; if the node still
    /// lacks it (one redis-rs does not route to), `EVAL` with the body, routed alike (by the
    /// first key), which loads it there.
    pub(super) async fn invoke_async<T: FromRedisValue>(
        &self,
        conn: &mut ClusterConnection,
    ) -> RedisResult<T> {
        let by_hash = self.command("EVALSHA", self.script.script.get_hash());
        match by_hash.query_async(conn).await {
            Err(err) if is_noscript(&err) => {
                // Best effort: a node that cannot load it answers below.
                let _: RedisResult<String> = self.script.script.load_async(conn).await;
                match by_hash.query_async(conn).await {
                    Err(err) if is_noscript(&err) => {
                        self.command("EVAL", &self.script.body)
                            .query_async(conn)
                            .await
                    }
                    answer => answer,
                }
            }
            answer => answer,
        }
    }
}

fn is_noscript(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript)
}

impl ArgSink for ClusterInvocation<'_> {
    fn push_arg(&mut self, arg: Arg<'_>) {
        self.arg(arg);
    }
}
