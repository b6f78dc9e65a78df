//! The HTTP listener (`--http-listen`): forward auth and RFC 7662 introspection, every
//! answer, spoken to as nginx, Caddy or an API gateway speak to it (the real gateways in
//! front of it are in `gateways.rs`).

use crate::cache::{RESETS, eventually, metric};
use crate::security::sample_or_zero;
use crate::support::http::{http_get, request};
use crate::support::pki::{Ca, Pem, TempDir};
use crate::support::policy::{
    APPVIEW_ID, EDGE_ID, GATEWAY_KEY, PLUGIN_KEY, create_as_appview, gateway_policy,
};
use crate::support::{TestApp, unique_did};
use barazo_session::config::StoreKind;
use std::net::SocketAddr;
use std::time::Duration;

const FORWARD_AUTH: &str = "/v1/forward-auth";
const INTROSPECT: &str = "/v1/introspect";
const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

fn http(app: &TestApp) -> SocketAddr {
    app.http_addr.expect("the HTTP listener")
}

/// The value of `name` in a lower-cased response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
}

async fn forward_auth(app: &TestApp, headers: &[(&str, &str)]) -> (u16, String, String) {
    http_get(http(app), FORWARD_AUTH, headers)
        .await
        .expect("the HTTP listener answers")
}

