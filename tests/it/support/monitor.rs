//! Counts Valkey round trips with `MONITOR`.
//!
//! `MONITOR` prints every command a client sends; commands a Lua script runs are printed too,
//! marked `[<db> lua]`, so leaving those out leaves exactly the round trips. (`INFO
//! commandstats` counts a script's inner commands as well, so it cannot tell them apart.)

use super::Valkey;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

/// A `MONITOR` connection plus a second connection that writes markers into its stream.
pub struct Monitor {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    _writer: tokio::net::tcp::OwnedWriteHalf,
    marker: redis::aio::MultiplexedConnection,
    next: u64,
    /// Addresses of the servers' invalidation feeds (`CLIENT TRACKING` connections): their
    /// once-a-second `PING` is no call's round trip.
    feeds: Vec<String>,
}

impl Monitor {
    /// Starts monitoring `valkey`.
    pub async fn start(valkey: &Valkey) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", valkey.port()))
            .await
            .expect("connect for MONITOR");
        let (read, mut write) = stream.into_split();
        write.write_all(b"MONITOR\r\n").await.expect("send MONITOR");
        let mut lines = BufReader::new(read).lines();
        let ok = lines.next_line().await.expect("read").expect("a reply");
        assert_eq!(ok, "+OK", "MONITOR accepted");
        let mut marker = valkey.client().await;
        let feeds = tracking_clients(&mut marker).await;
        Self {
            lines,
            _writer: write,
            marker,
            next: 0,
            feeds,
        }
    }

    async fn mark(&mut self) -> String {
        self.next += 1;
        let marker = format!("round-trip-marker-{}", self.next);
        let _: String = redis::cmd("ECHO")
            .arg(&marker)
            .query_async(&mut self.marker)
            .await
            .expect("echo marker");
        marker
    }

    /// Runs `action` and returns its output with the names of the top-level commands
    /// (round trips) Valkey received meanwhile, in order.
    pub async fn round_trips<T>(&mut self, action: impl Future<Output = T>) -> (T, Vec<String>) {
        let start = self.begin().await;
        let output = action.await;
        (output, self.finish(start).await)
    }

    /// Runs `action` and returns its output with every line `MONITOR` printed meanwhile
    /// (the commands a script runs included), to search for what must never be sent.
    pub async fn lines<T>(&mut self, action: impl Future<Output = T>) -> (T, Vec<String>) {
        let start = self.begin().await;
        let output = action.await;
        (output, self.finish_lines(start).await)
    }

    /// Starts a measurement: returns its start marker, for [`Monitor::finish`]. (For several
    /// nodes at once, as in a cluster: begin on each, act, finish on each.)
    pub async fn begin(&mut self) -> String {
        self.mark().await
    }

    /// The names of the top-level commands (round trips) Valkey received since `start`.
    pub async fn finish(&mut self, start: String) -> Vec<String> {
        let lines = self.finish_lines(start).await;
        // A feed that (re)connected after `start` (a server that had just started) is
        // still no call's round trip.
        self.feeds = tracking_clients(&mut self.marker).await;
        lines
            .iter()
            .filter_map(|line| {
                // `+<time> [<db> <client or lua>] "CMD" "arg" ...`
                let (client, rest) = line.split_once("] ")?;
                if client.ends_with(" lua")
                    || self
                        .feeds
                        .iter()
                        .any(|feed| client.ends_with(&format!(" {feed}")))
                {
                    return None;
                }
                Some(rest.split('"').nth(1).unwrap_or_default().to_uppercase())
            })
            .collect()
    }

    /// Every line `MONITOR` printed since `start`.
    async fn finish_lines(&mut self, start: String) -> Vec<String> {
        let end = self.mark().await;
        let mut seen_start = false;
        let mut commands = Vec::new();
        loop {
            let line =
                tokio::time::timeout(std::time::Duration::from_secs(10), self.lines.next_line())
                    .await
                    .expect("MONITOR output within 10 s")
                    .expect("read MONITOR")
                    .expect("MONITOR stream open");
            if line.contains(&format!("\"{start}\"")) {
                seen_start = true;
                continue;
            }
            if line.contains(&format!("\"{end}\"")) {
                assert!(seen_start, "end marker before start marker");
                return commands;
            }
            if !seen_start {
                continue;
            }
            commands.push(line);
        }
    }
}

/// Addresses of the connections with client tracking on (the servers' invalidation feeds).
async fn tracking_clients(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .expect("CLIENT LIST");
    clients
        .lines()
        .filter(|line| {
            line.split(' ').any(|f| {
                f.strip_prefix("flags=")
                    .is_some_and(|flags| flags.contains('t'))
            })
        })
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("addr=")))
        .map(str::to_owned)
        .collect()
}
