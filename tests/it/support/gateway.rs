//! Real gateways (nginx, Caddy, Traefik) started from the example configs in `deploy/`,
//! their placeholder names replaced by the test's addresses, between an HTTP client and an
//! upstream: the configs an operator copies are the ones tested.

use super::pki::TempDir;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Which gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// nginx with `auth_request`: `deploy/nginx/barazo-forward-auth.conf`.
    Nginx,
    /// Caddy with `forward_auth`: `deploy/caddy/Caddyfile`.
    Caddy,
    /// Traefik with `forwardAuth`: `deploy/traefik/{traefik,dynamic}.yml`.
    Traefik,
}

/// A running gateway, killed on drop.
pub struct Gateway {
    process: tokio::process::Child,
    /// Its public listener.
    pub addr: SocketAddr,
    dir: TempDir,
}

/// The placeholder for the gateway's own credential in every example config.
const KEY_PLACEHOLDER: &str = "REPLACE-WITH-THE-GATEWAY-SERVICE-KEY";

impl Gateway {
    /// Starts `kind` in front of `upstream`, asking the service's HTTP listener `service`,
    /// sending `key` as the gateway's credential; returns once it answers on its port.
    pub async fn start(kind: Kind, service: SocketAddr, upstream: SocketAddr, key: &str) -> Self {
        // Between probing a port and the gateway binding it another process may take it;
        // then the gateway exits and another port is tried.
        for _ in 0..5 {
            let port = free_port();
            let dir = TempDir::new();
            let command = render(kind, &dir, port, service, upstream, key);
            if let Some(gateway) = Self::spawn(kind, command, port, dir).await {
                return gateway;
            }
        }
        panic!("{kind:?} did not start on any of 5 ports");
    }

    async fn spawn(
        kind: Kind,
        mut command: tokio::process::Command,
        port: u16,
        dir: TempDir,
    ) -> Option<Self> {
        let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log file");
        let mut process = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{kind:?} starts (scripts/tools.sh installs it): {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let gateway_log = || std::fs::read_to_string(dir.path().join("gateway.log"));
        // Ready when it answers a request through its route: Traefik listens before its
        // routes are loaded (404 until then); the others answer with the route at once.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = process.try_wait() {
                let log = gateway_log().unwrap_or_default();
                if log.contains("in use") {
                    return None;
                }
                panic!("{kind:?} exited ({status}):\n{log}");
            }
            if let Ok((status, _, _)) = super::http::request(addr, "GET", "/", &[], b"").await
                && status != 0
                && status != 404
            {
                return Some(Self { process, addr, dir });
            }
            assert!(
                Instant::now() < deadline,
                "{kind:?} did not answer within 30 s:\n{}",
                gateway_log().unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What it logged so far, for a failing assertion's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.process.start_kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port")
}

/// The example file `deploy/<path>` with each `(from, to)` replaced, asserting each `from`
/// is there: a renamed placeholder fails here, not as a puzzling gateway error.
fn example(path: &str, replacements: &[(&str, String)]) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path);
    let mut text =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    for (from, to) in replacements {
        assert!(text.contains(from), "deploy/{path} has {from}");
        text = text.replace(from, to);
    }
    text
}

/// Writes `kind`'s config into `dir` for the given addresses; the command that runs it.
fn render(
    kind: Kind,
    dir: &TempDir,
    port: u16,
    service: SocketAddr,
    upstream: SocketAddr,
    key: &str,
) -> tokio::process::Command {
    let service_port = service.port();
    let upstream_port = upstream.port();
    match kind {
        Kind::Nginx => {
            let site = example(
                "nginx/barazo-forward-auth.conf",
                &[
                    (
                        "server barazo-session:8081;",
                        format!("server 127.0.0.1:{service_port};"),
                    ),
                    (
                        "server plugins:8000;",
                        format!("server 127.0.0.1:{upstream_port};"),
                    ),
                    ("listen 8080;", format!("listen 127.0.0.1:{port};")),
                    (KEY_PLACEHOLDER, key.to_owned()),
                ],
            );
            let site = dir.write("barazo-forward-auth.conf", site);
            let prefix = dir.path().display();
            // One process (no master and workers): killing it ends nginx, no orphaned
            // worker keeps the port. Everything it writes is under the temp dir.
            let main = dir.write(
                "nginx.conf",
                format!(
                    "daemon off;\nmaster_process off;\npid {prefix}/nginx.pid;\n\
                     error_log stderr notice;\nevents {{ worker_connections 256; }}\n\
                     http {{\n    access_log off;\n\
                     client_body_temp_path {prefix}/body;\n    proxy_temp_path {prefix}/proxy;\n\
                     fastcgi_temp_path {prefix}/fastcgi;\n    uwsgi_temp_path {prefix}/uwsgi;\n\
                     scgi_temp_path {prefix}/scgi;\n    include {};\n}}\n",
                    site.display()
                ),
            );
            let mut command = tokio::process::Command::new(super::tool("NGINX"));
            command
                .arg("-p")
                .arg(dir.path())
                .args(["-e", "stderr", "-c"])
                .arg(main);
            command
        }
        Kind::Caddy => {
            let caddyfile = example(
                "caddy/Caddyfile",
                &[
                    // Tests run several Caddys at once: no admin endpoint to share.
                    ("admin localhost:2019", "admin off".to_owned()),
                    ("\n:8080 {\n", format!("\n:{port} {{\n\tbind 127.0.0.1\n")),
                    (
                        "forward_auth barazo-session:8081 {",
                        format!("forward_auth 127.0.0.1:{service_port} {{"),
                    ),
                    (
                        "reverse_proxy plugins:8000",
                        format!("reverse_proxy 127.0.0.1:{upstream_port}"),
                    ),
                    (KEY_PLACEHOLDER, key.to_owned()),
                ],
            );
            let caddyfile = dir.write("Caddyfile", caddyfile);
            let mut command = tokio::process::Command::new(super::tool("CADDY"));
            command
                .args(["run", "--adapter", "caddyfile", "--config"])
                .arg(caddyfile)
                // Caddy's state (autosave.json, certificates) in the temp dir.
                .env("HOME", dir.path())
                .env("XDG_CONFIG_HOME", dir.path())
                .env("XDG_DATA_HOME", dir.path());
            command
        }
        Kind::Traefik => {
            let dynamic = example(
                "traefik/dynamic.yml",
                &[
                    (
                        "http://barazo-session:8081/v1/forward-auth",
                        format!("http://127.0.0.1:{service_port}/v1/forward-auth"),
                    ),
                    (
                        "url: http://plugins:8000",
                        format!("url: http://127.0.0.1:{upstream_port}"),
                    ),
                    (KEY_PLACEHOLDER, key.to_owned()),
                ],
            );
            let dynamic = dir.write("dynamic.yml", dynamic);
            let traefik = example(
                "traefik/traefik.yml",
                &[
                    (
                        "address: \":8080\"",
                        format!("address: \"127.0.0.1:{port}\""),
                    ),
                    (
                        "filename: /etc/traefik/dynamic.yml",
                        format!("filename: {}", dynamic.display()),
                    ),
                ],
            );
            let traefik = dir.write("traefik.yml", traefik);
            let mut command = tokio::process::Command::new(super::tool("TRAEFIK"));
            command
                .arg(format!("--configFile={}", traefik.display()))
                .env("HOME", dir.path());
            command
        }
    }
}
