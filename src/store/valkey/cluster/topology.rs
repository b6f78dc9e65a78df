//! The cluster's primaries (`CLUSTER SLOTS`), for the health check.

use super::Shared;
use crate::store::StoreError;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use std::sync::Arc;

impl Shared {
    pub(super) async fn ping(
        self: Arc<Self>,
        mut conn: ClusterConnection,
    ) -> Result<(), StoreError> {
        // A PING to each primary the cluster lists, by address: a dead node makes its share
        // of the sessions unusable, so the service is not ready. (Not one PING routed to
        // all primaries: redis-rs skips nodes it has no connection to, and answers OK.)
        let slots: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .map_err(crate::store::valkey::store_error)?;
        for (host, port) in primaries(&slots)? {
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
            conn.route_command(redis::cmd("PING"), routing)
                .await
                .map_err(crate::store::valkey::store_error)?;
        }
        // A read on this service's own key space, as in standalone mode: it also fails while
        // the cluster reports itself down (CLUSTERDOWN), which PING does not show.
        let _: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.keys.health_probe())
            .query_async(&mut conn)
            .await
            .map_err(crate::store::valkey::store_error)?;
        Ok(())
    }
}

/// The primaries' addresses in a `CLUSTER SLOTS` answer: each entry is `[first slot, last
/// slot, [host, port, id, …] of the primary, replicas…]`.
pub(super) fn primaries(slots: &redis::Value) -> Result<Vec<(String, u16)>, StoreError> {
    use redis::Value;
    let malformed = || StoreError::Protocol("unexpected CLUSTER SLOTS answer".to_owned());
    let Value::Array(ranges) = slots else {
        return Err(malformed());
    };
    let mut found = Vec::new();
    for range in ranges {
        let Value::Array(range) = range else {
            return Err(malformed());
        };
        let Some(Value::Array(primary)) = range.get(2) else {
            return Err(malformed());
        };
        let host = match primary.first() {
            Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
            Some(Value::SimpleString(host)) => host.clone(),
            _ => return Err(malformed()),
        };
        let port = match primary.get(1) {
            Some(Value::Int(port)) => u16::try_from(*port).map_err(|_| malformed())?,
            _ => return Err(malformed()),
        };
        if !found.contains(&(host.clone(), port)) {
            found.push((host, port));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::primaries;
    use redis::Value;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn primaries_are_read_from_cluster_slots_once_each() {
        let slots = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(99),
                node("10.0.0.1", 6379),
                node("10.0.0.9", 6379),
            ]),
            Value::Array(vec![
                Value::Int(100),
                Value::Int(199),
                node("10.0.0.2", 6380),
            ]),
            Value::Array(vec![
                Value::Int(200),
                Value::Int(299),
                node("10.0.0.1", 6379),
            ]),
        ]);
        let found = primaries(&slots).map_err(|e| e.to_string());
        assert_eq!(
            found,
            Ok(vec![
                ("10.0.0.1".to_owned(), 6379),
                ("10.0.0.2".to_owned(), 6380)
            ])
        );
    }

    #[test]
    fn a_malformed_answer_is_an_error_not_an_empty_list() {
        assert!(primaries(&Value::Nil).is_err());
        assert!(primaries(&Value::Array(vec![Value::Array(vec![Value::Int(0)])])).is_err());
        assert!(
            primaries(&Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(1),
                node("h", 70_000),
            ])]))
            .is_err()
        );
    }
}
