//! A real Valkey Cluster for one test: `cluster-enabled` servers on ephemeral ports, slots
//! assigned with `CLUSTER ADDSLOTSRANGE`, nodes joined with `CLUSTER MEET`. Three primaries
//! ([`ValkeyCluster::start`]), or three primaries with a replica each
//! ([`ValkeyCluster::start_with_replicas`]); and the topology changes a deployment sees: a
//! manual failover, a primary's crash and its replica's promotion, a primary added without
//! slots, a slot's migration (whole, or held half-way).
//!
//! Each change returns once every running node's own view (`CLUSTER SLOTS`, or `CLUSTER
//! SHARDS` for a node added) agrees on it, polled; none sleeps for a fixed time.

use super::pki::{Pem, TempDir, tls_proxy};
use super::valkey::Valkey;
use redis::{FromRedisValue, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// How long a manual failover or a slot's migration may take to be seen by every node.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a killed primary's replica may take to be promoted and seen by every node: the
/// 2 s node timeout, the failure reports' gossip, the election (at most a second's delay).
const PROMOTION_TIMEOUT: Duration = Duration::from_secs(20);
/// Between two looks at the nodes.
const POLL: Duration = Duration::from_millis(20);
/// The primaries' slots, in node order.
const RANGES: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

/// Three primaries, and with [`ValkeyCluster::start_with_replicas`] a replica for each
/// (node `3 + i` replicates node `i` at the start); nodes added later
/// ([`ValkeyCluster::add_primary`]) come after them. Killed on drop.
pub struct ValkeyCluster {
    nodes: Vec<Valkey>,
    /// Each node's id (`CLUSTER MYID`), kept across restarts with its config file.
    ids: Vec<String>,
    /// How clients reach each node (the node itself, or a TLS proxy in front of it).
    urls: Vec<String>,
    /// The certificate of the TLS proxies in front of the nodes, if any (for a node added
    /// later).
    tls: Option<Pem>,
    /// Where the nodes keep their files.
    dir: TempDir,
}

/// A port whose cluster-bus port (port + 10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("ephemeral port");
        let port = listener.local_addr().expect("addr").port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Starts one cluster-enabled node, its files in `dir`, behind a TLS proxy presenting `tls`
/// when given (announcing the proxy's port); returns it and the URL clients reach it by.
async fn start_node(dir: &TempDir, tls: Option<&Pem>) -> (Valkey, String) {
    let port = cluster_port();
    let conf = dir.write(&format!("nodes-{port}.conf"), "");
    std::fs::remove_file(&conf).expect("fresh cluster config");
    let mut args: Vec<String> = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        conf.to_str().expect("utf-8"),
        "--cluster-node-timeout",
        "2000",
        // A replica's first sync starts at once, not after 5 s of waiting for others.
        "--repl-diskless-sync-delay",
        "0",
        // A replica writes the RDB it loads from its primary: here, not in the test's
        // working directory.
        "--dir",
        dir.path().to_str().expect("utf-8"),
    ]
    .map(str::to_owned)
    .into();
    args.extend(["--dbfilename".to_owned(), format!("dump-{port}.rdb")]);
    let url = match tls {
        Some(server) => {
            let proxy = tls_proxy(port, server).await;
            args.extend([
                "--cluster-announce-port".to_owned(),
                proxy.to_string(),
                // The bus stays on the node's own port + 10000.
                "--cluster-announce-bus-port".to_owned(),
                (port + 10_000).to_string(),
            ]);
            format!("rediss://127.0.0.1:{proxy}")
        }
        None => format!("redis://127.0.0.1:{port}"),
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Valkey::start_on_with(port, &args), url)
}

/// One slot range of a node's `CLUSTER SLOTS`: the range, its primary's id, and the ids of
/// its replicas that the node does not consider failed.
struct SlotRange {
    first: u16,
    last: u16,
    primary: String,
    replicas: Vec<String>,
}

