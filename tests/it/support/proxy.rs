//! A TCP proxy whose target can be switched for new connections only, as a DNS name or a
//! Sentinel-managed endpoint moves after a failover while established connections stay
//! where they were.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The proxy: listening on `addr`, forwarding each new connection to the current target.
pub struct Proxy {
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `target` on an ephemeral port.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let target = Arc::new(Mutex::new(target));
        let accept = tokio::spawn({
            let target = target.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let to = *target.lock().expect("target");
                    tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(to).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            }
        });
        Self {
            addr,
            target,
            accept,
        }
    }

    /// `redis://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Sends new connections to `target` from now on; established ones stay.
    pub fn switch(&self, target: SocketAddr) {
        *self.target.lock().expect("target") = target;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
