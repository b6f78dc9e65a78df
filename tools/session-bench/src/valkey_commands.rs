//! Counts the commands clients send to Valkey, to show the cost of each RPC in round trips.
//!
//! `INFO commandstats` counts the commands a Lua script runs too (GET, SET, …), so only
//! commands that never run inside a script are summed: the script calls themselves and
//! connection housekeeping. The service sends nothing else at top level.

use crate::spawn::BoxError;
use redis::aio::ConnectionManager;

/// Commands that are only ever sent by clients, never run by a script.
const TOP_LEVEL: [&str; 14] = [
    "evalsha",
    "evalsha_ro",
    "eval",
    "eval_ro",
    "fcall",
    "fcall_ro",
    "script",
    "ping",
    "echo",
    "hello",
    "auth",
    "select",
    "client",
    "exec",
];

/// A connection for reading Valkey's command statistics.
pub struct CommandCounter {
    conn: ConnectionManager,
}

impl CommandCounter {
    /// Connects to the Valkey the servers use.
    pub async fn connect(url: &str) -> Result<Self, BoxError> {
        // A connection manager, so a Valkey restarted mid-run is reconnected to.
        let conn = redis::Client::open(url)?.get_connection_manager().await?;
        Ok(Self { conn })
    }

    /// Top-level commands processed so far (this counter's own INFO calls excluded).
    pub async fn top_level_commands(&mut self) -> Result<u64, BoxError> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.conn)
            .await?;
        Ok(info
            .lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                // Subcommands appear as `client|setinfo`; count them under their command.
                let command = name.split('|').next()?;
                if !TOP_LEVEL.contains(&command) {
                    return None;
                }
                stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))?
                    .parse::<u64>()
                    .ok()
            })
            .sum())
    }
}
