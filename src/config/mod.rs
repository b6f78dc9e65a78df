//! Configuration from flags and environment variables (flags win).
//!
//! Every setting has one name, one default and a reason for that default. The variable
//! names the AppView already uses (`VALKEY_URL`, `OAUTH_SESSION_TTL`,
//! `OAUTH_ACCESS_TOKEN_TTL`) are reused so both can read one environment.
//!
//! Durations are `Duration`s from the moment they are parsed (the flags keep their units:
//! `--request-timeout-ms 5000`, `--session-ttl 900`), so no other module converts units.

mod checks;
mod durations;
mod load;
mod secrets;

pub use checks::{MAX_CONCURRENT_REQUESTS, MAX_CONNECTIONS, MAX_TTL_SECONDS};
pub use load::{LoadError, Origins, load_from};
pub use secrets::{Secret, SecretFileError};

use crate::observe::telemetry::LogFormat;
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which session store backs the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Valkey (or Redis), shared with the TypeScript AppView. Production.
    Valkey,
    /// Process memory: for development and the quick start; lost on restart.
    Memory,
}

/// A feature that is on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// How Valkey is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValkeyMode {
    /// One primary: every RPC is one atomic script, one round trip.
    Standalone,
    /// Valkey Cluster: `VALKEY_URL` lists seed nodes, comma-separated; each RPC is a few
    /// single-key round trips in a revocation-safe order (docs/cluster.md).
    Cluster,
}

/// The Barazo session authority: a gRPC SessionService backed by Valkey.
#[derive(Debug, Clone, Parser)]
#[command(name = "barazo-session", version, about)]
pub struct Config {
    /// Address of the gRPC listener. Loopback by default so that a bare start exposes
    /// nothing; in a container set `0.0.0.0:50051`.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Session store. `valkey` in production; `memory` only for development.
    #[arg(long, env = "SESSION_STORE", value_enum, default_value_t = StoreKind::Valkey)]
    pub store: StoreKind,

    /// Valkey URL, `redis://[user:password@]host:port[/db]`. The AppView's variable.
    /// A configured value is never printed (it may hold a password); only the default is.
    #[arg(
        long,
        env = "VALKEY_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub valkey_url: Secret,

    /// Standalone Valkey or Valkey Cluster.
    #[arg(long, env = "VALKEY_MODE", value_enum, default_value_t = ValkeyMode::Standalone)]
    pub valkey_mode: ValkeyMode,

    /// Answer repeat validations from this replica's memory, kept coherent by Valkey's
    /// invalidation pushes (docs/sessions.md, "Validation cache"). Both Valkey modes; the memory
    /// store needs no cache.
    #[arg(long, env = "VALIDATION_CACHE", value_enum, default_value_t = Switch::On)]
    pub validation_cache: Switch,

    /// Most answers the validation cache holds (one per access token presented; a few
    /// hundred bytes each). 65536: every token a large forum's users present within one
    /// 15-minute token lifetime.
    #[arg(long, env = "VALIDATION_CACHE_ENTRIES", default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub validation_cache_entries: u32,

    /// Most `WatchRevocations` streams open at once; beyond it RESOURCE_EXHAUSTED. Each
    /// costs a task and a 64-event buffer; 1024 is far more caching callers than a forum runs.
    #[arg(long, env = "MAX_REVOCATION_STREAMS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_revocation_streams: u32,

    /// Session lifetime in seconds, restarted by every refresh. The AppView's variable
    /// and default (7 days).
    #[arg(long, env = "OAUTH_SESSION_TTL", default_value = "604800", value_parser = durations::seconds)]
    pub session_ttl: Duration,

    /// Longest a session may live since its creation, in seconds, however often it is
    /// refreshed (an absolute deadline, as Discourse's `maximum_session_age` or Keycloak's
    /// SSO Session Max); `0` turns it off. 60 days: a user signs in again every two months.
    #[arg(long, env = "SESSION_MAX_LIFETIME", default_value = "5184000", value_parser = durations::seconds)]
    pub session_max_lifetime: Duration,

    /// Most live sessions one DID may hold; a login beyond it first revokes that DID's least
    /// recently refreshed sessions (Keycloak's "terminate oldest"), so a login always
    /// succeeds. `0`: no cap. 32: far more devices and browsers than one person uses, few
    /// enough that a leaked-credential loop cannot pile up sessions.
    #[arg(long, env = "MAX_SESSIONS_PER_DID", default_value_t = 32)]
    pub max_sessions_per_did: u32,