/// One node as a node's `CLUSTER SHARDS` lists it.
struct ShardNode {
    id: String,
    /// `master` or `replica`.
    role: String,
    /// `online`, `failed` or `loading`.
    health: String,
    /// Which shard of the reply lists it.
    shard: usize,
    /// Whether that shard owns any slot.
    shard_owns_slots: bool,
}

fn parse<T: FromRedisValue>(value: Value, what: &str) -> T {
    redis::from_redis_value(value).unwrap_or_else(|e| panic!("unexpected {what}: {e}"))
}

fn parse_slots(reply: Vec<Value>) -> Vec<SlotRange> {
    let id_of = |node: Value| -> String {
        // [ip, port, id, {hostname and the like}]
        let mut fields: Vec<Value> = parse(node, "CLUSTER SLOTS node");
        parse(fields.swap_remove(2), "CLUSTER SLOTS node id")
    };
    reply
        .into_iter()
        .map(|range| {
            let mut fields: Vec<Value> = parse(range, "CLUSTER SLOTS range");
            let mut nodes = fields.split_off(2).into_iter().map(id_of);
            let last = parse(fields.pop().expect("last slot"), "slot");
            let first = parse(fields.pop().expect("first slot"), "slot");
            SlotRange {
                first,
                last,
                primary: nodes.next().expect("a range's primary"),
                replicas: nodes.collect(),
            }
        })
        .collect()
}

fn parse_shards(reply: Vec<Value>) -> Vec<ShardNode> {
    let mut listed = Vec::new();
    for (number, shard) in reply.into_iter().enumerate() {
        let mut shard: HashMap<String, Value> = parse(shard, "CLUSTER SHARDS shard");
        let slots: Vec<Value> = parse(shard.remove("slots").expect("slots"), "shard slots");
        let nodes: Vec<HashMap<String, Value>> =
            parse(shard.remove("nodes").expect("nodes"), "shard nodes");
        for mut node in nodes {
            let mut field = |name: &str| -> String {
                let value = node
                    .remove(name)
                    .unwrap_or_else(|| panic!("a shard node without {name}"));
                parse(value, name)
            };
            listed.push(ShardNode {
                id: field("id"),
                role: field("role"),
                health: field("health"),
                shard: number,
                shard_owns_slots: !slots.is_empty(),
            });
        }
    }
    listed
}

/// The key's hash slot: CRC16-XMODEM of its hashtag (the text between the first `{` and
/// the first `}` after it, when not empty) or else of the whole key, modulo 16384.
fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let tag = &key[open + 1..];
            let close = tag.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &tag[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            };
        }
    }
    crc % 16_384
}

/// Polls `check` until it is `Ok`, panicking after `timeout` with `what` and the last
/// state `check` reported.
async fn poll_until(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<(), String>,
) -> Duration {
    let started = Instant::now();
    loop {
        let state = match check().await {
            Ok(()) => return started.elapsed(),
            Err(state) => state,
        };
        assert!(
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}; last seen: {state}"
        );
        tokio::time::sleep(POLL).await;
    }
}

impl ValkeyCluster {
    /// Starts and joins three primaries; returns once all slots are served.
    pub async fn start() -> Self {
        Self::form(None, false).await
    }

    /// Six nodes: three primaries (nodes 0 to 2) each with one replica (node `3 + i`
    /// replicates node `i`). Returns once every node reports `cluster_state:ok`, every
    /// replica its replication link up, and every node's `CLUSTER SHARDS` all six online
    /// in their roles.
    pub async fn start_with_replicas() -> Self {
        Self::form(None, true).await
    }

    /// The same cluster reached only through TLS: each node sits behind a TLS proxy
    /// presenting `server` and announces the proxy's port (`cluster-announce-port`), so
    /// clients that discover the topology also connect through TLS.
    pub async fn start_behind_tls(server: &Pem) -> Self {
        Self::form(Some(server), false).await
    }

