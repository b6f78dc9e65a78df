//! The cluster's topology as `CLUSTER SHARDS` reports it: each shard's slot ranges and
//! nodes (id, address, role, health). The health check pings every primary that owns
//! slots and refuses a cluster whose slots are not all owned by a healthy primary; the
//! node ids are what tells two connections apart (a node keeps its id across restarts and
//! address changes, where `run_id` changes with each restart).

use crate::store::StoreError;
use crate::store::valkey::store_error;
use redis::Value;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};

/// Slots of a Valkey Cluster.
pub(crate) const SLOTS: usize = 16_384;

/// One node of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    /// The node's id (`CLUSTER MYID`).
    pub(crate) id: String,
    /// The address clients use (`endpoint`: by the cluster's preferred endpoint type).
    pub(crate) host: String,
    /// The plaintext or TLS port, whichever the node lists (TLS first).
    pub(crate) port: u16,
    /// `role` is `master`.
    pub(crate) primary: bool,
    /// `health` is `online`.
    pub(crate) online: bool,
}

/// One shard: the slot ranges it owns (inclusive) and its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shard {
    pub(crate) slots: Vec<(u16, u16)>,
    pub(crate) nodes: Vec<Node>,
}

/// A shard that owns slots, and the primary that serves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owned {
    /// Inclusive ranges, in order.
    pub(crate) slots: Vec<(u16, u16)>,
    pub(crate) owner: Node,
}

/// A `CLUSTER SHARDS` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Topology {
    pub(crate) shards: Vec<Shard>,
}

impl Topology {
    /// The topology as the primary of slot 0 reports it. Asked of one slot's owner, not of
    /// any node: redis-rs routes a keyless command to a random node it knows, which after a
    /// failover may be the dead one, and each such failure would read as an outage.
    pub(crate) async fn read(conn: &mut ClusterConnection) -> Result<Self, StoreError> {
        let mut shards = redis::cmd("CLUSTER");
        shards.arg("SHARDS");
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
            0,
            SlotAddr::Master,
        )));
        let answer = conn
            .route_command(shards, routing)
            .await
            .map_err(store_error)?;
        Self::parse(&answer)
    }

    /// Reads a `CLUSTER SHARDS` answer, RESP2 (flat key/value arrays) or RESP3 (maps).
    pub(crate) fn parse(answer: &Value) -> Result<Self, StoreError> {
        let Value::Array(shards) = answer else {
            return Err(malformed("not an array"));
        };
        let shards = shards.iter().map(shard).collect::<Result<_, _>>()?;
        Ok(Self { shards })
    }

    /// The online primaries that own slots, each once. (A killed primary whose replica
    /// took over stays listed in its shard as a failed primary until it returns.)
    pub(crate) fn owners(&self) -> Vec<&Node> {
        let mut owners: Vec<&Node> = Vec::new();
        for shard in self.shards.iter().filter(|s| !s.slots.is_empty()) {
            for node in shard.nodes.iter().filter(|n| n.primary && n.online) {
                if !owners.iter().any(|known| known.id == node.id) {
                    owners.push(node);
                }
            }
        }
        owners
    }

    /// Who owns which slots, in one order whichever node was asked: each shard, by its
    /// first slot, with its one online primary; `None` while a shard that owns slots has no
    /// online primary, or more than one (a failover under way). Shards without slots come
    /// first (a primary just added, which a resharding may give slots at any moment), by
    /// their primary's id; one without an online primary owns nothing and is left out.
    pub(crate) fn ownership(&self) -> Option<Vec<Owned>> {
        let mut owned = Vec::new();
        for shard in &self.shards {
            let mut primaries = shard.nodes.iter().filter(|n| n.primary && n.online);
            let owner = match (primaries.next(), primaries.next()) {
                (Some(owner), None) => owner,
                _ if shard.slots.is_empty() => continue,
                _ => return None,
            };
            let mut slots = shard.slots.clone();
            slots.sort_unstable();
            owned.push(Owned {
                slots,
                owner: owner.clone(),
            });
        }
        owned.sort_by(|a, b| (a.slots.first(), &a.owner.id).cmp(&(b.slots.first(), &b.owner.id)));
        Some(owned)
    }

    /// The first slot that no healthy primary owns, if any: its sessions cannot be read or
    /// written, so the service is not ready.
    pub(crate) fn uncovered_slot(&self) -> Option<usize> {
        let mut covered = vec![false; SLOTS];
        for shard in &self.shards {
            if !shard.nodes.iter().any(|n| n.primary && n.online) {
                continue;
            }
            for &(first, last) in &shard.slots {
                let range = usize::from(first)..=usize::from(last).min(SLOTS - 1);
                if let Some(slots) = covered.get_mut(range) {
                    slots.fill(true);
                }
            }
        }
        covered.iter().position(|&c| !c)
    }
}

