//! The checks clap's types cannot make on their own: values against each other, files that
//! must exist, limits that would make a server that reports SERVING but serves nobody.
//! One function per area; each problem names the setting as the operator wrote it.

use super::{Config, ConfigError, StoreKind};
use std::time::Duration;

/// Longest session TTL accepted: a year is far beyond any sane session, and keeps every
/// deadline computation far from overflow.
pub const MAX_TTL_SECONDS: u64 = 365 * 24 * 3600;

/// Most access tokens per session that may be configured: each is listed in the session's
/// data, which every validation reads.
pub const MAX_ACCESS_TOKENS: usize = 64;

/// Longest reuse grace that may be configured: requests in flight take seconds, not
/// minutes.
pub const MAX_REUSE_GRACE: Duration = Duration::from_secs(300);

/// Most calls in progress that may be configured; far beyond what one process can serve.
pub const MAX_CONCURRENT_REQUESTS: usize = 1_000_000;

/// Most client connections that may be configured; far beyond any file-descriptor limit.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// Collects problems, dropping those about a setting that already failed to parse (its
/// stand-in default would make the message wrong).
struct Problems<'a> {
    config: &'a Config,
    list: Vec<String>,
}

impl Problems<'_> {
    /// The setting's name as the operator wrote it.
    fn name(&self, id: &str) -> String {
        self.config.origins.name(id)
    }

    fn add(&mut self, about: &[&str], message: String) {
        if !about.iter().any(|id| self.config.origins.failed(id)) {
            self.list.push(message);
        }
    }
}

impl Config {
    /// Checks the values that clap's types cannot check on their own; all problems at once.
    pub fn validated(self) -> Result<Self, ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(ConfigError(problems))
        }
    }

    /// Every problem with the parsed values.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut problems = Problems {
            config: self,
            list: Vec::new(),
        };
        lifetimes(&mut problems);
        store(&mut problems);
        timeouts(&mut problems);
        limits(&mut problems);
        tls(&mut problems);
        http(&mut problems);
        files(&mut problems);
        problems.list
    }
}

fn lifetimes(p: &mut Problems<'_>) {
    let c = p.config;
    for (id, value) in [
        ("session_ttl", c.session_ttl),
        ("access_token_ttl", c.access_token_ttl),
    ] {
        if value.is_zero() {
            let message = format!("{} must be at least 1 second", p.name(id));
            p.add(&[id], message);
        }
    }
    if c.session_ttl.as_secs() > MAX_TTL_SECONDS {
        let message = format!(
            "{} must be at most {MAX_TTL_SECONDS} seconds (one year)",
            p.name("session_ttl")
        );
        p.add(&["session_ttl"], message);
    }
    if c.access_token_ttl > c.session_ttl {
        let message = format!(
            "{} ({}s) must not exceed {} ({}s): an access token must not outlive its session",
            p.name("access_token_ttl"),
            c.access_token_ttl.as_secs(),
            p.name("session_ttl"),
            c.session_ttl.as_secs()
        );
        p.add(&["access_token_ttl", "session_ttl"], message);
    }
    if c.session_max_lifetime > Duration::from_secs(10 * MAX_TTL_SECONDS) {
        let message = format!(
            "{} must be at most {} seconds (ten years), or 0 for none",
            p.name("session_max_lifetime"),
            10 * MAX_TTL_SECONDS
        );
        p.add(&["session_max_lifetime"], message);
    }
    if !(1..=MAX_ACCESS_TOKENS).contains(&c.max_access_tokens_per_session) {
        let message = format!(
            "{} must be 1 to {MAX_ACCESS_TOKENS}",
            p.name("max_access_tokens_per_session")
        );
        p.add(&["max_access_tokens_per_session"], message);
    }
    if c.refresh_reuse_grace > MAX_REUSE_GRACE {
        let message = format!(
            "{} must be at most {} seconds: the previous refresh token is a live credential \
             for that long",
            p.name("refresh_reuse_grace"),
            MAX_REUSE_GRACE.as_secs()
        );
        p.add(&["refresh_reuse_grace"], message);
    }
    if c.key_prefix.is_empty() || c.key_prefix.chars().any(char::is_whitespace) {
        let message = format!(
            "{} must be non-empty and without spaces (it keeps this service's keys apart \
             from the AppView's others)",
            p.name("key_prefix")
        );
        p.add(&["key_prefix"], message);
    }
}

fn store(p: &mut Problems<'_>) {
    let c = p.config;
    if c.store != StoreKind::Valkey {
        return;
    }
    let urls = c.valkey_urls();
    if urls.is_empty() {
        let message = format!("{} names no Valkey node", p.name("valkey_url"));
        p.add(&["valkey_url"], message);
    }
    for url in &urls {
        if let Err(e) = redis::Client::open(url.as_str()) {
            // The URL itself is not echoed: it may hold a password.
            let message = format!(
                "{} is not a valid Valkey URL ({e}); expected \
                 redis://[user:password@]host:port[/db] or rediss://…",
                p.name("valkey_url")
            );
            p.add(&["valkey_url"], message);
        }
    }
    // In cluster mode every seed must be rediss://: the nodes found through them are
    // reached the same way.
    let plain = urls.iter().any(|url| !url.starts_with("rediss://"));
    if c.valkey_ca.is_some() && plain {
        let message = format!(
            "{} is set but {} is not rediss://: the connection would not use TLS",
            p.name("valkey_ca"),
            p.name("valkey_url")
        );
        p.add(&["valkey_ca", "valkey_url"], message);
    }
    let url_has_password = urls.iter().any(|url| {
        redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .is_ok_and(|info| info.redis_settings().password().is_some())
    });
    if c.valkey_password_file.is_some() && url_has_password {
        let message = format!(
            "both {} and {} carry a password: keep one",
            p.name("valkey_url"),
            p.name("valkey_password_file")
        );
        p.add(&["valkey_url", "valkey_password_file"], message);
    }
}