    /// Access token lifetime in seconds. The AppView's variable and default (15 minutes).
    #[arg(long, env = "OAUTH_ACCESS_TOKEN_TTL", default_value = "900", value_parser = durations::seconds)]
    pub access_token_ttl: Duration,

    /// Most live access tokens one session holds: each browser tab keeps its own, so a
    /// refresh in one tab does not log the others out. Past it a refresh revokes the
    /// oldest. 8 covers the tabs people keep open; 1 restores "each refresh revokes the
    /// previous token". 1 to 64.
    #[arg(long, env = "MAX_ACCESS_TOKENS_PER_SESSION", default_value_t = 8)]
    pub max_access_tokens_per_session: usize,

    /// Rotate refresh tokens: each RefreshSession returns a new one and stores only
    /// digests; reuse of an old one revokes the session. `off` while the TypeScript AppView
    /// may still answer `/api/auth/refresh` (its cookie must stay the session id); turn it
    /// on once every refresh and logout goes through this service (docs/sessions.md, "Refresh in the
    /// AppView").
    #[arg(long, env = "REFRESH_TOKEN_ROTATION", value_enum, default_value_t = Switch::Off)]
    pub refresh_token_rotation: Switch,

    /// Seconds after a rotation during which the previous refresh token is concurrent use
    /// (tabs that sent the same cookie at once get the same successor) rather than reuse
    /// (theft: the session is revoked). 10 s covers requests in flight; `0`: none.
    #[arg(long, env = "REFRESH_REUSE_GRACE", default_value = "10", value_parser = durations::seconds)]
    pub refresh_reuse_grace: Duration,

    /// Prefix of every key this service touches; the AppView's layout uses
    /// `barazo:session:`. Change it only together with the AppView.
    #[arg(long, env = "SESSION_KEY_PREFIX", default_value = "barazo:session:")]
    pub key_prefix: String,