fn malformed(why: &str) -> StoreError {
    StoreError::Protocol(format!("unexpected CLUSTER SHARDS answer: {why}"))
}

/// The fields of a map, RESP3 (`Map`) or RESP2 (a flat key/value array).
fn fields(value: &Value) -> Result<Vec<(&str, &Value)>, StoreError> {
    let pairs: Vec<(&Value, &Value)> = match value {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        Value::Array(flat) if flat.len() % 2 == 0 => {
            flat.chunks(2).map(|pair| (&pair[0], &pair[1])).collect()
        }
        _ => return Err(malformed("a shard or node is not a map")),
    };
    pairs
        .into_iter()
        .map(|(key, value)| text(key).map(|key| (key, value)))
        .collect()
}

fn text(value: &Value) -> Result<&str, StoreError> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).map_err(|_| malformed("not UTF-8")),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => Ok(text),
        _ => Err(malformed("a field is not a string")),
    }
}

fn number(value: &Value) -> Result<i64, StoreError> {
    match value {
        Value::Int(n) => Ok(*n),
        _ => text(value)?
            .parse()
            .map_err(|_| malformed("a number is not one")),
    }
}

fn shard(value: &Value) -> Result<Shard, StoreError> {
    let mut slots = Vec::new();
    let mut nodes = Vec::new();
    for (key, value) in fields(value)? {
        match (key, value) {
            ("slots", Value::Array(bounds)) => {
                if bounds.len() % 2 != 0 {
                    return Err(malformed("an odd number of slot bounds"));
                }
                for pair in bounds.chunks(2) {
                    let slot = |v: &Value| {
                        number(v).and_then(|n| {
                            u16::try_from(n)
                                .ok()
                                .filter(|&s| usize::from(s) < SLOTS)
                                .ok_or_else(|| malformed("a slot out of range"))
                        })
                    };
                    slots.push((slot(&pair[0])?, slot(&pair[1])?));
                }
            }
            ("nodes", Value::Array(list)) => {
                nodes = list.iter().map(node).collect::<Result<_, _>>()?;
            }
            _ => {}
        }
    }
    Ok(Shard { slots, nodes })
}