    async fn form(tls: Option<&Pem>, replicas: bool) -> Self {
        let count = if replicas { 6 } else { 3 };
        let dir = TempDir::new();
        let mut nodes = Vec::new();
        let mut urls = Vec::new();
        for _ in 0..count {
            let (node, url) = start_node(&dir, tls).await;
            nodes.push(node);
            urls.push(url);
        }
        let mut conns = Vec::new();
        let mut ids = Vec::new();
        for node in &nodes {
            let mut conn = node.client().await;
            let id: String = redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async(&mut conn)
                .await
                .expect("CLUSTER MYID");
            ids.push(id);
            conns.push(conn);
        }
        for (conn, (from, to)) in conns.iter_mut().zip(RANGES) {
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(from)
                .arg(to)
                .query_async(conn)
                .await
                .expect("ADDSLOTSRANGE");
        }
        for conn in &mut conns[1..] {
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(nodes[0].port())
                .query_async(conn)
                .await
                .expect("MEET");
        }
        let cluster = Self {
            nodes,
            ids,
            urls,
            tls: tls.cloned(),
            dir,
        };
        // Gossip takes ~1 s; a replica can only follow a primary it knows.
        let known = format!("cluster_known_nodes:{count}\r");
        poll_until("the nodes meet", Duration::from_secs(20), async || {
            for index in 0..count {
                let info = cluster.cluster_info(index).await;
                if !info.contains(&known) {
                    return Err(format!("node {index}: {info}"));
                }
            }
            Ok(())
        })
        .await;
        if replicas {
            for (replica, conn) in conns.iter_mut().enumerate().skip(3) {
                let _: () = redis::cmd("CLUSTER")
                    .arg("REPLICATE")
                    .arg(&cluster.ids[replica - 3])
                    .query_async(conn)
                    .await
                    .expect("CLUSTER REPLICATE");
            }
        }
        poll_until("the cluster forms", Duration::from_secs(20), async || {
            for index in 0..count {
                let info = cluster.cluster_info(index).await;
                if !info.contains("cluster_state:ok") {
                    return Err(format!("node {index}: {info}"));
                }
                if index >= 3 && !cluster.replication_link_up(index).await {
                    return Err(format!("replica {index}'s link is down"));
                }
                let shards = cluster.shards(index).await;
                let shown = |listed: usize, role: &str| {
                    shards.iter().find(|node| {
                        node.id == cluster.ids[listed]
                            && node.health == "online"
                            && node.role == role
                    })
                };
                for listed in 0..count {
                    let shown = if listed < 3 {
                        shown(listed, "master")
                    } else {
                        // In its primary's shard.
                        shown(listed, "replica").filter(|replica| {
                            shown(listed - 3, "master")
                                .is_some_and(|primary| primary.shard == replica.shard)
                        })
                    };
                    if shown.is_none() {
                        return Err(format!(
                            "node {index} does not show node {listed} online in its role"
                        ));
                    }
                }
            }
            Ok(())
        })
        .await;
        cluster
    }

    /// The seed URLs, comma-separated, as `VALKEY_URL` takes them in cluster mode (every
    /// node, replicas too).
    pub fn urls(&self) -> String {
        self.urls.join(",")
    }