    /// Milliseconds to wait for a Valkey connection before answering UNAVAILABLE. Short,
    /// because callers are waiting on a user's HTTP request.
    #[arg(
        long = "valkey-connect-timeout-ms",
        env = "VALKEY_CONNECT_TIMEOUT_MS",
        value_name = "VALKEY_CONNECT_TIMEOUT_MS",
        default_value = "500",
        value_parser = durations::millis
    )]
    pub valkey_connect_timeout: Duration,

    /// Milliseconds to wait for one Valkey answer before answering UNAVAILABLE. Scripts take
    /// well under a millisecond; anything near this means Valkey is in trouble.
    #[arg(
        long = "valkey-command-timeout-ms",
        env = "VALKEY_COMMAND_TIMEOUT_MS",
        value_name = "VALKEY_COMMAND_TIMEOUT_MS",
        default_value = "500",
        value_parser = durations::millis
    )]
    pub valkey_command_timeout: Duration,

    /// Milliseconds between store health checks (`grpc.health.v1` status). One check a
    /// second notices an outage quickly at no measurable cost.
    #[arg(
        long = "health-check-interval-ms",
        env = "HEALTH_CHECK_INTERVAL_MS",
        value_name = "HEALTH_CHECK_INTERVAL_MS",
        default_value = "1000",
        value_parser = durations::millis
    )]
    pub health_check_interval: Duration,

    /// Seconds to let in-flight calls finish after SIGTERM/SIGINT before exiting anyway.
    /// Below Kubernetes' default 30 s grace period.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "20", value_parser = durations::seconds)]
    pub shutdown_timeout: Duration,

    /// Address of the admin HTTP listener serving `/metrics`, `/livez` and `/readyz`, e.g.
    /// `0.0.0.0:9090`. Off unless set: nothing listens that nobody asked for.
    #[arg(long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Address of the HTTP listener for gateways that ask over HTTP, e.g. `0.0.0.0:8081`:
    /// forward auth (`/v1/forward-auth`, for nginx `auth_request`, Caddy `forward_auth`,
    /// Traefik `ForwardAuth`) and RFC 7662 introspection (`/v1/introspect`). Same TLS, mTLS,
    /// policy and limits as the gRPC listener; a caller allowed `Check` may use both. Off
    /// unless set.
    #[arg(long, env = "HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// Cookie that carries the user's access token for forward auth, read when the request
    /// has no `Authorization: Bearer` header. Unset: the header only.
    #[arg(long, env = "FORWARD_AUTH_COOKIE", value_parser = cookie_name)]
    pub forward_auth_cookie: Option<String>,

    /// PEM certificate chain for TLS on the gRPC listener (and the HTTP listener, when
    /// `--http-listen` is set). Off (plaintext) unless set, for
    /// a loopback or sidecar-encrypted deployment; set it wherever the network is shared.
    #[arg(long, env = "TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle for client certificates (mTLS): every client must present a
    /// certificate from it; its SAN (URI or DNS) is the caller's identity in the policy.
    #[arg(long, env = "TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// TOML file mapping callers (certificate identities, service-key digests) to the RPCs
    /// they may call. Without one every caller may do everything (a warning says so).
    #[arg(long, env = "AUTHZ_POLICY")]
    pub authz_policy: Option<PathBuf>,

    /// Serve gRPC reflection (grpcurl without proto files). With a policy, only callers
    /// allowed `ServerReflection` get it.
    #[arg(long, env = "REFLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub reflection: bool,

    /// File holding the Valkey password (as Kubernetes and Compose mount secrets); used
    /// when the URL has none. Never printed.
    #[arg(long, env = "VALKEY_PASSWORD_FILE")]
    pub valkey_password_file: Option<PathBuf>,

    /// PEM CA bundle to verify Valkey's certificate with `rediss://` URLs (default: the
    /// system's roots).
    #[arg(long, env = "VALKEY_CA")]
    pub valkey_ca: Option<PathBuf>,

    /// Calls handled at once (session RPCs, ext_authz `Check`, forward auth and
    /// introspection together), across all connections; beyond it calls are refused
    /// at once with RESOURCE_EXHAUSTED instead of queueing without bound.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,

    /// Longest a call may take, in milliseconds; a caller's shorter `grpc-timeout` wins.
    /// Far above a healthy call (under 1 ms) and the Valkey timeouts.
    #[arg(
        long = "request-timeout-ms",
        env = "REQUEST_TIMEOUT_MS",
        value_name = "REQUEST_TIMEOUT_MS",
        default_value = "5000",
        value_parser = durations::millis
    )]
    pub request_timeout: Duration,

    /// Client connections open at once on each listener; past it new ones wait unserved
    /// until one closes.
    /// Far above a fleet of AppView and plugin instances, far below the file-descriptor
    /// limit.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Longest a new connection may take, from accept, to finish its handshake (TLS, then
    /// the HTTP/2 preface and SETTINGS), in milliseconds; past it, it is closed. A client
    /// does it in one or two round trips; 5 s leaves room for a slow network while silent
    /// connections cannot hold the connection slots.
    #[arg(
        long = "handshake-timeout-ms",
        env = "HANDSHAKE_TIMEOUT_MS",
        value_name = "HANDSHAKE_TIMEOUT_MS",
        default_value = "5000",
        value_parser = durations::millis
    )]
    pub handshake_timeout: Duration,

    /// HTTP/2 streams one connection may have open at once, so one client cannot take the
    /// whole concurrency limit. 100 is RFC 9113's recommended minimum; it also bounds what a
    /// client that never reads its answers holds per connection (each such stream costs a
    /// few KiB until it is reset: 200 connections stay under 128 MiB).
    #[arg(long, env = "MAX_CONCURRENT_STREAMS", default_value_t = 100)]
    pub max_concurrent_streams: u32,

    /// Seconds between HTTP/2 keepalive pings to idle clients; dead peers are dropped.
    #[arg(long, env = "HTTP2_KEEPALIVE_INTERVAL", default_value = "30", value_parser = durations::seconds)]
    pub http2_keepalive_interval: Duration,

    /// Seconds to wait for a keepalive ping's answer before closing the connection.
    #[arg(long, env = "HTTP2_KEEPALIVE_TIMEOUT", default_value = "10", value_parser = durations::seconds)]
    pub http2_keepalive_timeout: Duration,

    /// Seconds a connection may stay open without an open stream; then it is closed with
    /// GOAWAY (graceful: the client reconnects when it next needs to). Well above the
    /// pauses between an AppView's bursts, so its pooled connections stay warm, while a
    /// client that only answers keepalive pings cannot hold a connection slot for ever.
    #[arg(long, env = "IDLE_CONNECTION_TIMEOUT", default_value = "300", value_parser = durations::seconds)]
    pub idle_connection_timeout: Duration,

    /// Threads that run calls. Default: the CPUs this process may use, container CPU
    /// limits included; set it where the process cannot see its CPU share.
    #[arg(long, env = "WORKER_THREADS")]
    pub worker_threads: Option<std::num::NonZeroUsize>,

    /// Do not serve: ask the server running with this configuration whether it is ready
    /// (`/readyz` if METRICS_LISTEN is set, else grpc.health.v1) and exit 0 if so, 1 if
    /// not. For container HEALTHCHECKs in an image without a shell.
    #[arg(long)]
    pub probe: bool,

    /// Log line format on stderr: `human` or `json`. Filter with `RUST_LOG` (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Tests only: moves this process's clock by this many milliseconds, to play a replica
    /// whose clock is wrong. Hidden from `--help`; no environment variable.
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    pub test_clock_offset_ms: i64,

    /// Where each setting came from, for messages that name what the operator typed.
    #[arg(skip)]
    pub origins: Origins,
}