fn timeouts(p: &mut Problems<'_>) {
    let c = p.config;
    for (id, value) in [
        ("valkey_connect_timeout", c.valkey_connect_timeout),
        ("valkey_command_timeout", c.valkey_command_timeout),
        ("health_check_interval", c.health_check_interval),
        ("request_timeout", c.request_timeout),
        ("handshake_timeout", c.handshake_timeout),
        ("http2_keepalive_interval", c.http2_keepalive_interval),
        ("http2_keepalive_timeout", c.http2_keepalive_timeout),
        ("idle_connection_timeout", c.idle_connection_timeout),
    ] {
        if value.is_zero() {
            let message = format!("{} must be at least 1", p.name(id));
            p.add(&[id], message);
        }
    }
}

/// Limits of 0 give a server that reports SERVING while refusing every call or
/// connection; limits past the caps are typing errors.
fn limits(p: &mut Problems<'_>) {
    let c = p.config;
    for (id, value, cap) in [
        (
            "max_concurrent_requests",
            c.max_concurrent_requests,
            MAX_CONCURRENT_REQUESTS,
        ),
        ("max_connections", c.max_connections, MAX_CONNECTIONS),
        (
            "max_concurrent_streams",
            c.max_concurrent_streams as usize,
            u32::MAX as usize,
        ),
    ] {
        if value == 0 || value > cap {
            let message = format!("{} must be between 1 and {cap}", p.name(id));
            p.add(&[id], message);
        }
    }
}

/// TLS needs a certificate and its key together; client certificates need TLS.
fn tls(p: &mut Problems<'_>) {
    let c = p.config;
    let pair = [("tls_cert", &c.tls_cert), ("tls_key", &c.tls_key)];
    for (i, (id, value)) in pair.iter().enumerate() {
        let (other, other_value) = pair[1 - i];
        if value.is_some() && other_value.is_none() {
            let message = format!(
                "{} is set but {} is not: TLS needs both the certificate and its key",
                p.name(id),
                p.name(other)
            );
            p.add(&[id, other], message);
        }
    }
    if c.tls_client_ca.is_some() && c.tls_cert.is_none() {
        let message = format!(
            "{} is set but {} is not: client certificates need TLS on the listener",
            p.name("tls_client_ca"),
            p.name("tls_cert")
        );
        p.add(&["tls_client_ca", "tls_cert"], message);
    }
}

fn http(p: &mut Problems<'_>) {
    let c = p.config;
    if c.forward_auth_cookie.is_some() && c.http_listen.is_none() {
        let message = format!(
            "{} is set but {} is not: forward auth, which reads the cookie, is served on the HTTP listener",
            p.name("forward_auth_cookie"),
            p.name("http_listen")
        );
        p.add(&["forward_auth_cookie", "http_listen"], message);
    }
}

fn files(p: &mut Problems<'_>) {
    let c = p.config;
    for (id, path) in [
        ("tls_cert", &c.tls_cert),
        ("tls_key", &c.tls_key),
        ("tls_client_ca", &c.tls_client_ca),
        ("authz_policy", &c.authz_policy),
        ("valkey_password_file", &c.valkey_password_file),
        ("valkey_ca", &c.valkey_ca),
    ] {
        let Some(path) = path else { continue };
        if !path.is_file() {
            let message = format!("{}: {} is not a readable file", p.name(id), path.display());
            p.add(&[id], message);
            continue;
        }
        if let Some(problem) = contents_problem(id, path) {
            let message = format!("{}: {}: {problem}", p.name(id), path.display());
            p.add(&[id], message);
        }
    }
}

/// What is wrong with the contents of a configured file, checked at startup so that a wrong
/// file is named with its flag (the TLS library's own messages, later, name neither). Only
/// the shape: whether a certificate and its key belong together is the TLS library's call.
fn contents_problem(id: &str, path: &std::path::Path) -> Option<String> {
    let pem = |marker: &str, what: &str| match std::fs::read(path) {
        Err(err) => Some(format!("cannot be read: {err}")),
        Ok(bytes) if !String::from_utf8_lossy(&bytes).contains(marker) => {
            Some(format!("holds no PEM {what} (no \"{marker}\" line)"))
        }
        Ok(_) => None,
    };
    match id {
        "tls_cert" => pem("-----BEGIN CERTIFICATE-----", "certificate"),
        "tls_client_ca" | "valkey_ca" => pem("-----BEGIN CERTIFICATE-----", "CA certificate"),
        "tls_key" => pem("PRIVATE KEY-----", "private key"),
        // The TOML parser draws the spot over several lines; one line here.
        "authz_policy" => crate::authz::Policy::load(path).err().map(|err| {
            crate::api::error::chain(&err)
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('|') && !line.contains(" |"))
                .collect::<Vec<_>>()
                .join(": ")
        }),
        _ => None,
    }
}
