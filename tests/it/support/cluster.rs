//! A real Valkey Cluster of three primaries for one test: `cluster-enabled` servers on
//! ephemeral ports, slots assigned with `CLUSTER ADDSLOTSRANGE`, nodes joined with
//! `CLUSTER MEET`, ready once every node reports `cluster_state:ok`.

use super::pki::{Pem, TempDir, tls_proxy};
use super::valkey::Valkey;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// Three primaries, killed on drop.
pub struct ValkeyCluster {
    nodes: Vec<Valkey>,
    /// How clients reach each node (the node itself, or a TLS proxy in front of it).
    urls: Vec<String>,
    _dir: TempDir,
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

impl ValkeyCluster {
    /// Starts and joins the cluster; returns once all slots are served.
    pub async fn start() -> Self {
        Self::form(None).await
    }

    /// The same cluster reached only through TLS: each node sits behind a TLS proxy
    /// presenting `server` and announces the proxy's port (`cluster-announce-port`), so
    /// clients that discover the topology also connect through TLS.
    pub async fn start_behind_tls(server: &Pem) -> Self {
        Self::form(Some(server)).await
    }

    async fn form(tls: Option<&Pem>) -> Self {
        let dir = TempDir::new();
        let mut nodes = Vec::new();
        let mut urls = Vec::new();
        for _ in 0..3 {
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
            ]
            .map(str::to_owned)
            .into();
            match tls {
                Some(server) => {
                    let proxy = tls_proxy(port, server).await;
                    args.extend([
                        "--cluster-announce-port".to_owned(),
                        proxy.to_string(),
                        // The bus stays on the node's own port + 10000.
                        "--cluster-announce-bus-port".to_owned(),
                        (port + 10_000).to_string(),
                    ]);
                    urls.push(format!("rediss://127.0.0.1:{proxy}"));
                }
                None => urls.push(format!("redis://127.0.0.1:{port}")),
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            nodes.push(Valkey::start_on_with(port, &args));
        }
        let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
        let mut conns = Vec::new();
        for (node, (from, to)) in nodes.iter().zip(ranges) {
            let mut conn = node.client().await;
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(from)
                .arg(to)
                .query_async(&mut conn)
                .await
                .expect("ADDSLOTSRANGE");
            conns.push(conn);
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
        // Readiness: every node sees the whole cluster serving (gossip takes ~1 s).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut ok = true;
            for conn in &mut conns {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(conn)
                    .await
                    .expect("CLUSTER INFO");
                ok &= info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3");
            }
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not form in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            nodes,
            urls,
            _dir: dir,
        }
    }

    /// The seed URLs, comma-separated, as `VALKEY_URL` takes them in cluster mode.
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

    /// Waits until every running node reports `cluster_state:ok` again.
    pub async fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut ok = true;
            for node in &self.nodes {
                let mut conn = node.client().await;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .expect("CLUSTER INFO");
                ok &= info.contains("cluster_state:ok");
            }
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not heal in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