fn node(value: &Value) -> Result<Node, StoreError> {
    let (mut id, mut endpoint, mut ip) = (None, None, None);
    let (mut port, mut tls_port) = (None, None);
    let (mut primary, mut online) = (false, false);
    for (key, value) in fields(value)? {
        match key {
            "id" => id = Some(text(value)?.to_owned()),
            "endpoint" => endpoint = text(value).ok().map(str::to_owned),
            "ip" => ip = Some(text(value)?.to_owned()),
            "port" => port = Some(number(value)?),
            "tls-port" => tls_port = Some(number(value)?),
            "role" => primary = text(value)? == "master",
            "health" => online = text(value)? == "online",
            _ => {}
        }
    }
    // `endpoint` is "?" when unknown and empty for "the host you asked"; the ip then.
    let host = endpoint
        .filter(|e| !e.is_empty() && e != "?")
        .or(ip)
        .ok_or_else(|| malformed("a node without an address"))?;
    let port = tls_port
        .or(port)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| malformed("a node without a port"))?;
    Ok(Node {
        id: id.ok_or_else(|| malformed("a node without an id"))?,
        host,
        port,
        primary,
        online,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    /// A node as RESP2 writes it: a flat key/value array.
    fn node2(id: &str, port: i64, role: &str, health: &str) -> Value {
        Value::Array(vec![
            bulk("id"),
            bulk(id),
            bulk("port"),
            Value::Int(port),
            bulk("ip"),
            bulk("10.0.0.1"),
            bulk("endpoint"),
            bulk("10.0.0.1"),
            bulk("role"),
            bulk(role),
            bulk("replication-offset"),
            Value::Int(72),
            bulk("health"),
            bulk(health),
        ])
    }

    fn shard2(slots: &[i64], nodes: Vec<Value>) -> Value {
        Value::Array(vec![
            bulk("slots"),
            Value::Array(slots.iter().map(|&s| Value::Int(s)).collect()),
            bulk("nodes"),
            Value::Array(nodes),
        ])
    }

    #[test]
    fn shards_name_their_owners_and_the_slots_they_cover() {
        let answer = Value::Array(vec![
            shard2(
                &[0, 8191],
                vec![
                    node2("a", 7000, "master", "online"),
                    node2("a2", 7003, "replica", "online"),
                ],
            ),
            shard2(&[8192, 16383], vec![node2("b", 7001, "master", "online")]),
            // A primary without slots (being added) owns nothing.
            shard2(&[], vec![node2("c", 7002, "master", "online")]),
            // A killed primary, its replica promoted: listed, failed, in its old shard.
            shard2(
                &[10000, 10001],
                vec![
                    node2("d", 7005, "master", "fail"),
                    node2("d2", 7006, "master", "online"),
                ],
            ),
        ]);
        let topology = Topology::parse(&answer).expect("parses");
        let owners: Vec<(&str, u16)> = topology
            .owners()
            .iter()
            .map(|n| (n.id.as_str(), n.port))
            .collect();
        assert_eq!(owners, [("a", 7000), ("b", 7001), ("d2", 7006)]);
        assert_eq!(topology.uncovered_slot(), None);
    }

    #[test]
    fn ownership_reads_alike_from_any_node_and_needs_one_primary_per_shard() {
        let a = || shard2(&[0, 8191], vec![node2("a", 7000, "master", "online")]);
        let b = || {
            shard2(
                &[8192, 16383],
                vec![
                    node2("b2", 7004, "replica", "online"),
                    node2("b", 7001, "master", "online"),
                ],
            )
        };
        let one = Topology::parse(&Value::Array(vec![a(), b()])).expect("parses");
        let other = Topology::parse(&Value::Array(vec![b(), a()])).expect("parses");
        let owned = one.ownership().expect("owned");
        assert_eq!(Some(owned.clone()), other.ownership(), "order-free");
        let owners: Vec<(&str, u16)> = owned
            .iter()
            .map(|o| (o.owner.id.as_str(), o.slots[0].0))
            .collect();
        assert_eq!(owners, [("a", 0), ("b", 8192)]);
        // A primary just added, without slots yet, is watched too (first).
        let added = || shard2(&[], vec![node2("c", 7002, "master", "online")]);
        let grown = Topology::parse(&Value::Array(vec![a(), added(), b()])).expect("parses");
        let watched: Vec<String> = grown
            .ownership()
            .expect("owned")
            .into_iter()
            .map(|o| o.owner.id)
            .collect();
        assert_eq!(watched, ["c", "a", "b"]);
        // Mid-failover: two primaries claim one shard, or none is online.
        for shard in [
            shard2(
                &[8192, 16383],
                vec![
                    node2("b", 7001, "master", "online"),
                    node2("b2", 7004, "master", "online"),
                ],
            ),
            shard2(&[8192, 16383], vec![node2("b", 7001, "master", "fail")]),
        ] {
            let topology = Topology::parse(&Value::Array(vec![a(), shard])).expect("parses");
            assert_eq!(topology.ownership(), None);
        }
    }

    #[test]
    fn a_slot_without_a_healthy_primary_is_uncovered() {
        let answer = Value::Array(vec![
            shard2(&[0, 99], vec![node2("a", 7000, "master", "online")]),
            shard2(&[100, 16383], vec![node2("b", 7001, "master", "fail")]),
        ]);
        let topology = Topology::parse(&answer).expect("parses");
        assert_eq!(topology.uncovered_slot(), Some(100));
        let gap = Value::Array(vec![shard2(
            &[0, 99, 101, 16383],
            vec![node2("a", 7000, "master", "online")],
        )]);
        assert_eq!(
            Topology::parse(&gap).expect("parses").uncovered_slot(),
            Some(100)
        );
    }

    #[test]
    fn resp3_maps_read_like_resp2_arrays() {
        let node = Value::Map(vec![
            (bulk("id"), bulk("a")),
            (bulk("tls-port"), Value::Int(7443)),
            (bulk("port"), Value::Int(7000)),
            (bulk("ip"), bulk("10.0.0.1")),
            (bulk("endpoint"), bulk("?")),
            (bulk("role"), bulk("master")),
            (bulk("health"), bulk("online")),
        ]);
        let shard = Value::Map(vec![
            (
                bulk("slots"),
                Value::Array(vec![Value::Int(0), Value::Int(16383)]),
            ),
            (bulk("nodes"), Value::Array(vec![node])),
        ]);
        let topology = Topology::parse(&Value::Array(vec![shard])).expect("parses");
        let owner = topology.owners()[0].clone();
        assert_eq!(
            (owner.host.as_str(), owner.port),
            ("10.0.0.1", 7443),
            "the ip when the endpoint is unknown; the TLS port first"
        );
    }

    #[test]
    fn malformed_answers_are_errors_not_empty_clusters() {
        for bad in [
            Value::Nil,
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![shard2(&[0], vec![])]),
            Value::Array(vec![shard2(&[0, 16384], vec![])]),
            Value::Array(vec![shard2(
                &[0, 1],
                vec![Value::Array(vec![bulk("port"), Value::Int(1)])],
            )]),
        ] {
            assert!(Topology::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
