//! `barazo-session --probe`: asks a running server with the same configuration whether it is
//! ready, for container health checks in an image that has no shell or probe tool.

use crate::config::Config;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a probe may take before it counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The address to reach a listener bound to `addr` from the same host.
fn local(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    addr
}

/// Whether the server is ready: `/readyz` on the admin listener when one is configured
/// (it works whatever TLS the gRPC port requires), else `grpc.health.v1` on the plaintext
/// gRPC port. Prints why not, when not.
pub async fn ready(config: &Config) -> bool {
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, async {
        if let Some(admin) = config.metrics_listen {
            return readyz(local(admin)).await;
        }
        if config.tls_cert.is_some() {
            return Err("the gRPC port requires TLS: set METRICS_LISTEN to probe /readyz".into());
        }
        grpc_health(local(config.listen)).await
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")));
    match outcome {
        Ok(()) => true,
        Err(why) => {
            eprintln!("barazo-session --probe: not ready: {why}");
            false
        }
    }
}

async fn readyz(addr: SocketAddr) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.split(' ').nth(1).unwrap_or_default();
    if status == "200" {
        Ok(())
    } else {
        Err(format!("/readyz answered {status}"))
    }
}

async fn grpc_health(addr: SocketAddr) -> Result<(), String> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|e| e.message().to_owned())?
        .into_inner()
        .status;
    if status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        // The name (`NOT_SERVING`), as grpcurl and the health protocol's docs spell it.
        let name = ServingStatus::try_from(status).map_or_else(
            |_| format!("unknown ({status})"),
            |s| s.as_str_name().to_owned(),
        );
        Err(format!("health status {name}"))
    }
}
