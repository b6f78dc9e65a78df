//! Wiring: binds the listener, builds the store, and serves the session service with
//! health and reflection until a shutdown signal.

use crate::api::call::{CallLimits, Calls};
use crate::api::ext_authz::ExtAuthz;
use crate::api::health;
use crate::api::revocations::Revocations;
use crate::api::sessions::SessionApi;
use crate::api::undecodable::{Undecodable, UndecodableLayer};
use crate::api::validation::AccessTokens;
use crate::authz::{AuthLayer, Authorized, Policy};
use crate::cache::feed::Subscribers;
use crate::cache::{FeedEvents, OwnWrites, ValidationCache};
use crate::config::{Config, StoreKind, Switch, ValkeyMode};
use crate::gateway::listener::{ConnectionLimits, HttpListener};
use crate::gateway::{self, Gateway};
use crate::observe::admin;
use crate::observe::metrics::Metrics;
use crate::observe::profile::{ProfileLayer, Profiled};
use crate::proto::session_service_server::SessionServiceServer;
use crate::rpc::Rpc;
use crate::store::SessionStore;
use crate::store::memory::MemoryStore;
use crate::store::valkey::{self, ValkeyClusterStore, ValkeyOptions, ValkeyStore};
use crate::transport::connections;
use crate::transport::descriptors;
use crate::transport::{Delivered, DeliveryLayer, TlsError, Transport};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tower_layer::Layer as _;

