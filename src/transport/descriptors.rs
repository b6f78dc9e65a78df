//! File descriptors: every connection, listener and Valkey socket takes one, and a process
//! out of them cannot even accept the connection that would tell it so. At startup the soft
//! `RLIMIT_NOFILE` is raised to the hard limit (a soft limit of 1024 is a shell default, not
//! a decision), and `--max-connections` is clamped to what the limit leaves after the
//! descriptors the process needs for everything else.

/// Descriptors kept for everything but client connections: the listeners, stdio, the
/// Valkey connections (one per node, and reconnects), the OTLP exporter, the admin
/// listener's connections ([`crate::observe::admin::MAX_CONNECTIONS`]), with room to spare.
pub const RESERVED: u64 = 128;

/// Raises the soft descriptor limit to the hard one, logging the change, and returns the
/// limit now in force (`None`: unlimited or unknown, as on platforms without rlimits).
#[cfg(unix)]
pub fn raise_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current, limit.maximum);
    if soft.is_some() && soft != hard {
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: hard,
                maximum: hard,
            },
        ) {
            Ok(()) => {
                tracing::info!(
                    from = soft,
                    to = hard,
                    "raised the soft file descriptor limit (RLIMIT_NOFILE) to the hard limit"
                );
                return hard;
            }
            Err(err) => tracing::warn!(
                soft,
                hard,
                error = %err,
                "could not raise the soft file descriptor limit (RLIMIT_NOFILE)"
            ),
        }
    }
    soft
}

/// Without Unix rlimits there is nothing to raise, and no limit known.
#[cfg(not(unix))]
pub fn raise_limit() -> Option<u64> {
    None
}

/// `--max-connections`, lowered (with a warning) when the descriptor limit could not hold
/// that many connections besides the [`RESERVED`] ones: past the limit, accepts fail and
/// nobody, not even a health check, gets through.
pub fn connections_within(max_connections: usize, limit: Option<u64>) -> usize {
    let Some(limit) = limit else {
        return max_connections;
    };
    let room = usize::try_from(limit.saturating_sub(RESERVED))
        .unwrap_or(usize::MAX)
        .max(1);
    if max_connections > room {
        tracing::warn!(
            max_connections,
            descriptor_limit = limit,
            clamped_to = room,
            "--max-connections does not fit the file descriptor limit (RLIMIT_NOFILE); raise the hard limit (e.g. LimitNOFILE, ulimit -Hn) to allow more"
        );
        room
    } else {
        max_connections
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_the_descriptor_limit() {
        assert_eq!(connections_within(4096, None), 4096);
        assert_eq!(connections_within(4096, Some(1_048_576)), 4096);
        assert_eq!(
            connections_within(4096, Some(1024)),
            1024 - RESERVED as usize
        );
        // Never zero: the service must stay reachable.
        assert_eq!(connections_within(4096, Some(10)), 1);
    }
}
