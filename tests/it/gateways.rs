//! Forward auth through real gateways: nginx (`auth_request`), Caddy (`forward_auth`) and
//! Traefik (`forwardAuth`), each started from its example config in `deploy/` between an
//! HTTP client and an upstream that records every request it receives, asking the real
//! service's HTTP listener (`GET /v1/forward-auth`). Each behaviour runs on every gateway.

use crate::cache::{RESETS, eventually, metric};
use crate::support::gateway::{Gateway, Kind};
use crate::support::http::request;
use crate::support::pki::TempDir;
use crate::support::policy::{GATEWAY_KEY, PLUGIN_KEY, create_as_appview, gateway_policy};
use crate::support::upstream::{Seen, Upstream};
use crate::support::{Backend, TestApp, sha256_hex, unique_did};
use barazo_session::proto::CreateSessionResponse;
use std::net::SocketAddr;

/// One test per gateway for each listed `async fn(Kind)`, named `<fn>::nginx`,
/// `<fn>::caddy` and `<fn>::traefik`.
macro_rules! gateway_tests {
    ($($test:ident),+ $(,)?) => {
        $(
            mod $test {
                use crate::support::gateway::Kind;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn nginx() {
                    super::$test(Kind::Nginx).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn caddy() {
                    super::$test(Kind::Caddy).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn traefik() {
                    super::$test(Kind::Traefik).await;
                }
            }
        )+
    };
}

gateway_tests!(
    a_valid_token_reaches_the_upstream_with_the_users_identity,
    client_identity_headers_never_reach_the_upstream,
    missing_and_bad_tokens_are_401_and_never_reach_the_upstream,
    a_stopped_valkey_is_503_and_never_reaches_the_upstream,
    an_unreachable_service_is_503_and_never_reaches_the_upstream,
    the_token_may_come_in_the_configured_cookie,
    the_gateway_key_is_the_gateways_own_credential,
);

/// What a plugin path looks like; the upstream must see it as the client sent it.
const PATH: &str = "/plugins/polls?page=2";

/// The key the examples send when the service runs without a policy: nobody checks it.
const UNCHECKED_KEY: &str = "no-policy-so-nobody-checks-this-key";

/// A gateway's answer: the status, the head in lower case, the body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    /// The values of the header `name` (lower case), in order.
    fn header(&self, name: &str) -> Vec<&str> {
        self.head
            .lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .collect()
    }
}

/// `method PATH` through the gateway at `addr` with `headers`.
async fn send(addr: SocketAddr, method: &str, headers: &[(&str, &str)]) -> std::io::Result<Answer> {
    let (status, head, body) = request(addr, method, PATH, headers, b"").await?;
    Ok(Answer { status, head, body })
}

/// A server with its HTTP listener (and the admin one, for the cache's metrics) on Valkey,
/// the recording upstream, and `kind` between them sending `key`.
struct Stack {
    app: TestApp,
    upstream: Upstream,
    gateway: Gateway,
}

impl Stack {
    async fn start(kind: Kind, extra: &[&str], key: &str) -> Self {
        let mut flags = vec![
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        flags.extend_from_slice(extra);
        let app = TestApp::spawn_with(Backend::Valkey, &flags).await;
        let upstream = Upstream::start().await;
        let gateway = Gateway::start(kind, http_addr(&app), upstream.addr, key).await;
        Self {
            app,
            upstream,
            gateway,
        }
    }

    /// `method PATH` through the gateway with `headers`.
    async fn send(&self, method: &str, headers: &[(&str, &str)]) -> Answer {
        send(self.gateway.addr, method, headers)
            .await
            .unwrap_or_else(|e| panic!("the gateway answers: {e}\n{}", self.gateway.log()))
    }

    /// Sends, asserting the answer is `status` and, unless it is 200, that the upstream was
    /// not asked.
    async fn expect(&self, status: u16, headers: &[(&str, &str)]) -> Answer {
        let before = self.upstream.count();
        let answer = self.send("GET", headers).await;
        assert_eq!(
            answer.status,
            status,
            "{headers:?}: {answer:?}\n{}",
            self.gateway.log()
        );
        if status != 200 {
            assert_eq!(
                self.upstream.count(),
                before,
                "{headers:?}: the upstream was asked: {:?}",
                self.upstream.seen()
            );
        }
        answer
    }

    /// The last request the upstream received.
    fn last_seen(&self) -> Seen {
        self.upstream.seen().pop().expect("the upstream was asked")
    }
}

/// The service's HTTP listener (`--http-listen`).
fn http_addr(app: &TestApp) -> SocketAddr {
    app.http_addr.expect("the HTTP listener (--http-listen)")
}

/// A header name as an upstream that folds names may read it (CGI, WSGI, PHP: every
/// character but letters and digits alike), written with `-`, in lower case.
fn folded(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Every header the upstream received that any upstream may read as an `x-barazo-*` one,
/// folded, with its value, sorted.
fn identity_headers(seen: &Seen) -> Vec<(String, String)> {
    let mut found: Vec<_> = seen
        .headers
        .iter()
        .map(|(name, value)| (folded(name), value.clone()))
        .filter(|(name, _)| name.starts_with("x-barazo-"))
        .collect();
    found.sort();
    found
}

/// The three headers the user's session gives, sorted as [`identity_headers`] sorts.
fn identity_of(did: &str, handle: &str, session: &CreateSessionResponse) -> Vec<(String, String)> {
    vec![
        ("x-barazo-did".to_owned(), did.to_owned()),
        ("x-barazo-handle".to_owned(), handle.to_owned()),
        (
            "x-barazo-session-key".to_owned(),
            sha256_hex(&session.refresh_token),
        ),
    ]
}

/// The user's access token reaches the service, the answer's three headers the upstream,
/// with the original method, path and query, on every method.
async fn a_valid_token_reaches_the_upstream_with_the_users_identity(kind: Kind) {
    let stack = Stack::start(kind, &[], UNCHECKED_KEY).await;
    let did = unique_did();
    let session = stack.app.create(&did, "alice.test").await;
    let bearer = format!("Bearer {}", session.access_token);
    for method in ["GET", "POST", "DELETE"] {
        let before = stack.upstream.count();
        let answer = stack
            .send(
                method,
                &[("Authorization", &bearer), ("Content-Length", "0")],
            )
            .await;
        assert_eq!(
            answer.status,
            200,
            "{method}: {answer:?}\n{}",
            stack.gateway.log()
        );
        assert_eq!(answer.body, "upstream");
        assert_eq!(stack.upstream.count(), before + 1);
        let seen = stack.last_seen();
        assert_eq!((seen.method.as_str(), seen.uri.as_str()), (method, PATH));
        assert_eq!(
            identity_headers(&seen),
            identity_of(&did, "alice.test", &session),
            "{seen:?}"
        );
        // The user's own credential goes on to the plugins, as it came.
        assert_eq!(seen.header("authorization"), [bearer.as_str()]);
    }
}

/// The answer each gateway's example gives to a valid token sent with one client header
/// that names (or aliases) an `x-barazo-*` one. 403: the header reached the service, which
/// refuses identity smuggling. 200: the gateway removed it or overwrote it first (or, for
/// the gateway key, replaced it with its own on the subrequest and removed it after). 400:
/// the gateway refuses aliasing names outright.
fn expected_status(kind: Kind, header: &str) -> u16 {
    let gateway_key = header.eq_ignore_ascii_case("x-barazo-gateway-key");
    let dashed = !header.contains('_');
    match kind {
        _ if gateway_key => 200,
        // nginx passes every client header to the subrequest and drops names with `_`
        // (underscores_in_headers off).
        Kind::Nginx if dashed => 403,
        Kind::Nginx => 200,
        // Caddy removes `X-Barazo-*` (any case) before forward_auth; `_` names pass on to
        // the service.
        Kind::Caddy if dashed => 200,
        Kind::Caddy => 403,
        // Traefik passes every client header to forwardAuth and refuses aliasing names
        // (aliasHeadersStrategy: reject).
        Kind::Traefik if dashed => 403,
        Kind::Traefik => 400,
    }
}

/// Client-sent identity headers, in any case and with underscores, never reach the upstream:
/// each gateway's example refuses the request, or removes or overwrites the header, as
/// [`expected_status`] pins; the upstream never sees a client's value.
async fn client_identity_headers_never_reach_the_upstream(kind: Kind) {
    let stack = Stack::start(kind, &[], UNCHECKED_KEY).await;
    let did = unique_did();
    let session = stack.app.create(&did, "alice.test").await;
    let bearer = format!("Bearer {}", session.access_token);
    let forged = [
        ("X-Barazo-Did", "did:plc:forged-dashed"),
        ("x-barazo-handle", "forged-lower.test"),
        ("X-BARAZO-ROLE", "forged-admin"),
        ("X-Barazo-Session-Key", "forged-session-key"),
        ("x_barazo_did", "did:plc:forged-underscore"),
        ("X_Barazo_Handle", "forged-underscore.test"),
        ("X-Barazo-Gateway-Key", "forged-gateway-key"),
    ];
    for (name, value) in forged {
        let status = expected_status(kind, name);
        stack
            .expect(status, &[("Authorization", &bearer), (name, value)])
            .await;
        if status == 200 {
            let seen = stack.last_seen();
            assert_eq!(
                identity_headers(&seen),
                identity_of(&did, "alice.test", &session),
                "{name}: {seen:?}"
            );
        }
    }
    // All at once: refused by whichever rule refuses first.
    let mut all = vec![("Authorization", bearer.as_str())];
    all.extend(forged);
    let before = stack.upstream.count();
    let answer = stack.send("GET", &all).await;
    assert!(
        [400, 403].contains(&answer.status),
        "{answer:?}\n{}",
        stack.gateway.log()
    );
    assert_eq!(stack.upstream.count(), before);
    // And over every request of this test: no client value reached the upstream.
    for seen in stack.upstream.seen() {
        for (name, value) in &seen.headers {
            assert!(
                !value.contains("forged"),
                "the upstream received {name}: {value}"
            );
        }
    }
}

/// No token, a malformed one, an unknown one, another scheme and a logged-out session's
/// token: 401 from the gateway with the service's `WWW-Authenticate: Bearer` challenge.
async fn missing_and_bad_tokens_are_401_and_never_reach_the_upstream(kind: Kind) {
    let stack = Stack::start(kind, &[], UNCHECKED_KEY).await;
    let session = stack.app.create(&unique_did(), "alice.test").await;
    let bearer = format!("Bearer {}", session.access_token);
    let unknown = format!("Bearer {}", "ab".repeat(32));
    stack.expect(200, &[("Authorization", &bearer)]).await;
    assert!(
        stack
            .app
            .delete(&session.refresh_token)
            .await
            .expect("logout")
    );
    for headers in [
        vec![],
        vec![("Authorization", "Bearer abc")],
        vec![("Authorization", unknown.as_str())],
        vec![("Authorization", "Basic YWxpY2U6c2VjcmV0")],
        vec![("Authorization", bearer.as_str())],
    ] {
        let answer = stack.expect(401, &headers).await;
        let challenge = answer.header("www-authenticate");
        assert!(
            challenge.len() == 1 && challenge[0].starts_with("bearer"),
            "{headers:?}: {answer:?}"
        );
    }
}

/// Valkey stopped: the service answers 503 (once its validation cache has dropped what it
/// held, as it does when its feed reports the outage) and the gateway passes it on with a
/// `Retry-After`: the user is neither let through nor logged out.
async fn a_stopped_valkey_is_503_and_never_reaches_the_upstream(kind: Kind) {
    let mut stack = Stack::start(kind, &[], UNCHECKED_KEY).await;
    let session = stack.app.create(&unique_did(), "alice.test").await;
    let bearer = format!("Bearer {}", session.access_token);
    stack.expect(200, &[("Authorization", &bearer)]).await;

    let resets = metric(&stack.app, RESETS).await;
    stack.app.valkey_mut().kill();
    eventually("the cache resets", || async {
        metric(&stack.app, RESETS).await > resets
    })
    .await;
    let answer = stack.expect(503, &[("Authorization", &bearer)]).await;
    assert_eq!(answer.header("retry-after").len(), 1, "{answer:?}");
}

/// The service down altogether (nothing listens where the gateway asks): 503 from the
/// gateway too, never a 500, a 401 or a pass.
async fn an_unreachable_service_is_503_and_never_reaches_the_upstream(kind: Kind) {
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port");
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(kind, nobody, upstream.addr, UNCHECKED_KEY).await;
    let answer = send(
        gateway.addr,
        "GET",
        &[("Authorization", &format!("Bearer {}", "ab".repeat(32)))],
    )
    .await
    .expect("the gateway answers");
    assert_eq!(answer.status, 503, "{answer:?}\n{}", gateway.log());
    assert_eq!(upstream.count(), 0);
}

/// With `--forward-auth-cookie`, a browser's cookie carries the token (no Authorization
/// header); the gateways pass the Cookie header to the service unchanged.
async fn the_token_may_come_in_the_configured_cookie(kind: Kind) {
    let stack = Stack::start(
        kind,
        &["--forward-auth-cookie", "barazo_access"],
        UNCHECKED_KEY,
    )
    .await;
    let did = unique_did();
    let session = stack.app.create(&did, "alice.test").await;
    let cookie = format!("theme=dark; barazo_access={}", session.access_token);
    stack.expect(200, &[("Cookie", &cookie)]).await;
    assert_eq!(
        identity_headers(&stack.last_seen()),
        identity_of(&did, "alice.test", &session)
    );
    stack
        .expect(
            401,
            &[("Cookie", &format!("barazo_access={}", "ab".repeat(32)))],
        )
        .await;
    stack
        .expect(
            401,
            &[("Cookie", &format!("another={}", session.access_token))],
        )
        .await;
}

/// With a policy, the example's `X-Barazo-Gateway-Key` is the gateway's credential: the
/// gateway whose key has the right `Check` passes users through; one with an unknown key,
/// or the key of a caller without the right, passes nobody (403). The key never reaches
/// the upstream.
async fn the_gateway_key_is_the_gateways_own_credential(kind: Kind) {
    let dir = TempDir::new();
    let policy = gateway_policy(&dir);
    let policy = policy.as_str();
    let stack = Stack::start(kind, &["--authz-policy", policy], GATEWAY_KEY).await;
    let did = unique_did();
    let session = create_as_appview(&stack.app, &did).await;
    let bearer = format!("Bearer {}", session.access_token);

    // A client's own gateway key is replaced by the gateway's: it proves nothing.
    stack
        .expect(
            200,
            &[
                ("Authorization", &bearer),
                ("X-Barazo-Gateway-Key", "forged-gateway-key"),
            ],
        )
        .await;
    let seen = stack.last_seen();
    assert_eq!(
        identity_headers(&seen),
        identity_of(&did, "alice.test", &session),
        "the gateway key stays between the gateway and the service: {seen:?}"
    );

    let service = http_addr(&stack.app);
    for (key, what) in [
        ("unknown-service-key-0123456789", "an unknown key"),
        (PLUGIN_KEY, "a caller without Check"),
    ] {
        let upstream = Upstream::start().await;
        let gateway = Gateway::start(kind, service, upstream.addr, key).await;
        let answer = send(gateway.addr, "GET", &[("Authorization", &bearer)])
            .await
            .expect("the gateway answers");
        // 403, never 401: the user's token is fine, the gateway is not.
        assert_eq!(answer.status, 403, "{what}: {answer:?}\n{}", gateway.log());
        assert_eq!(upstream.count(), 0, "{what}");
    }
}