async fn introspect(app: &TestApp, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    request(http(app), "POST", INTROSPECT, headers, body.as_bytes())
        .await
        .expect("the HTTP listener answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_answers_as_a_gateway_needs() {
    let app = TestApp::spawn_with(StoreKind::Valkey, &["--http-listen", "127.0.0.1:0"]).await;
    let did = unique_did();
    let session = app.create(&did, "alice.test").await;
    let bearer = format!("Bearer {}", session.access_token);
    let key = session
        .session
        .as_ref()
        .expect("a session")
        .session_key
        .clone();

    let (status, head, _) = forward_auth(&app, &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "x-barazo-did"), Some(did.as_str()));
    assert_eq!(header(&head, "x-barazo-handle"), Some("alice.test"));
    assert_eq!(header(&head, "x-barazo-session-key"), Some(key.as_str()));
    assert_eq!(header(&head, "cache-control"), Some("no-store"));
    // Any method: Traefik and Caddy forward the user's.
    for method in ["POST", "DELETE", "HEAD"] {
        let (status, head, _) = request(
            http(&app),
            method,
            FORWARD_AUTH,
            &[("Authorization", &bearer)],
            b"",
        )
        .await
        .expect("answers");
        assert_eq!(status, 200, "{method}: {head}");
    }

    // No token: a challenge without an error code (RFC 6750 §3.1); a bad one: invalid_token.
    let (status, head, _) = forward_auth(&app, &[]).await;
    assert_eq!(status, 401);
    assert_eq!(header(&head, "www-authenticate"), Some("bearer"));
    for headers in [
        vec![("Authorization", "Bearer 0000")],
        vec![("Authorization", "Basic YWxpY2U6c2VjcmV0")],
        vec![
            ("Authorization", bearer.as_str()),
            ("Authorization", bearer.as_str()),
        ],
    ] {
        let (status, head, _) = forward_auth(&app, &headers).await;
        assert_eq!(status, 401, "{headers:?}");
        assert_eq!(
            header(&head, "www-authenticate"),
            Some("bearer error=\"invalid_token\""),
            "{headers:?}"
        );
        assert!(header(&head, "x-barazo-did").is_none());
    }

    // A request bringing its own identity never passes, however it spells it.
    for forged in [
        "X-Barazo-Did",
        "x_barazo_did",
        "X-BARAZO-ROLE",
        "x-barazo.handle",
    ] {
        let (status, head, _) = forward_auth(
            &app,
            &[("Authorization", &bearer), (forged, "did:plc:victim")],
        )
        .await;
        assert_eq!(status, 403, "{forged}: {head}");
        assert!(header(&head, "x-barazo-did").is_none(), "{forged}");
    }

    // Logged out: the token is refused at once.
    assert!(app.delete(&session.refresh_token).await.expect("deletes"));
    let (status, _, _) = forward_auth(&app, &[("Authorization", &bearer)]).await;
    assert_eq!(status, 401);

    // Anything else on the listener is not found.
    let (status, _, _) = http_get(http(&app), "/v1/forward-auth/x", &[])
        .await
        .expect("answers");
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_may_come_in_a_cookie_when_configured() {
    let app = TestApp::spawn_with(
        StoreKind::Memory,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--forward-auth-cookie",
            "barazo_at",
        ],
    )
    .await;
    let did = unique_did();
    let session = app.create(&did, "alice.test").await;
    let cookie = format!("theme=dark; barazo_at={}", session.access_token);
    let (status, head, _) = forward_auth(&app, &[("Cookie", &cookie)]).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "x-barazo-did"), Some(did.as_str()));
    let (status, _, _) = forward_auth(&app, &[("Cookie", "barazo_at=0000")]).await;
    assert_eq!(status, 401);
    let (status, _, _) = forward_auth(&app, &[("Cookie", "other=1")]).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_503_never_401_nor_200() {
    let mut app = TestApp::spawn_with(
        StoreKind::Valkey,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let session = app.create(&unique_did(), "alice.test").await;
    let bearer = format!("Bearer {}", session.access_token);
    let form = format!("token={}", session.access_token);
    assert_eq!(
        forward_auth(&app, &[("Authorization", &bearer)]).await.0,
        200
    );

    // The cached answer stands until the feed reports the outage (no revocation can land
    // meanwhile); from then on nothing is decided without the store.
    let resets = metric(&app, RESETS).await;
    app.valkey_mut().kill();
    eventually("the cache resets", || async {
        metric(&app, RESETS).await > resets
    })
    .await;
    let (status, head, _) = forward_auth(&app, &[("Authorization", &bearer)]).await;
    assert_eq!(status, 503, "{head}");
    assert_eq!(header(&head, "retry-after"), Some("1"));
    assert!(header(&head, "x-barazo-did").is_none());
    let (status, _, body) = introspect(&app, &[FORM], &form).await;
    assert_eq!(status, 503, "{body}");
    // Without a token no store is asked: still the 401.
    assert_eq!(forward_auth(&app, &[]).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_answers_as_rfc_7662_says() {
    let app = TestApp::spawn_with(StoreKind::Valkey, &["--http-listen", "127.0.0.1:0"]).await;
    let did = unique_did();
    let session = app.create(&did, "alice.test").await;
    let key = session
        .session
        .as_ref()
        .expect("a session")
        .session_key
        .clone();

    let form = format!(
        "token={}&token_type_hint=access_token",
        session.access_token
    );
    let (status, head, body) = introspect(&app, &[FORM], &form).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "content-type"), Some("application/json"));
    assert_eq!(header(&head, "cache-control"), Some("no-store"));
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["active"], true);
    assert_eq!(answer["sub"], did.as_str());
    assert_eq!(answer["username"], "alice.test");
    assert_eq!(answer["token_type"], "access_token");
    assert_eq!(answer["sid"], key.as_str());
    let validated = app.validate(&session.access_token).await;
    let expires = validated
        .session
        .and_then(|s| s.access_token_expires_at)
        .expect("an expiry")
        .seconds;
    assert_eq!(answer["exp"], expires);
    let created = session
        .session
        .as_ref()
        .and_then(|s| s.created_at)
        .expect("created");
    assert_eq!(answer["iat"], created.seconds);

    // Inactive: the one member, nothing else (§2.2), for a refresh token too.
    for token in ["0000", session.refresh_token.as_str(), ""] {
        let (status, _, body) = introspect(&app, &[FORM], &format!("token={token}")).await;
        assert_eq!(
            (status, body.as_str()),
            (200, r#"{"active":false}"#),
            "{token:?}"
        );
    }

    // Bad requests say so in OAuth's words.
    for (headers, body) in [
        (vec![FORM], "token_type_hint=access_token".to_owned()),
        (vec![FORM], "token=a&token=b".to_owned()),
        (
            vec![("Content-Type", "application/json")],
            format!(r#"{{"token":"{}"}}"#, session.access_token),
        ),
        (vec![], form.clone()),
    ] {
        let (status, _, answer) = introspect(&app, &headers, &body).await;
        assert_eq!(status, 400, "{headers:?} {body}");
        let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
        assert_eq!(answer["error"], "invalid_request");
    }
    let huge = format!("token={}&pad={}", session.access_token, "x".repeat(20_000));
    assert_eq!(introspect(&app, &[FORM], &huge).await.0, 413);
    let (status, head, _) = http_get(http(&app), INTROSPECT, &[])
        .await
        .expect("answers");
    assert_eq!(status, 405);
    assert_eq!(header(&head, "allow"), Some("post"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_policy_the_gateway_proves_itself_apart_from_the_user() {
    let dir = TempDir::new();
    let policy = gateway_policy(&dir);
    let app = TestApp::spawn_with(
        StoreKind::Memory,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--authz-policy",
            &policy,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let session = create_as_appview(&app, &unique_did()).await;
    let bearer = format!("Bearer {}", session.access_token);
    let user = ("Authorization", bearer.as_str());

    // Forward auth: the gateway's key in its own header, the user's token in Authorization.
    let (status, head, _) =
        forward_auth(&app, &[user, ("X-Barazo-Gateway-Key", GATEWAY_KEY)]).await;
    assert_eq!(status, 200, "{head}");
    // No gateway credential, another caller's, or a wrong one: 403, never 401 (the user's
    // token is not at fault) and never 200.
    for key in [None, Some(PLUGIN_KEY), Some("not-a-key")] {
        let mut headers = vec![user];
        headers.extend(key.map(|key| ("X-Barazo-Gateway-Key", key)));
        let (status, head, _) = forward_auth(&app, &headers).await;
        assert_eq!(status, 403, "{key:?}: {head}");
        assert!(header(&head, "x-barazo-did").is_none());
    }
    // The user's token is never taken for the gateway's key.
    let (status, _, _) =
        forward_auth(&app, &[("Authorization", &format!("Bearer {GATEWAY_KEY}"))]).await;
    assert_eq!(status, 403);

    // Introspection: the key as Bearer, as Basic's password under the caller's name, or in
    // the gateway header.
    let form = format!("token={}", session.access_token);
    let basic = |user: &str, key: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"))
        )
    };
    for credential in [
        ("Authorization", format!("Bearer {GATEWAY_KEY}")),
        ("Authorization", basic("gateway", GATEWAY_KEY)),
        ("X-Barazo-Gateway-Key", GATEWAY_KEY.to_owned()),
    ] {
        let (status, _, body) =
            introspect(&app, &[FORM, (credential.0, &credential.1)], &form).await;
        assert_eq!(status, 200, "{credential:?}");
        assert!(
            body.starts_with(r#"{"active":true"#),
            "{credential:?}: {body}"
        );
    }
    // Unauthenticated: 401 invalid_client, challenged in the scheme the client used.
    for (credential, challenge) in [
        (None, "bearer realm=\"barazo-session\""),
        (
            Some(("Authorization", basic("plugins", GATEWAY_KEY))),
            "basic realm=\"barazo-session\"",
        ),
        (
            Some(("Authorization", "Bearer not-a-key".to_owned())),
            "bearer realm=\"barazo-session\"",
        ),
    ] {
        let mut headers = vec![FORM];
        headers.extend(
            credential
                .as_ref()
                .map(|(name, value)| (*name, value.as_str())),
        );
        let (status, head, body) = introspect(&app, &headers, &form).await;
        assert_eq!(status, 401, "{credential:?}");
        assert_eq!(body, r#"{"error":"invalid_client"}"#);
        assert_eq!(
            header(&head, "www-authenticate"),
            Some(challenge),
            "{credential:?}"
        );
    }
    // A known caller without the right.
    let (status, _, body) = introspect(
        &app,
        &[FORM, ("Authorization", &format!("Bearer {PLUGIN_KEY}"))],
        &form,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (403, r#"{"error":"unauthorized_client"}"#)
    );

    // Every call is in the RPC metrics under its own label, refusals included.
    let text = crate::security::metrics_text(app.metrics_addr.expect("admin")).await;
    let ok = r#"rpc_server_call_duration_seconds_count{rpc_system="grpc",rpc_service="http",rpc_method="ForwardAuth",rpc_grpc_status_code="0"}"#;
    let denied = r#"rpc_server_call_duration_seconds_count{rpc_system="grpc",rpc_service="http",rpc_method="ForwardAuth",rpc_grpc_status_code="16"}"#;
    assert!(sample_or_zero(&text, ok) >= 1.0, "{text}");
    assert!(sample_or_zero(&text, denied) >= 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_client_certificate_names_the_gateway() {
    let ca = Ca::new("barazo test CA");
    let dir = TempDir::new();
    let server = ca.issue(&["localhost"], None);
    let cert = dir.write("server.pem", &server.cert);
    let key = dir.write("server.key", &server.key);
    let client_ca = dir.write("ca.pem", ca.pem());
    let policy = gateway_policy(&dir);
    let flags = [
        "--http-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
        "--tls-client-ca",
        client_ca.to_str().expect("utf-8"),
        "--authz-policy",
        &policy,
    ];
    let appview = ca.issue(&["appview.local"], Some(APPVIEW_ID));
    let app = TestApp::spawn_config(
        crate::support::config(StoreKind::Memory, None, &flags),
        None,
        Some(crate::security::client_tls(&ca, Some(&appview))),
    )
    .await;
    let session = app.create(&unique_did(), "alice.test").await;
    let bearer = format!("Bearer {}", session.access_token);

    let edge = ca.issue(&["edge.local"], Some(EDGE_ID));
    let stranger = ca.issue(&["stranger.local"], Some("spiffe://barazo.test/stranger"));
    let (status, head) = tls_get(http(&app), &ca, Some(&edge), &bearer)
        .await
        .expect("TLS");
    assert_eq!(status, 200, "{head}");
    let (status, _) = tls_get(http(&app), &ca, Some(&stranger), &bearer)
        .await
        .expect("TLS");
    assert_eq!(status, 403);
    // mTLS: no certificate, no connection.
    assert!(tls_get(http(&app), &ca, None, &bearer).await.is_err());
}

/// Forward auth over TLS (HTTP/1.1 by ALPN) with `client`'s certificate: the status and head.
async fn tls_get(
    addr: SocketAddr,
    ca: &Ca,
    client: Option<&Pem>,
    bearer: &str,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::{
        CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
    };
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der())).expect("CA");
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match client {
        Some(pem) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(pem.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pem.key_der.clone())),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await?;
    let request = format!(
        "GET {FORWARD_AUTH} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {bearer}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    let head = response
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {response:?}")))?;
    Ok((status, head))
}

/// Connections that send nothing, or stay idle, do not hold the HTTP listener's slots: a
/// silent one is closed at the handshake deadline, an HTTP/2 one without requests at the
/// idle timeout (GOAWAY), and a request then gets its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_do_not_hold_the_slots() {
    use tokio::io::AsyncReadExt;
    let app = TestApp::spawn_with(
        StoreKind::Memory,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--max-connections",
            "2",
            "--handshake-timeout-ms",
            "300",
            "--idle-connection-timeout",
            "1",
        ],
    )
    .await;
    let session = app.create(&unique_did(), "alice.test").await;
    let bearer = format!("Bearer {}", session.access_token);

    // Both slots: one connection that never speaks, one HTTP/2 connection never used.
    let mut silent = tokio::net::TcpStream::connect(http(&app))
        .await
        .expect("connect");
    let idle = tokio::net::TcpStream::connect(http(&app))
        .await
        .expect("connect");
    let (_send, idle_connection) = h2::client::handshake(idle).await.expect("HTTP/2 handshake");
    let idle_connection = tokio::spawn(idle_connection);

    // The silent one is closed at the handshake deadline...
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest))
        .await
        .expect("a silent connection is closed")
        .expect("closed cleanly");
    // ... the idle one with GOAWAY after the idle timeout...
    tokio::time::timeout(Duration::from_secs(10), idle_connection)
        .await
        .expect("an idle HTTP/2 connection is closed")
        .expect("task")
        .expect("closed with GOAWAY, not an error");
    // ... and a request gets through.
    let (status, _, _) = tokio::time::timeout(
        Duration::from_secs(5),
        forward_auth(&app, &[("Authorization", &bearer)]),
    )
    .await
    .expect("a free slot");
    assert_eq!(status, 200);
}

/// An introspection body that never finishes arriving is bounded by the call's time limit
/// (it holds its caller's slot meanwhile), and answered 503 rather than waited on for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_is_bounded_by_the_call_time_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(
        StoreKind::Memory,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--request-timeout-ms",
            "300",
        ],
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(http(&app))
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /v1/introspect HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ntoken=",
        )
        .await
        .expect("send");
    let mut answer = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer))
        .await
        .expect("answered within the time limit")
        .expect("read");
    assert_eq!(&answer, b"HTTP/1.1 503");
}
