//! How the tool reaches a server: plaintext to the servers it starts; to `--addr` with the
//! same TLS, mTLS and service key as a real caller (docs/security.md).
//!
//! Certificates, keys and the service key are read once, before anything is connected or
//! created, and every problem names the flag it came from.

use crate::spawn::BoxError;
use barazo_session::config::Secret;
use barazo_session::proto::session_service_client::SessionServiceClient;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use std::path::Path;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The session service's generated client, sending the caller's credentials.
type Sessions = SessionServiceClient<InterceptedService<Channel, Credentials>>;

/// A client of both services on one connection, sending the caller's credentials with
/// every call: the session RPCs (through `Deref`), and ext_authz `Check` (`authz`), as a
/// gateway calls it.
#[derive(Clone)]
pub struct Client {
    sessions: Sessions,
    /// Envoy's `envoy.service.auth.v3.Authorization`.
    pub authz: AuthorizationClient<InterceptedService<Channel, Credentials>>,
}

impl std::ops::Deref for Client {
    type Target = Sessions;

    fn deref(&self) -> &Sessions {
        &self.sessions
    }
}

impl std::ops::DerefMut for Client {
    fn deref_mut(&mut self) -> &mut Sessions {
        &mut self.sessions
    }
}

/// The `authorization: Bearer <key>` metadata of a service key, or nothing.
#[derive(Clone, Default)]
pub struct Credentials(Option<AsciiMetadataValue>);

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The flags a connection to `--addr` is made from.
pub struct Flags<'a> {
    /// `--tls-ca`: PEM CA bundle; TLS when set.
    pub tls_ca: Option<&'a Path>,
    /// `--tls-domain`: the name the server's certificate must carry, if not the address's host.
    pub tls_domain: Option<&'a str>,
    /// `--tls-cert`: PEM client certificate chain (mTLS).
    pub tls_cert: Option<&'a Path>,
    /// `--tls-key`: its PEM private key.
    pub tls_key: Option<&'a Path>,
    /// `--service-key` / `SESSION_BENCH_SERVICE_KEY`.
    pub service_key: Option<&'a Secret>,
}

/// How to connect: TLS settings (with everything already read) and credentials.
#[derive(Clone, Default)]
pub struct Connector {
    tls: Option<ClientTlsConfig>,
    credentials: Credentials,
}

/// Reads a PEM file that must hold at least one block whose label satisfies `wanted`.
fn read_pem(
    flag: &str,
    path: &Path,
    what: &str,
    wanted: impl Fn(&str) -> bool,
    problems: &mut Vec<String>,
) -> Option<Vec<u8>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            problems.push(format!("{flag} {}: cannot read it: {err}", path.display()));
            return None;
        }
    };
    let found = x509_parser::pem::Pem::iter_from_buffer(&bytes)
        .map_while(Result::ok)
        .any(|pem| wanted(&pem.label));
    if found {
        Some(bytes)
    } else {
        problems.push(format!("{flag} {}: holds no PEM {what}", path.display()));
        None
    }
}

impl Connector {
    /// Plaintext, no credentials: for the servers the tool starts itself.
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// Reads the files and the key the flags name; all problems at once, each naming its
    /// flag (never the key itself).
    pub fn from_flags(flags: &Flags<'_>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let certificate = |label: &str| label == "CERTIFICATE";
        let tls = flags.tls_ca.and_then(|ca| {
            let ca = read_pem("--tls-ca", ca, "certificate", certificate, &mut problems)?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            if let Some(domain) = flags.tls_domain {
                tls = tls.domain_name(domain);
            }
            Some(tls)
        });
        let identity = match (flags.tls_cert, flags.tls_key) {
            (Some(cert), Some(key)) => {
                let cert = read_pem(
                    "--tls-cert",
                    cert,
                    "certificate",
                    certificate,
                    &mut problems,
                );
                let key = read_pem(
                    "--tls-key",
                    key,
                    "private key",
                    |label| label.ends_with("PRIVATE KEY"),
                    &mut problems,
                );
                cert.zip(key)
                    .map(|(cert, key)| Identity::from_pem(cert, key))
            }
            _ => None,
        };
        let tls = match (tls, identity) {
            (Some(tls), Some(identity)) => Some(tls.identity(identity)),
            (tls, _) => tls,
        };
        let credentials = match flags.service_key.map(Secret::expose) {
            None => Credentials(None),
            Some("") => {
                problems.push("--service-key (SESSION_BENCH_SERVICE_KEY) is empty".into());
                Credentials(None)
            }
            Some(key) => match AsciiMetadataValue::try_from(format!("Bearer {key}")) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    Credentials(Some(value))
                }
                Err(_) => {
                    problems.push(
                        "--service-key (SESSION_BENCH_SERVICE_KEY) cannot be sent in a header: it must be printable ASCII"
                            .into(),
                    );
                    Credentials(None)
                }
            },
        };
        if problems.is_empty() {
            Ok(Self { tls, credentials })
        } else {
            Err(problems)
        }
    }

    /// A new HTTP/2 connection to `addr` (`host:port`).
    pub async fn channel(&self, addr: &str) -> Result<Channel, BoxError> {
        let endpoint = match &self.tls {
            None => Channel::from_shared(format!("http://{addr}"))?,
            Some(tls) => {
                Channel::from_shared(format!("https://{addr}"))?.tls_config(tls.clone())?
            }
        };
        Ok(endpoint.tcp_nodelay(true).connect().await?)
    }

    /// A client over `channel`, sending the credentials.
    pub fn client(&self, channel: Channel) -> Client {
        Client {
            sessions: SessionServiceClient::with_interceptor(
                channel.clone(),
                self.credentials.clone(),
            ),
            authz: AuthorizationClient::with_interceptor(channel, self.credentials.clone()),
        }
    }

    /// `connections` session clients over distinct connections.
    pub async fn clients(&self, addr: &str, connections: usize) -> Result<Vec<Client>, BoxError> {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            clients.push(self.client(self.channel(addr).await?));
        }
        Ok(clients)
    }
}

/// What a server's health check said.
pub struct Health {
    /// The whole server's status.
    pub status: ServingStatus,
    /// The answer's metadata (a debug build marks itself there).
    pub metadata: MetadataMap,
}

/// Asks a server's standard health service about the whole server (always open, even
/// under a policy).
pub async fn health(channel: Channel) -> Result<Health, BoxError> {
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    let metadata = answer.metadata().clone();
    let status = ServingStatus::try_from(answer.into_inner().status)?;
    Ok(Health { status, metadata })
}