/// Largest request message tonic decodes for the session service: the largest any of its
/// RPCs accepts (a `ValidateAccessTokens` batch); each RPC's own, smaller limit is applied
/// to the decoded message ([`Rpc::max_request_bytes`]).
pub const MAX_REQUEST_BYTES: usize = Rpc::ValidateAccessTokens.max_request_bytes();

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address from the configuration.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The Valkey URL was refused by the client library.
    #[error("cannot use the Valkey URL")]
    ValkeyUrl(#[source] redis::RedisError),
    /// The reflection service could not load the descriptors (a build defect).
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A configured file (certificate, key, CA) could not be read.
    #[error("cannot read {what} {path}")]
    ReadFile {
        /// What the file is for.
        what: &'static str,
        /// The configured path.
        path: String,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The TLS settings were refused (e.g. a malformed certificate or key).
    #[error("cannot use the TLS settings")]
    Tls(#[source] TlsError),
    /// The Valkey password file could not be read.
    #[error(transparent)]
    ValkeyPassword(#[from] crate::config::SecretFileError),
    /// The authorization policy could not be used.
    #[error(transparent)]
    Policy(#[from] crate::authz::PolicyError),
}

fn read_file(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, StartupError> {
    std::fs::read(path).map_err(|source| StartupError::ReadFile {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// The TLS settings of a listener speaking `alpn`, if any (both listeners take the same).
fn tls_config(
    config: &Config,
    alpn: &[&[u8]],
) -> Result<Option<tokio_rustls::TlsAcceptor>, StartupError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let client_ca = match &config.tls_client_ca {
        // A CA makes client certificates required, not optional.
        Some(ca) => Some(read_file("the client CA", ca)?),
        None => None,
    };
    crate::transport::tls_acceptor(
        &read_file("the TLS certificate", cert)?,
        &read_file("the TLS key", key)?,
        client_ca.as_deref(),
        alpn,
    )
    .map(Some)
    .map_err(StartupError::Tls)
}

/// The authorization policy, if configured; without one, a warning that anyone may call.
fn policy(config: &Config) -> Result<Option<Arc<Policy>>, StartupError> {
    match &config.authz_policy {
        Some(path) => Ok(Some(Arc::new(Policy::load(path)?))),
        None => {
            tracing::warn!(
                "no authorization policy (--authz-policy): every caller that reaches the port may call every RPC, including CreateSession for any DID"
            );
            Ok(None)
        }
    }
}

/// How connections are served: bounded streams per connection, HTTP/2 keepalive, the
/// idle timeout, TLS when configured. The per-call time limit is the service's (it answers
/// DEADLINE_EXCEEDED, where the transport's would answer CANCELLED); the transport's
/// backstop, a second later, is for what happens before the handler, such as a client that
/// sends its request slowly to hold a stream.
fn transport(config: &Config) -> Result<Transport, StartupError> {
    Ok(Transport {
        tls: tls_config(config, crate::transport::ALPN_GRPC)?,
        handshake_timeout: config.handshake_timeout,
        max_concurrent_streams: config.max_concurrent_streams,
        keepalive_interval: config.http2_keepalive_interval,
        keepalive_timeout: config.http2_keepalive_timeout,
        idle_timeout: config.idle_connection_timeout,
        backstop: config
            .request_timeout
            .saturating_add(Duration::from_secs(1)),
    })
}

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// In-flight calls did not finish within the shutdown timeout.
    #[error("in-flight calls did not finish within {0:?}")]
    DrainTimeout(Duration),
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The request stack [`request_stack`] builds over the routes.
type Router = Delivered<Profiled<Authorized<Undecodable<Routes>>>>;

/// A bound, ready-to-run server. Tests build it on `127.0.0.1:0` and ask for the port.
pub struct Application {
    incoming: TcpIncoming,
    local_addr: SocketAddr,
    router: Router,
    transport: Transport,
    health: HealthReporter,
    health_monitor: BoxFuture,
    metrics: Arc<Metrics>,
    admin: Option<tokio::net::TcpListener>,
    /// The HTTP listener for gateways and its routes, when `--http-listen` is set.
    http: Option<(HttpListener, axum::Router)>,
    max_connections: usize,
    shutdown_timeout: Duration,
    handshake_timeout: Duration,
    /// Turns true when the drain begins: open `WatchRevocations` streams end then, so that
    /// they do not hold the drain until its timeout.
    draining: watch::Sender<bool>,
}

impl Application {
    /// Binds the listener and prepares the store and services. Does not wait for Valkey:
    /// the service starts `NOT_SERVING` and turns `SERVING` when the store answers.
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        let bind = |source| StartupError::Bind {
            addr: config.listen,
            source,
        };
        let incoming = TcpIncoming::bind(config.listen)
            .map_err(bind)?
            .with_nodelay(Some(true));
        let local_addr = incoming.local_addr().map_err(bind)?;
        let admin = match config.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartupError::Bind { addr, source })?,
            ),
            None => None,
        };
        // `--max-connections` holds for each listener; the descriptor limit must hold both.
        let listeners = 1 + usize::from(config.http_listen.is_some());
        let max_connections = descriptors::connections_within(
            config.max_connections.saturating_mul(listeners),
            descriptors::raise_limit(),
        ) / listeners;
        let http_listener = match config.http_listen {
            Some(addr) => Some(HttpListener {
                listener: tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartupError::Bind { addr, source })?,
                tls: tls_config(config, crate::transport::ALPN_HTTP)?,
                max_connections,
                limits: ConnectionLimits {
                    handshake_timeout: config.handshake_timeout,
                    idle_timeout: config.idle_connection_timeout,
                    max_concurrent_streams: config.max_concurrent_streams,
                    keepalive_interval: config.http2_keepalive_interval,
                    keepalive_timeout: config.http2_keepalive_timeout,
                },
            }),
            None => None,
        };

        let metrics = Arc::new(Metrics::new());
        let (draining, draining_rx) = watch::channel(false);
        let health = HealthReporter::new();
        let health_service = HealthServer::new(HealthService::from_health_reporter(health.clone()));
        // Until the first successful ping, nobody should route traffic here.
        health::publish(&health, ServingStatus::NotServing).await;
        health::publish_alive(&health).await;
        let parts = Parts {
            config,
            draining: draining_rx,
            health: health.clone(),
            health_service,
            metrics: metrics.clone(),
            revocations: None,
            validation_cache: None,
        };
        let (served, health_monitor) = match config.store {
            StoreKind::Valkey => {
                let password = config
                    .valkey_password()?
                    .map(|secret| secret.expose().to_owned());
                let ca_pem = match &config.valkey_ca {
                    Some(path) => Some(read_file("the Valkey CA", path)?),
                    None => None,
                };
                let connect_timeout = config.valkey_connect_timeout;
                let command_timeout = config.valkey_command_timeout;
                let options = ValkeyOptions {
                    urls: config.valkey_urls(),
                    password,
                    ca_pem,
                    key_prefix: config.key_prefix.clone(),
                    connect_timeout,
                    command_timeout,
                };
                // The feed runs with the cache off too: it feeds WatchRevocations.
                let subscribers = Subscribers {
                    cache: (config.validation_cache == Switch::On).then(|| {
                        ValidationCache::new(
                            config.validation_cache_entries as usize,
                            metrics.clone(),
                        )
                    }),
                    events: FeedEvents::new(metrics.clone()),
                };
                let feed_timeout = connect_timeout.max(command_timeout);
                let prefix = options.key_prefix.clone();
                let parts = Parts {
                    revocations: Some(subscribers.events.clone()),
                    validation_cache: subscribers.cache.clone(),
                    ..parts
                };
                let (router, monitor, feed): (_, _, BoxFuture) = match config.valkey_mode {
                    ValkeyMode::Standalone => {
                        let store = ValkeyStore::new(&options, metrics.clone())
                            .map_err(StartupError::ValkeyUrl)?;
                        let client =
                            valkey::standalone::client(&options, redis::ProtocolVersion::RESP3)
                                .map_err(StartupError::ValkeyUrl)?;
                        let feed = crate::cache::feed::run(
                            client,
                            subscribers.clone(),
                            store.command_side(),
                            prefix,
                            feed_timeout,
                        );
                        let (router, monitor) = with_own_writes(store, &subscribers, parts)?;
                        (router, monitor, Box::pin(feed))
                    }
                    ValkeyMode::Cluster => {
                        let store = ValkeyClusterStore::new(&options, metrics.clone())
                            .map_err(StartupError::ValkeyUrl)?;
                        let feed = crate::cache::feed::run_cluster(
                            subscribers.clone(),
                            store.command_side(),
                            prefix,
                            feed_timeout,
                        );
                        let (router, monitor) = with_own_writes(store, &subscribers, parts)?;
                        (router, monitor, Box::pin(feed))
                    }
                };
                let both: BoxFuture = Box::pin(async move {
                    tokio::join!(monitor, feed);
                });
                (router, both)
            }
            StoreKind::Memory => routes(MemoryStore::new(), parts)?,
        };
        Ok(Self {
            incoming,
            local_addr,
            router: served.grpc,
            http: http_listener.zip(served.http),
            transport: transport(config)?,
            health,
            health_monitor,
            metrics,
            admin,
            max_connections,
            shutdown_timeout: config.shutdown_timeout,
            handshake_timeout: config.handshake_timeout,
            draining,
        })
    }

    /// The address actually bound (the real port when the configuration said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Logs the one startup line an operator looks for: what runs, against which store, on
    /// which addresses (the ports actually bound), with which protections. No secret: the
    /// Valkey addresses lose their credentials.
    pub fn announce(&self, config: &Config) {
        let store = match config.store {
            StoreKind::Memory => "memory (development only: lost on restart)".to_owned(),
            StoreKind::Valkey => {
                let mode = match config.valkey_mode {
                    ValkeyMode::Standalone => "standalone",
                    ValkeyMode::Cluster => "cluster",
                };
                format!("valkey {mode} {}", config.valkey_addresses())
            }
        };
        let admin = self
            .metrics_addr()
            .map_or_else(|| "off".to_owned(), |addr| addr.to_string());
        let http = self
            .http_addr()
            .map_or_else(|| "off".to_owned(), |addr| addr.to_string());
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            profile = crate::observe::profile::PROFILE,
            addr = %self.local_addr,
            admin = %admin,
            http = %http,
            store = %store,
            tls = config.tls_mode(),
            policy = if config.authz_policy.is_some() { "on" } else { "off" },
            reflection = config.reflection,
            "listening"
        );
    }

    /// The admin listener's address, when `--metrics-listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The HTTP listener's address, when `--http-listen` is set.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
            .as_ref()
            .and_then(|(http, _)| http.listener.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then stops accepting connections and lets
    /// in-flight calls finish, for at most the configured shutdown timeout.
    pub async fn run_until<F>(self, shutdown: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let monitor = tokio::spawn(self.health_monitor).abort_handle();
        // The admin listener outlives the drain (readiness says 503 meanwhile) and stops after.
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = self.admin.map(|listener| {
            let app = admin::router(self.metrics.clone());
            tokio::spawn(async move {
                let stopped = async {
                    let _ = admin_stopped.await;
                };
                // Capped and time-limited: silent connections to the admin port must not take
                // the descriptors the gRPC port needs.
                if let Err(err) = axum::serve(admin::AdminListener::new(listener), app)
                    .with_graceful_shutdown(stopped)
                    .await
                {
                    tracing::error!(error = %err, "admin listener failed");
                }
            })
        });
        // The HTTP listener stops accepting when the drain begins, as the gRPC listener does,
        // and finishes its open requests within the same drain deadline.
        let (http_stop, http_stopped) = watch::channel(false);
        let http = self.http.map(|(listener, app)| {
            let mut stopped = http_stopped.clone();
            tokio::spawn(listener.serve(app, async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }))
        });
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        let (health, stop_monitor, metrics) = (self.health, monitor.clone(), self.metrics);
        let draining = self.draining;
        let shutdown = async move {
            shutdown.await;
            // Streams that would run forever end now (their callers reconnect elsewhere),
            // told that the server is going before the feed they follow stops below.
            draining.send_replace(true);
            // The monitor stops so that it cannot report SERVING again once health is
            // withdrawn below; the feed stops with it, and the cache with the feed.
            stop_monitor.abort();
            metrics.begin_draining();
            health::withdraw(health).await;
            http_stop.send_replace(true);
            tracing::info!("shutdown requested: draining in-flight calls");
            let _ = signalled_tx.send(());
        };
        let incoming =
            connections::limit(self.incoming, self.max_connections, self.handshake_timeout);
        let serve = self.transport.serve(incoming, self.router, shutdown);
        tokio::pin!(serve);
        let drain_deadline = async {
            // The sender is dropped without a send only when serving ended first.
            if signalled_rx.await.is_ok() {
                tokio::time::sleep(self.shutdown_timeout).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let drained = async {
            (&mut serve).await;
            if let Some(http) = http {
                let _ = http.await;
            }
        };
        let result = tokio::select! {
            () = drained => Ok(()),
            () = drain_deadline => Err(ServeError::DrainTimeout(self.shutdown_timeout)),
        };
        monitor.abort();
        let _ = admin_stop.send(());
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        result
    }
}

/// What serves requests over one store: the gRPC request stack, and the HTTP listener's
/// routes when `--http-listen` is set.
struct Served {
    grpc: Router,
    http: Option<axum::Router>,
}

/// What `routes` needs besides the store.
struct Parts<'a> {
    config: &'a Config,
    /// Turns true when the drain begins.
    draining: watch::Receiver<bool>,
    health: HealthReporter,
    health_service: HealthServer<HealthService>,
    metrics: Arc<Metrics>,
    /// The invalidation feed behind `WatchRevocations`, where the store has one.
    revocations: Option<Arc<FeedEvents>>,
    /// The validation cache, when on: validations answered from it, filled by them.
    validation_cache: Option<Arc<ValidationCache>>,
}

/// Builds the gRPC routes over one store, and the task that keeps its health status.
/// The routes over `store`, with this replica's own writes shown in its cache at once when
/// the cache is on.
fn with_own_writes<S: SessionStore>(
    store: S,
    subscribers: &Subscribers,
    parts: Parts<'_>,
) -> Result<(Served, BoxFuture), StartupError> {
    match &subscribers.cache {
        Some(cache) => routes(OwnWrites::new(store, cache.clone()), parts),
        None => routes(store, parts),
    }
}

fn routes<S: SessionStore>(
    store: S,
    parts: Parts<'_>,
) -> Result<(Served, BoxFuture), StartupError> {
    let Parts {
        config,
        draining,
        health,
        health_service,
        metrics,
        revocations,
        validation_cache,
    } = parts;
    let store = Arc::new(store);
    // One validation path and one per-call layer (one concurrency limit) for both services.
    let tokens = AccessTokens::new(store.clone(), config.lifetimes(), metrics.clone());
    let tokens = Arc::new(match validation_cache {
        Some(cache) => tokens.with_cache(cache),
        None => tokens,
    });
    let calls = Arc::new(Calls::new(
        CallLimits {
            max_in_progress: config.max_concurrent_requests,
            time_limit: config.request_timeout,
        },
        metrics.clone(),
    ));
    let sessions = SessionServiceServer::new(SessionApi::new(
        store.clone(),
        tokens.clone(),
        config.lifetimes(),
        metrics.clone(),
        calls.clone(),
        Revocations::new(
            revocations,
            config.max_revocation_streams as usize,
            draining,
        ),
    ))
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    let authz = AuthLayer::new(
        policy(config)?,
        metrics.clone(),
        config.max_concurrent_requests,
    );
    let http = config.http_listen.map(|_| {
        gateway::router(Gateway {
            tokens: tokens.clone(),
            calls: calls.clone(),
            authz: authz.clone(),
            metrics: metrics.clone(),
            cookie: config.forward_auth_cookie.clone(),
        })
    });
    let ext_authz = ExtAuthz::new(tokens, calls).into_server();
    let mut router = Routes::new(health_service)
        .add_service(sessions)
        .add_service(ext_authz);
    if config.reflection {
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(crate::proto::EXT_AUTHZ_DESCRIPTOR_SET)
                // google.rpc.ErrorInfo, so that grpcurl shows why a session ended.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        // Both versions: grpcurl before 1.9 and many other tools only speak v1alpha.
        router = router
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?);
    }
    let grpc = request_stack(router, authz, config, &metrics);
    let monitor = health::monitor(store, health, metrics, config.health_check_interval);
    Ok((Served { grpc, http }, Box::pin(monitor)))
}

/// Every layer a request passes on its way to the routes, outermost first (the transport
/// adds only the connection's identity and the backstop around it):
/// 1. delivery: a response the client does not take within the call's time limit is reset
///    (`transport/delivery.rs`);
/// 2. profile: a debug build marks every response, refusals included;
/// 3. authorization: the policy and each caller's concurrency budget;
/// 4. undecodable: tonic's answer to a request it cannot decode becomes INVALID_ARGUMENT
///    (innermost, so it sees tonic's own answers);
/// 5. the routes: sessions, ext_authz, health, reflection; each session RPC then runs
///    through the per-call layer (`api/call.rs`: shedding, deadline, span, metrics).
fn request_stack(
    routes: Routes,
    authz: AuthLayer,
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Router {
    let undecodable = UndecodableLayer::new(metrics.clone()).layer(routes.prepare());
    let authorized = authz.layer(undecodable);
    let profiled = ProfileLayer::new().layer(authorized);
    DeliveryLayer::new(config.request_timeout).layer(profiled)
}

/// Listens for SIGTERM (orchestrators) and SIGINT (Ctrl-C) from the moment it is called,
/// and resolves when either arrives. Call it before announcing the service: a signal that
/// arrives before the handlers exist would kill the process without a drain.
#[cfg(unix)]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// Resolves on Ctrl-C (platforms without Unix signals).
#[cfg(not(unix))]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