/// Every problem found in a configuration, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Parses the process's flags and environment, then checks the values against each
    /// other. All problems are reported at once so an operator fixes a config in one round.
    pub fn load() -> Result<Self, LoadError> {
        load_from(std::env::args_os())
    }

    /// The Valkey URLs: one in standalone mode, the comma-separated seeds in cluster mode.
    pub fn valkey_urls(&self) -> Vec<String> {
        match self.valkey_mode {
            ValkeyMode::Standalone => vec![self.valkey_url.expose().to_owned()],
            ValkeyMode::Cluster => self
                .valkey_url
                .expose()
                .split(',')
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect(),
        }
    }

    /// The Valkey addresses for the startup log: scheme, host, port and database, with
    /// user name and password removed.
    pub fn valkey_addresses(&self) -> String {
        self.valkey_urls()
            .iter()
            .map(|url| {
                let scheme = if url.starts_with("rediss://") {
                    "rediss"
                } else {
                    "redis"
                };
                match redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
                    Ok(info) => match info.redis_settings().db() {
                        0 => format!("{scheme}://{}", info.addr()),
                        db => format!("{scheme}://{}/{db}", info.addr()),
                    },
                    Err(_) => "[unparsable]".to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// TLS on the gRPC listener: `off`, `tls`, or `mtls` (client certificates required).
    pub fn tls_mode(&self) -> &'static str {
        match (&self.tls_cert, &self.tls_client_ca) {
            (None, _) => "off",
            (Some(_), None) => "tls",
            (Some(_), Some(_)) => "mtls",
        }
    }

    /// Session and access token lifetimes and the cap per DID, as the store takes them.
    pub fn lifetimes(&self) -> crate::domain::Lifetimes {
        crate::domain::Lifetimes {
            session: self.session_ttl,
            access_token: self.access_token_ttl,
            max: (!self.session_max_lifetime.is_zero()).then_some(self.session_max_lifetime),
            max_per_did: std::num::NonZeroU32::new(self.max_sessions_per_did),
            tokens: crate::domain::TokenRules {
                max_access_tokens: self.max_access_tokens_per_session,
                rotation: self.refresh_token_rotation == Switch::On,
                reuse_grace: self.refresh_reuse_grace,
            },
        }
    }
}

/// A cookie name as RFC 6265 allows it (an HTTP token): visible ASCII but separators.
fn cookie_name(value: &str) -> Result<String, String> {
    const SEPARATORS: &str = "()<>@,;:\\\"/[]?={} \t";
    if !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && !SEPARATORS.contains(c))
    {
        Ok(value.to_owned())
    } else {
        Err("not a cookie name: letters, digits and !#$%&'*+-.^_`|~ only".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["barazo-session"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv)
            .map_err(|e| ConfigError(vec![e.to_string()]))?
            .validated()
    }

    #[test]
    fn defaults_match_the_appview() {
        let c = parse(&[]).expect("defaults are valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.store, StoreKind::Valkey);
        assert_eq!(c.valkey_url.expose(), "redis://127.0.0.1:6379");
        assert_eq!(c.session_ttl, Duration::from_secs(604_800));
        assert_eq!(c.access_token_ttl, Duration::from_secs(900));
        assert_eq!(c.max_access_tokens_per_session, 8);
        assert_eq!(
            c.refresh_token_rotation,
            Switch::Off,
            "the TypeScript cookie works"
        );
        assert_eq!(c.refresh_reuse_grace, Duration::from_secs(10));
        assert_eq!(c.key_prefix, "barazo:session:");
        assert_eq!(c.log_format, LogFormat::Human);
    }

    #[test]
    fn reports_every_problem_at_once() {
        let err = parse(&[
            "--session-ttl",
            "0",
            "--access-token-ttl",
            "10",
            "--key-prefix",
            "",
            "--valkey-url",
            "nope://x",
        ])
        .expect_err("invalid");
        let text = err.to_string();
        assert_eq!(err.0.len(), 4, "{text}");
        assert!(text.contains("OAUTH_SESSION_TTL"), "{text}");
        assert!(text.contains("must not exceed"), "{text}");
        assert!(text.contains("SESSION_KEY_PREFIX"), "{text}");
        assert!(text.contains("VALKEY_URL"), "{text}");
    }

    #[test]
    fn refuses_unparsable_values() {
        assert!(parse(&["--listen", "not-an-address"]).is_err());
        assert!(parse(&["--store", "postgres"]).is_err());
        assert!(parse(&["--session-ttl", "-1"]).is_err());
        assert!(parse(&["--session-ttl", "18446744073709551615"]).is_err());
        assert!(parse(&["--session-ttl", "31536000"]).is_ok());
        assert!(parse(&["--session-ttl", "31536001"]).is_err());
    }

    #[test]
    fn refuses_valkey_credentials_that_would_be_ignored() {
        let dir = std::env::temp_dir().join(format!("barazo-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("ca.pem");
        // Shaped like a PEM CA: the contents are checked too.
        std::fs::write(
            &file,
            "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let path = file.to_str().expect("utf-8");
        let err = parse(&["--valkey-ca", path]).expect_err("CA without rediss");
        assert!(err.to_string().contains("rediss://"), "{err}");
        let err = parse(&[
            "--valkey-url",
            "redis://:pw@localhost:6379",
            "--valkey-password-file",
            path,
        ])
        .expect_err("two passwords");
        assert!(err.to_string().contains("keep one"), "{err}");
        assert!(
            parse(&[
                "--valkey-url",
                "rediss://localhost:6380",
                "--valkey-ca",
                path
            ])
            .is_ok()
        );
        // Cluster mode: every seed is checked, for TLS and for a password.
        let seeds = |urls: &str| {
            parse(&[
                "--valkey-mode",
                "cluster",
                "--valkey-url",
                urls,
                "--valkey-ca",
                path,
            ])
        };
        assert!(seeds("rediss://a:6379,rediss://b:6379").is_ok());
        let err = seeds("rediss://a:6379,redis://b:6379").expect_err("one plain seed");
        assert!(err.to_string().contains("rediss://"), "{err}");
        let err = parse(&[
            "--valkey-mode",
            "cluster",
            "--valkey-url",
            "redis://a:6379,redis://:pw@b:6379",
            "--valkey-password-file",
            path,
        ])
        .expect_err("two passwords in cluster mode");
        assert!(err.to_string().contains("keep one"), "{err}");
        assert!(parse(&["--max-concurrent-requests", "1000001"]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Problems from `load_from` with these flags (the process environment holds none of
    /// the service's variables under `cargo test`).
    fn problems(args: &[&str]) -> Vec<String> {
        let mut argv = vec!["barazo-session"];
        argv.extend_from_slice(args);
        match load_from(argv) {
            Ok(_) => Vec::new(),
            Err(LoadError::Invalid(err)) => err.0,
            Err(LoadError::Display(help)) => panic!("unexpected help: {help}"),
        }
    }

    #[test]
    fn every_bad_value_is_reported_once_under_its_own_name() {
        let found = problems(&[
            "--session-ttl",
            "abc",
            "--max-concurrent-requests",
            "0",
            "--listen=nowhere",
            "--store",
            "memory",
            "--max-connections",
            "7",
        ]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("--session-ttl: invalid value 'abc'"));
        assert!(found[1].starts_with("--listen: invalid value 'nowhere'"));
        // Values after a failed one still land in their own fields.
        assert!(found[2].starts_with("--max-concurrent-requests must be"));
        assert!(problems(&["--store", "memory", "--max-connections", "7"]).is_empty());
    }

    #[test]
    fn unknown_flags_do_not_hide_the_rest() {
        let found = problems(&["--bogus", "--http2-keepalive-timeout", "0"]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("'--bogus'"), "{found:?}");
        assert!(found[1].starts_with("--http2-keepalive-timeout must be at least 1"));
    }

    #[test]
    fn a_mistyped_flag_names_the_one_it_meant_and_takes_its_value_along() {
        let found = problems(&["--stor", "memory", "--max-concurrent-requests", "0"]);
        assert_eq!(
            found[0],
            "unexpected argument '--stor' found: did you mean '--store'?"
        );
        // `memory` went with it (not a second "unexpected argument"); the rest is checked.
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[1].starts_with("--max-concurrent-requests must be"),
            "{found:?}"
        );
    }

    #[test]
    fn never_prints_the_valkey_url() {
        let c = parse(&["--valkey-url", "redis://:hunter2@localhost:6379"]).expect("valid");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