    /// A test-side connection to the whole cluster (commands go to the key's node).
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        let seeds: Vec<String> = self.urls().split(',').map(str::to_owned).collect();
        let client = redis::cluster::ClusterClient::new(seeds).expect("client");
        client.get_async_connection().await.expect("connect")
    }

    /// The nodes, to inspect where keys live.
    pub fn nodes(&self) -> &[Valkey] {
        &self.nodes
    }

    /// One node, to kill and restart it (it keeps its cluster config file, so it rejoins
    /// with its id and slots).
    pub fn node_mut(&mut self, index: usize) -> &mut Valkey {
        &mut self.nodes[index]
    }

    /// Node `index`'s id (its `CLUSTER MYID`, read when the cluster formed; a node keeps it
    /// across restarts).
    pub fn node_id(&self, index: usize) -> String {
        self.ids[index].clone()
    }

    /// The cluster slot of `key`, as `CLUSTER KEYSLOT` computes it.
    pub fn slot_of(key: &str) -> u16 {
        key_slot(key.as_bytes())
    }

    /// The index of the node owning `slot`, in the view of the first running node.
    pub async fn primary_of_slot(&self, slot: u16) -> usize {
        let viewer = self.live().next().expect("a running node");
        self.owner_in_view(viewer, slot)
            .await
            .unwrap_or_else(|| panic!("node {viewer} sees no owner of slot {slot}"))
    }

    /// The index of a replica of primary `primary` (one not considered failed), in the view
    /// of the first running node.
    pub async fn replica_of(&self, primary: usize) -> usize {
        let viewer = self.live().next().expect("a running node");
        let id = &self.ids[primary];
        self.slots(viewer)
            .await
            .into_iter()
            .find(|range| range.primary == *id)
            .and_then(|range| range.replicas.into_iter().next())
            .map(|replica| self.index_of(&replica))
            .unwrap_or_else(|| panic!("node {viewer} sees no replica of node {primary}"))
    }

    /// Promotes replica `replica` with `CLUSTER FAILOVER` (its primary agreeing), and returns
    /// once every running node sees it owning its former primary's slots with the former
    /// primary as its replica, and that replica has its replication link up.
    pub async fn failover(&self, replica: usize) {
        let viewer = self.live().next().expect("a running node");
        let id = &self.ids[replica];
        let replicated: Vec<SlotRange> = self
            .slots(viewer)
            .await
            .into_iter()
            .filter(|range| range.replicas.contains(id))
            .collect();
        let primary = replicated.first().map_or_else(
            || panic!("node {replica} replicates no primary in node {viewer}'s view"),
            |range| self.index_of(&range.primary),
        );
        let ranges: Vec<(u16, u16)> = replicated
            .iter()
            .map(|range| (range.first, range.last))
            .collect();
        let mut conn = self.nodes[replica].client().await;
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query_async(&mut conn)
            .await
            .expect("CLUSTER FAILOVER");
        let what = format!(
            "after CLUSTER FAILOVER on node {replica}, every running node sees it as the primary \
             of slots {ranges:?} (node {primary}'s) and node {primary} follows it"
        );
        poll_until(&what, CHANGE_TIMEOUT, async || {
            let follower = Some(primary).filter(|&node| self.nodes[node].is_running());
            self.all_see_owner(&ranges, replica, follower).await?;
            if self.nodes[primary].is_running() && !self.replication_link_up(primary).await {
                return Err(format!("node {primary}'s replication link is down"));
            }
            Ok(())
        })
        .await;
    }

    /// Kills primary `primary` with SIGKILL and returns the index of its replica once every
    /// running node sees that replica owning the killed primary's slots.
    pub async fn kill_primary_and_wait_for_promotion(&mut self, primary: usize) -> usize {
        let replica = self.replica_of(primary).await;
        let viewer = self.live().next().expect("a running node");
        let ranges: Vec<(u16, u16)> = self
            .slots(viewer)
            .await
            .into_iter()
            .filter(|range| range.primary == self.ids[primary])
            .map(|range| (range.first, range.last))
            .collect();
        self.nodes[primary].kill();
        let what = format!(
            "after node {primary} was killed, every running node sees its replica, node \
             {replica}, as the primary of slots {ranges:?}"
        );
        poll_until(&what, PROMOTION_TIMEOUT, async || {
            self.all_see_owner(&ranges, replica, None).await
        })
        .await;
        replica
    }

    /// Adds a primary without slots, as `valkey-cli --cluster add-node` does: one more node
    /// configured as the others, joined with `CLUSTER MEET` to a running node. Returns its
    /// index in [`nodes`](Self::nodes) once every running node's `CLUSTER SHARDS` lists it
    /// as an online primary in a shard without slots, its own lists every other running
    /// node online (it knows who owns what, so slots can move to it), and every running node
    /// reports `cluster_state:ok` (a primary just started says `fail`, and refuses keys with
    /// `CLUSTERDOWN`, for its first 2 s).
    pub async fn add_primary(&mut self) -> usize {
        let (node, url) = start_node(&self.dir, self.tls.as_ref()).await;
        let mut conn = node.client().await;
        let id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut conn)
            .await
            .expect("CLUSTER MYID");
        let seed = self.live().next().expect("a running node");
        let _: () = redis::cmd("CLUSTER")
            .arg("MEET")
            .arg("127.0.0.1")
            .arg(self.nodes[seed].port())
            .query_async(&mut conn)
            .await
            .expect("MEET");
        let added = self.nodes.len();
        self.nodes.push(node);
        self.ids.push(id);
        self.urls.push(url);
        let what = format!(
            "after CLUSTER MEET of node {added} with node {seed}, every running node lists it \
             as an online primary without slots and its state ok, and it lists every other \
             running node online"
        );
        poll_until(&what, CHANGE_TIMEOUT, async || {
            for viewer in self.live() {
                let info = self.cluster_info(viewer).await;
                if !info.contains("cluster_state:ok") {
                    return Err(format!("node {viewer}: {info}"));
                }
                let shards = self.shards(viewer).await;
                let listed = shards.iter().find(|node| node.id == self.ids[added]);
                match listed {
                    Some(node)
                        if node.role == "master"
                            && node.health == "online"
                            && !node.shard_owns_slots => {}
                    Some(node) => {
                        return Err(format!(
                            "node {viewer} lists node {added} as {} {}, its shard {}",
                            node.health,
                            node.role,
                            if node.shard_owns_slots {
                                "with slots"
                            } else {
                                "without slots"
                            }
                        ));
                    }
                    None => return Err(format!("node {viewer} does not list node {added}")),
                }
                if viewer == added {
                    for other in self.live() {
                        let online = shards
                            .iter()
                            .any(|node| node.id == self.ids[other] && node.health == "online");
                        if !online {
                            return Err(format!("node {added} does not list node {other} online"));
                        }
                    }
                }
            }
            Ok(())
        })
        .await;
        added
    }

    /// Each online primary's node id with the number of slots it owns (0 for one that owns
    /// none yet), as the owner of slot 0 sees the cluster: what the service's cluster feeds
    /// report watching once they have caught up with a change
    /// (`barazo_session_validation_cache_feed_slots`).
    pub async fn slots_per_primary(&self) -> BTreeMap<String, u64> {
        let viewer = self.primary_of_slot(0).await;
        let mut owned = BTreeMap::new();
        for node in self.shards(viewer).await {
            if node.role == "master" && node.health == "online" {
                owned.insert(node.id, 0);
            }
        }
        for range in self.slots(viewer).await {
            *owned.entry(range.primary).or_insert(0) += u64::from(range.last - range.first) + 1;
        }
        owned
    }

    /// Moves `slot` with its keys to primary `to` the way `valkey-cli --cluster reshard`
    /// does: the target `IMPORTING`, the source `MIGRATING`, the keys in batches with
    /// `CLUSTER GETKEYSINSLOT` and `MIGRATE`, then `SETSLOT NODE` on the target, the source
    /// and every other primary. Returns once every running node sees `to` owning it (at once
    /// when it does already).
    pub async fn move_slot(&self, slot: u16, to: usize) {
        let from = self.primary_of_slot(slot).await;
        if from == to {
            return;
        }
        self.start_slot_move(slot, from, to).await;
        self.finish_slot_move(slot, from, to).await;
    }

    /// Moves `slot` to primary `to` with Valkey 9's atomic slot migration: one
    /// `CLUSTER MIGRATESLOTS` on the source, which streams the slot's keys and every write
    /// made meanwhile to the target and hands the slot over in one step (no `ASK` window).
    /// Returns once the source reports the migration done and every running node sees `to`
    /// owning `slot` (at once when it does already).
    pub async fn migrate_slot(&self, slot: u16, to: usize) {
        let from = self.primary_of_slot(slot).await;
        if from == to {
            return;
        }
        let mut source = self.nodes[from].client().await;
        let _: () = redis::cmd("CLUSTER")
            .arg("MIGRATESLOTS")
            .arg("SLOTSRANGE")
            .arg(slot)
            .arg(slot)
            .arg("NODE")
            .arg(&self.ids[to])
            .query_async(&mut source)
            .await
            .expect("CLUSTER MIGRATESLOTS on the source");
        let what = format!("slot {slot} migrated atomically from node {from} to node {to}");
        let range = format!("{slot}-{slot}");
        poll_until(&what, CHANGE_TIMEOUT, async || {
            // Every migration the source remembers, each as field/value pairs.
            let jobs: Vec<HashMap<String, String>> = redis::cmd("CLUSTER")
                .arg("GETSLOTMIGRATIONS")
                .query_async(&mut source)
                .await
                .map_err(|err| err.to_string())?;
            let state = jobs
                .iter()
                .rfind(|job| job.get("slot_ranges") == Some(&range))
                .and_then(|job| job.get("state"))
                .map_or("", String::as_str);
            assert!(
                state != "failed" && state != "cancelled",
                "{what}: {state} ({jobs:?})"
            );
            if state != "success" {
                return Err(format!("the source's migration is {state:?}"));
            }
            self.all_see_owner(&[(slot, slot)], to, None).await
        })
        .await;
    }

    /// The first half of [`move_slot`](Self::move_slot): `slot` `IMPORTING` on `to`,
    /// `MIGRATING` on `from` (its owner), and all its keys migrated to `to`. The slot stays
    /// `from`'s in every node's view until [`finish_slot_move`](Self::finish_slot_move);
    /// meanwhile a command on one of its keys is answered `ASK` by `from`, and served by `to`
    /// after `ASKING`.
    pub async fn start_slot_move(&self, slot: u16, from: usize, to: usize) {
        let mut source = self.nodes[from].client().await;
        let mut target = self.nodes[to].client().await;
        let setslot = |state: &str, id: &str| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
            cmd
        };
        let _: () = setslot("IMPORTING", &self.ids[from])
            .query_async(&mut target)
            .await
            .expect("SETSLOT IMPORTING on the target");
        let _: () = setslot("MIGRATING", &self.ids[to])
            .query_async(&mut source)
            .await
            .expect("SETSLOT MIGRATING on the source");
        loop {
            let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query_async(&mut source)
                .await
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            // Node to node, on the target's own port (not a TLS proxy's).
            let _: () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.nodes[to].port())
                .arg("")
                .arg(0)
                .arg(5_000)
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut source)
                .await
                .expect("MIGRATE");
        }
    }

    /// The second half of [`move_slot`](Self::move_slot), after
    /// [`start_slot_move`](Self::start_slot_move): `SETSLOT NODE` on the target, the source
    /// and every other primary; returns once every running node sees `to` owning `slot`.
    pub async fn finish_slot_move(&self, slot: u16, from: usize, to: usize) {
        let mut source = self.nodes[from].client().await;
        let mut target = self.nodes[to].client().await;
        let mut node = redis::cmd("CLUSTER");
        node.arg("SETSLOT").arg(slot).arg("NODE").arg(&self.ids[to]);
        let _: () = node
            .query_async(&mut target)
            .await
            .expect("SETSLOT NODE on the target");
        let _: () = node
            .query_async(&mut source)
            .await
            .expect("SETSLOT NODE on the source");
        let primaries: Vec<usize> = self
            .shards(to)
            .await
            .into_iter()
            .filter(|node| node.role == "master" && node.health == "online")
            .map(|node| self.index_of(&node.id))
            .filter(|&index| index != from && index != to)
            .collect();
        for other in primaries {
            let mut conn = self.nodes[other].client().await;
            let _: () = node
                .query_async(&mut conn)
                .await
                .expect("SETSLOT NODE on another primary");
        }
        let what =
            format!("after moving slot {slot} from node {from}, every node sees node {to} own it");
        poll_until(&what, CHANGE_TIMEOUT, async || {
            self.all_see_owner(&[(slot, slot)], to, None).await
        })
        .await;
    }

    /// Waits until every running node reports `cluster_state:ok` again.
    pub async fn wait_until_ok(&self) {
        poll_until("the cluster heals", Duration::from_secs(20), async || {
            for index in self.live() {
                let info = self.cluster_info(index).await;
                if !info.contains("cluster_state:ok") {
                    return Err(format!("node {index}: {info}"));
                }
            }
            Ok(())
        })
        .await;
    }

    /// The nodes whose process runs.
    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&index| self.nodes[index].is_running())
    }

    fn index_of(&self, id: &str) -> usize {
        self.ids
            .iter()
            .position(|known| known == id)
            .unwrap_or_else(|| panic!("no node has id {id}"))
    }

    async fn query<T: FromRedisValue>(&self, index: usize, cmd: &redis::Cmd) -> T {
        let mut conn = self.nodes[index].client().await;
        cmd.query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("node {index}: {e}"))
    }

    async fn cluster_info(&self, index: usize) -> String {
        self.query(index, redis::cmd("CLUSTER").arg("INFO")).await
    }

    async fn replication_link_up(&self, index: usize) -> bool {
        let info: String = self
            .query(index, redis::cmd("INFO").arg("replication"))
            .await;
        info.contains("master_link_status:up")
    }

    async fn slots(&self, index: usize) -> Vec<SlotRange> {
        parse_slots(self.query(index, redis::cmd("CLUSTER").arg("SLOTS")).await)
    }

    async fn shards(&self, index: usize) -> Vec<ShardNode> {
        parse_shards(self.query(index, redis::cmd("CLUSTER").arg("SHARDS")).await)
    }

    /// Who owns `slot` in node `viewer`'s view.
    async fn owner_in_view(&self, viewer: usize, slot: u16) -> Option<usize> {
        self.slots(viewer)
            .await
            .into_iter()
            .find(|range| (range.first..=range.last).contains(&slot))
            .map(|range| self.index_of(&range.primary))
    }

    /// `Ok` when every running node sees `owner` owning each of `ranges` whole (with
    /// `follower` among its replicas, when given), else who some node sees instead.
    async fn all_see_owner(
        &self,
        ranges: &[(u16, u16)],
        owner: usize,
        follower: Option<usize>,
    ) -> Result<(), String> {
        let mut seen = String::new();
        for viewer in self.live() {
            let view = self.slots(viewer).await;
            for &(first, last) in ranges {
                let covered = view.iter().any(|range| {
                    range.first <= first
                        && last <= range.last
                        && range.primary == self.ids[owner]
                        && follower.is_none_or(|node| range.replicas.contains(&self.ids[node]))
                });
                if !covered {
                    let owners: Vec<_> = view
                        .iter()
                        .filter(|range| range.first <= last && first <= range.last)
                        .map(|range| {
                            let replicas: Vec<usize> =
                                range.replicas.iter().map(|id| self.index_of(id)).collect();
                            let primary = self.index_of(&range.primary);
                            format!(
                                "{}-{} by {primary} with {replicas:?}",
                                range.first, range.last
                            )
                        })
                        .collect();
                    let _ = write!(
                        seen,
                        "node {viewer} sees {first}-{last} owned as {owners:?}; "
                    );
                }
            }
        }
        if seen.is_empty() { Ok(()) } else { Err(seen) }
    }
}
