//! The test harness: a real server on `127.0.0.1:0`, a real Valkey, generated clients.

pub mod cluster;
pub mod gateway;
pub mod http;
pub mod monitor;
pub mod pki;
pub mod policy;
pub mod promql;
pub mod proxy;
pub mod raw;
pub mod upstream;
pub mod valkey;

use barazo_session::config::{Config, StoreKind};
use barazo_session::proto::session_service_client::SessionServiceClient;
use barazo_session::proto::{
    CreateSessionRequest, CreateSessionResponse, DeleteAllSessionsForDidRequest,
    DeleteSessionRequest, RefreshSessionRequest, RefreshSessionResponse,
    ValidateAccessTokenRequest, ValidateAccessTokenResponse, ValidateAccessTokensRequest,
};
use barazo_session::server::{Application, ServeError};
use clap::Parser;
use std::net::SocketAddr;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
pub use valkey::Valkey;

/// Whether `key` is a validation cache feed's marker (`<prefix>feed:<16 hex>`), which a
/// running standalone server keeps in its database by design (docs/sessions.md, "Storage layout").
pub fn is_feed_marker(key: &str) -> bool {
    key.rsplit_once("feed:")
        .is_some_and(|(_, id)| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Why a call says its session ended: the `google.rpc.ErrorInfo` reason in its details
/// (domain `session.barazo.forum`) and its metadata, sorted.
pub fn end_reason(status: &tonic::Status) -> Option<(String, Vec<(String, String)>)> {
    use tonic_types::StatusExt;
    let info = status.get_details_error_info()?;
    assert_eq!(info.domain, "session.barazo.forum");
    let mut metadata: Vec<_> = info.metadata.into_iter().collect();
    metadata.sort();
    Some((info.reason, metadata))
}

/// Whether `key` remembers why a revoked session ended (`<prefix>ended:<40 or 64 hex>`),
/// which a revocation leaves by design for as long as the session would have lived
/// (docs/sessions.md, "Storage layout").
pub fn is_end_record(key: &str) -> bool {
    key.rsplit_once("ended:").is_some_and(|(_, id)| {
        (id.len() == 40 || id.len() == 64) && id.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// Whether a running server keeps `key` by design, apart from sessions: a feed's marker
/// or why a revoked session ended.
pub fn is_bookkeeping(key: &str) -> bool {
    is_feed_marker(key) || is_end_record(key)
}

/// A server under test, with its own Valkey when it uses the Valkey store.
pub struct TestApp {
    /// The generated client, connected the way callers connect.
    pub client: SessionServiceClient<Channel>,
    /// The standard health client.
    pub health: HealthClient<Channel>,
    /// The server's bound address.
    pub addr: SocketAddr,
    /// The admin listener's address, when `--metrics-listen` was given.
    pub metrics_addr: Option<SocketAddr>,
    /// The HTTP listener's address, when `--http-listen` was given.
    pub http_addr: Option<SocketAddr>,
    /// The Valkey behind the server, if any.
    pub valkey: Option<Valkey>,
    /// The Valkey Cluster behind the server, if any.
    pub cluster: Option<cluster::ValkeyCluster>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), ServeError>>>,
}

/// Builds the configuration the way the binary does, from flags.
pub fn config(store: StoreKind, valkey_url: Option<&str>, extra: &[&str]) -> Config {
    let mut args = vec![
        "barazo-session".to_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--store".into(),
        match store {
            StoreKind::Valkey => "valkey".into(),
            StoreKind::Memory => "memory".into(),
        },
    ];
    if !extra.contains(&"--health-check-interval-ms") {
        // Fast enough that tests see health changes quickly.
        args.extend(["--health-check-interval-ms".into(), "100".into()]);
    }
    if let Some(url) = valkey_url {
        args.extend(["--valkey-url".into(), url.to_owned()]);
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Config::try_parse_from(args)
        .expect("test flags parse")
        .validated()
        .expect("test config is valid")
}

/// What a test server stores sessions in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The in-memory store.
    Memory,
    /// A standalone Valkey.
    Valkey,
    /// A Valkey Cluster of three primaries.
    Cluster,
}

impl From<StoreKind> for Backend {
    fn from(store: StoreKind) -> Self {
        match store {
            StoreKind::Memory => Self::Memory,
            StoreKind::Valkey => Self::Valkey,
        }
    }
}

impl TestApp {
    /// A server on `backend` with default settings, serving once it reports `SERVING`.
    pub async fn spawn(backend: impl Into<Backend>) -> Self {
        Self::spawn_with(backend, &[]).await
    }

    /// A server on `backend` with extra flags, serving once it reports `SERVING`.
    pub async fn spawn_with(backend: impl Into<Backend>, extra: &[&str]) -> Self {
        let app = match backend.into() {
            Backend::Memory => Self::spawn_against(StoreKind::Memory, None, extra).await,
            Backend::Valkey => {
                Self::spawn_against(StoreKind::Valkey, Some(Valkey::start()), extra).await
            }
            Backend::Cluster => {
                let cluster = cluster::ValkeyCluster::start().await;
                let mut flags = vec!["--valkey-mode", "cluster"];
                flags.extend_from_slice(extra);
                let urls = cluster.urls();
                let mut app =
                    Self::spawn_config(config(StoreKind::Valkey, Some(&urls), &flags), None, None)
                        .await;
                app.cluster = Some(cluster);
                app
            }
        };
        app.wait_for_health(ServingStatus::Serving).await;
        app
    }

    /// A server with the given Valkey (or none, or one not yet started), not waiting for
    /// it to be healthy.
    pub async fn spawn_against(store: StoreKind, valkey: Option<Valkey>, extra: &[&str]) -> Self {
        let url = valkey.as_ref().map(Valkey::url);
        Self::spawn_config(config(store, url.as_deref(), extra), valkey, None).await
    }

    /// A server from a ready configuration; `tls` is how the test's own client connects
    /// to a TLS listener.
    pub async fn spawn_config(
        config: Config,
        valkey: Option<Valkey>,
        tls: Option<ClientTlsConfig>,
    ) -> Self {
        let app = Application::build(&config).await.expect("server builds");
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr();
        let http_addr = app.http_addr();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = shutdown_rx.await;
        }));
        let channel = connect(addr, tls).await.expect("connect to the server");
        Self {
            client: SessionServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
            addr,
            metrics_addr,
            http_addr,
            valkey,
            cluster: None,
            shutdown: Some(shutdown_tx),
            server: Some(server),
        }
    }

    /// The Valkey behind the server.
    pub fn valkey(&self) -> &Valkey {
        self.valkey.as_ref().expect("this app runs on Valkey")
    }

    /// The Valkey behind the server, to kill or restart.
    pub fn valkey_mut(&mut self) -> &mut Valkey {
        self.valkey.as_mut().expect("this app runs on Valkey")
    }

    /// Opens the standard health `Watch` stream for the whole server.
    pub async fn watch_health(&self) -> tonic::Streaming<HealthCheckResponse> {
        self.health
            .clone()
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health watch")
            .into_inner()
    }

    /// Waits, through the standard `Watch` stream, until the server reports `status`.
    pub async fn wait_for_health(&self, status: ServingStatus) {
        let mut stream = self.watch_health().await;
        let wait = async {
            while let Some(update) = stream.next().await {
                if update.expect("health update").status == status as i32 {
                    return;
                }
            }
            panic!("health stream ended before {status:?}");
        };
        tokio::time::timeout(std::time::Duration::from_secs(15), wait)
            .await
            .unwrap_or_else(|_| panic!("server did not report {status:?} within 15 s"));
    }

    /// The current overall health status.
    pub async fn health_status(&self) -> ServingStatus {
        let response = self
            .health
            .clone()
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check")
            .into_inner();
        ServingStatus::try_from(response.status).expect("known status")
    }

    /// Creates a session for a fresh DID, asserting success.
    pub async fn create(&self, did: &str, handle: &str) -> CreateSessionResponse {
        login(self.client.clone(), did, handle)
            .await
            .expect("create succeeds")
    }

    /// Validates a token, asserting the call itself succeeds.
    pub async fn validate(&self, token: &str) -> ValidateAccessTokenResponse {
        self.try_validate(token).await.expect("validate answers")
    }

    /// Validates `tokens` in one `ValidateAccessTokens` call, returning the status on failure.
    pub async fn validate_many(
        &self,
        tokens: &[String],
    ) -> Result<Vec<ValidateAccessTokenResponse>, tonic::Status> {
        self.client
            .clone()
            .validate_access_tokens(ValidateAccessTokensRequest {
                access_tokens: tokens.to_vec(),
            })
            .await
            .map(|answer| answer.into_inner().results)
    }

    /// Validates a token, returning the status on failure.
    pub async fn try_validate(
        &self,
        token: &str,
    ) -> Result<ValidateAccessTokenResponse, tonic::Status> {
        self.client
            .clone()
            .validate_access_token(ValidateAccessTokenRequest {
                access_token: token.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Refreshes a session, returning the status on failure.
    pub async fn refresh(
        &self,
        refresh_token: &str,
    ) -> Result<RefreshSessionResponse, tonic::Status> {
        self.client
            .clone()
            .refresh_session(RefreshSessionRequest {
                refresh_token: refresh_token.into(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Refreshes a session from a tab that holds `previous_access_token` (revoked by the
    /// refresh when it is a live token of the session), returning the status on failure.
    pub async fn refresh_tab(
        &self,
        refresh_token: &str,
        previous_access_token: &str,
    ) -> Result<RefreshSessionResponse, tonic::Status> {
        self.client
            .clone()
            .refresh_session(RefreshSessionRequest {
                refresh_token: refresh_token.into(),
                previous_access_token: previous_access_token.into(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Refreshes one session from `n` concurrent tasks; returns the new access tokens.
    pub async fn refresh_concurrently(&self, refresh_token: &str, n: usize) -> Vec<String> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let mut client = self.client.clone();
                let refresh_token = refresh_token.to_owned();
                tokio::spawn(async move {
                    client
                        .refresh_session(RefreshSessionRequest {
                            refresh_token,
                            ..Default::default()
                        })
                        .await
                        .expect("every refresh succeeds")
                        .into_inner()
                        .access_token
                })
            })
            .collect();
        let mut tokens = Vec::with_capacity(n);
        for task in tasks {
            tokens.push(task.await.expect("refresh task"));
        }
        tokens
    }

    /// Validates `token` from `n` concurrent tasks; returns every answer.
    pub async fn validate_concurrently(
        &self,
        token: &str,
        n: usize,
    ) -> Vec<Result<ValidateAccessTokenResponse, tonic::Status>> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let mut client = self.client.clone();
                let access_token = token.to_owned();
                tokio::spawn(async move {
                    client
                        .validate_access_token(ValidateAccessTokenRequest { access_token })
                        .await
                        .map(tonic::Response::into_inner)
                })
            })
            .collect();
        let mut answers = Vec::with_capacity(n);
        for task in tasks {
            answers.push(task.await.expect("validate task"));
        }
        answers
    }

    /// Deletes a session (logout), returning whether one existed.
    pub async fn delete(&self, refresh_token: &str) -> Result<bool, tonic::Status> {
        self.client
            .clone()
            .delete_session(DeleteSessionRequest {
                refresh_token: refresh_token.into(),
            })
            .await
            .map(|r| r.into_inner().deleted)
    }

    /// Deletes every session of a DID, returning how many existed.
    /// `UpdateHandle`: how many sessions of `did` carry `handle` now.
    pub async fn update_handle(&self, did: &str, handle: &str) -> Result<u32, tonic::Status> {
        self.client
            .clone()
            .update_handle(barazo_session::proto::UpdateHandleRequest {
                did: did.into(),
                handle: handle.into(),
            })
            .await
            .map(|r| r.into_inner().updated_count)
    }

    /// `DeleteAllSessionsForDid` with an account status (`AccountStatus` as its number).
    pub async fn delete_all_because(&self, did: &str, reason: i32) -> Result<u32, tonic::Status> {
        self.client
            .clone()
            .delete_all_sessions_for_did(DeleteAllSessionsForDidRequest {
                did: did.into(),
                reason,
            })
            .await
            .map(|r| r.into_inner().deleted_count)
    }

    pub async fn delete_all(&self, did: &str) -> Result<u32, tonic::Status> {
        self.client
            .clone()
            .delete_all_sessions_for_did(DeleteAllSessionsForDidRequest {
                did: did.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().deleted_count)
    }

    /// Asks the server to stop and waits for it, returning how serving ended.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server
            .take()
            .expect("running")
            .await
            .expect("server task did not panic")
    }
}

/// Creates a session through `client` (a clone of a [`TestApp`]'s, as a spawned task holds
/// one), returning the status on failure.
pub async fn login(
    mut client: SessionServiceClient<Channel>,
    did: &str,
    handle: &str,
) -> Result<CreateSessionResponse, tonic::Status> {
    client
        .create_session(CreateSessionRequest {
            did: did.into(),
            handle: handle.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A connection to a server at `addr`, over TLS when `tls` is given.
pub async fn connect(
    addr: SocketAddr,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    match tls {
        None => {
            Channel::from_shared(format!("http://{addr}"))
                .expect("valid uri")
                .connect()
                .await
        }
        Some(tls) => {
            Channel::from_shared(format!("https://{addr}"))
                .expect("valid uri")
                .tls_config(tls)?
                .connect()
                .await
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// A DID unique to the calling test.
pub fn unique_did() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "did:plc:test{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Lowercase hex SHA-256, as the AppView computes it.
pub fn sha256_hex(s: &str) -> String {
    barazo_session::domain::sha256_hex(s)
}

/// The external programs the tests run: the variable that may name each, then the names
/// looked for on PATH and in the git-ignored `.tools/bin`, where `scripts/tools.sh` (run by
/// `scripts/test.sh`) installs them all.
const TOOLS: &[(&str, &[&str])] = &[
    ("VALKEY_SERVER", &["valkey-server", "redis-server"]),
    ("GRPCURL", &["grpcurl"]),
    ("ENVOY", &["envoy"]),
    ("NGINX", &["nginx"]),
    ("CADDY", &["caddy"]),
    ("TRAEFIK", &["traefik"]),
];

/// The external program named by `env_var` (one of [`TOOLS`]): `$<env_var>`, then each of
/// its names on PATH, then in `.tools/bin`.
///
/// The first call looks for all of them. When any is missing the test binary stops there,
/// with one line saying what is missing and that `scripts/test.sh` installs it, instead of
/// every test that needs it failing on its own; no test has started a Valkey by then (each
/// start asks here first), so none is left running.
pub fn tool(env_var: &str) -> std::path::PathBuf {
    static FOUND: std::sync::OnceLock<Vec<(&str, std::path::PathBuf)>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(find_tools_or_exit)
        .iter()
        .find(|(var, _)| *var == env_var)
        .map(|(_, path)| path.clone())
        .unwrap_or_else(|| panic!("{env_var} is not one of the tools the tests look for"))
}

fn find_tools_or_exit() -> Vec<(&'static str, std::path::PathBuf)> {
    use std::io::Write;
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<_> = std::env::split_paths(&path).chain([local]).collect();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for &(env_var, names) in TOOLS {
        let path = std::env::var_os(env_var).map(Into::into).or_else(|| {
            names
                .iter()
                .find_map(|name| dirs.iter().map(|dir| dir.join(name)).find(|p| p.is_file()))
        });
        match path {
            Some(path) => found.push((env_var, path)),
            None => missing.push(format!("{} (${env_var})", names.join(" or "))),
        }
    }
    if !missing.is_empty() {
        // Straight to stderr: the test harness captures eprintln! of a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "\nThese tests need {}, found on neither PATH nor .tools/bin: run scripts/test.sh \
             (the README's test command), which installs them into .tools/bin and runs every \
             test.\n",
            missing.join(", ")
        );
        std::process::exit(1);
    }
    found
}
