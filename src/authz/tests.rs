//! The policy, credentials and layer, tested together through the policy file.

use super::credentials::*;
use super::policy::*;
use crate::domain::sha256_hex;
use crate::rpc::REFLECTION;
use tonic::Status;

fn policy() -> Policy {
    Policy::parse(&format!(
        r#"
        [callers.appview-auth]
        identities = ["spiffe://barazo/appview-auth"]
        keys_sha256 = ["{}"]
        allow = ["CreateSession", "RefreshSession", "DeleteSession", "DeleteAllSessionsForDid", "ValidateAccessToken"]

        [callers.plugins]
        keys_sha256 = ["{}"]
        allow = ["ValidateAccessToken"]

        [callers.operator]
        identities = ["ops.barazo.internal"]
        allow = ["*"]
        "#,
        sha256_hex("auth-key"),
        sha256_hex("plugin-key")
    ))
    .expect("valid policy")
}

#[test]
fn callers_get_what_the_policy_allows() {
    let p = policy();
    let auth = vec!["spiffe://barazo/appview-auth".to_owned()];
    assert_eq!(
        p.authorize("CreateSession", &auth, AuthorizationHeader::Nothing),
        Ok("appview-auth".into())
    );
    assert_eq!(
        p.authorize("CreateSession", &[], AuthorizationHeader::Key("auth-key")),
        Ok("appview-auth".into())
    );
    assert_eq!(
        p.authorize(
            "ValidateAccessToken",
            &[],
            AuthorizationHeader::Key("plugin-key")
        ),
        Ok("plugins".into())
    );
    let ops = vec!["ops.barazo.internal".to_owned()];
    assert_eq!(
        p.authorize(REFLECTION, &ops, AuthorizationHeader::Nothing),
        Ok("operator".into())
    );
}

#[test]
fn the_single_validation_right_covers_the_batch_but_not_the_reverse() {
    let p = Policy::parse(&format!(
        "[callers.plugins]\nkeys_sha256 = [\"{}\"]\nallow = [\"ValidateAccessToken\"]\n\
         [callers.batcher]\nkeys_sha256 = [\"{}\"]\nallow = [\"ValidateAccessTokens\"]",
        sha256_hex("plugin-key"),
        sha256_hex("batch-key")
    ))
    .expect("valid policy");
    assert_eq!(
        p.authorize(
            "ValidateAccessTokens",
            &[],
            AuthorizationHeader::Key("plugin-key")
        ),
        Ok("plugins".into())
    );
    assert_eq!(
        p.authorize(
            "ValidateAccessTokens",
            &[],
            AuthorizationHeader::Key("batch-key")
        ),
        Ok("batcher".into())
    );
    assert!(matches!(
        p.authorize(
            "ValidateAccessToken",
            &[],
            AuthorizationHeader::Key("batch-key")
        ),
        Err(Denial::PermissionDenied { .. })
    ));
    assert!(matches!(
        p.authorize("Check", &[], AuthorizationHeader::Key("plugin-key")),
        Err(Denial::PermissionDenied { .. })
    ));
}

#[test]
fn everything_else_is_denied() {
    let p = policy();
    assert_eq!(
        p.authorize("CreateSession", &[], AuthorizationHeader::Key("plugin-key")),
        Err(Denial::PermissionDenied {
            caller: "plugins".into(),
            method: "CreateSession".into()
        })
    );
    assert!(matches!(
        p.authorize("CreateSession", &[], AuthorizationHeader::Nothing),
        Err(Denial::Unauthenticated(_))
    ));
    assert!(matches!(
        p.authorize("CreateSession", &[], AuthorizationHeader::Key("wrong")),
        Err(Denial::Unauthenticated(_))
    ));
    // A wrong key is not rescued by a good certificate.
    let auth = vec!["spiffe://barazo/appview-auth".to_owned()];
    assert!(matches!(
        p.authorize("CreateSession", &auth, AuthorizationHeader::Key("wrong")),
        Err(Denial::Unauthenticated(_))
    ));
    let stranger = vec!["spiffe://elsewhere".to_owned()];
    assert!(matches!(
        p.authorize(
            "ValidateAccessToken",
            &stranger,
            AuthorizationHeader::Nothing
        ),
        Err(Denial::PermissionDenied { .. })
    ));
    assert!(matches!(
        p.authorize(REFLECTION, &[], AuthorizationHeader::Key("plugin-key")),
        Err(Denial::PermissionDenied { .. })
    ));
}

#[test]
fn messages_name_the_rpc_not_the_secret() {
    let status = Status::from(
        policy()
            .authorize("CreateSession", &[], AuthorizationHeader::Key("plugin-key"))
            .expect_err("denied"),
    );
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "caller plugins may not call CreateSession"
    );
    let status = Status::from(
        policy()
            .authorize("CreateSession", &[], AuthorizationHeader::Key("s3cret"))
            .expect_err("x"),
    );
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(status.message(), "CreateSession: unknown service key");
}

#[test]
fn bad_policies_are_refused_with_the_reason() {
    for (text, needle) in [
        (
            "[callers.a]\nallow = [\"CreateSession\"]",
            "neither identities nor keys",
        ),
        (
            "[callers.a]\nkeys_sha256 = [\"plain-key\"]\nallow = [\"*\"]",
            "64 hex",
        ),
        (
            "[callers.a]\nidentities = [\"x\"]\nallow = [\"CreateSesion\"]",
            "unknown RPC",
        ),
        (
            "[callers.a]\nidentities = [\"x\"]\nallow = [\"ForwardAuth\"]",
            "the HTTP listener's endpoints are allowed by Check",
        ),
        (
            "[callers.a]\nidentities = [\"x\"]\nallow = []\nextra = 1",
            "unknown field",
        ),
        ("not toml", ""),
        (
            "[callers.a]\nidentities = [\"x\"]\nallow = [\"*\"]\n[callers.b]\nidentities = [\"x\"]\nallow = [\"*\"]",
            "more than one caller",
        ),
    ] {
        let err = Policy::parse(text).expect_err(text).to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn the_service_key_is_the_bearer_credential_in_any_case() {
    let presented = |values: &[&[u8]]| {
        let mut headers = http::HeaderMap::new();
        for value in values {
            headers.append(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_bytes(value).expect("a header value"),
            );
        }
        // Owned, since the headers go when the closure returns.
        match presented_key(&headers) {
            AuthorizationHeader::Key(key) => format!("key {key:?}"),
            other => format!("{other:?}"),
        }
    };
    let key = |k: &str| format!("key {k:?}");
    assert_eq!(presented(&[b"Bearer plugin-key"]), key("plugin-key"));
    assert_eq!(presented(&[b"bearer plugin-key"]), key("plugin-key"));
    assert_eq!(presented(&[b"BEARER plugin-key"]), key("plugin-key"));
    assert_eq!(presented(&[b"Bearer  plugin-key \t"]), key("plugin-key"));
    assert_eq!(presented(&[b"Bearer "]), key(""));
    for refused in [
        &b"Basic cGx1Z2lu"[..],
        b"plugin-key",
        b"Bearer",
        b"Bearerplugin-key",
        b"Bearer \xff",
        b"",
    ] {
        assert_eq!(presented(&[refused]), "NotAKey", "{refused:?}");
    }
    assert_eq!(
        presented(&[b"Bearer plugin-key", b"Bearer auth-key"]),
        "NotAKey"
    );
    assert_eq!(presented(&[]), "Nothing");
    // An empty key is a key, and nobody's.
    assert!(matches!(
        policy().authorize("ValidateAccessToken", &[], AuthorizationHeader::Key("")),
        Err(Denial::Unauthenticated(_))
    ));
}

#[test]
fn a_credential_that_is_not_a_key_is_not_rescued_by_a_certificate() {
    let auth = vec!["spiffe://barazo/appview-auth".to_owned()];
    let denied = policy()
        .authorize("CreateSession", &auth, AuthorizationHeader::NotAKey)
        .expect_err("refused");
    assert!(matches!(denied, Denial::Unauthenticated(_)), "{denied:?}");
    assert!(denied.to_string().contains("not a service key"), "{denied}");
}

#[test]
fn each_caller_has_a_budget_half_the_global_limit_by_default() {
    let p = Policy::parse(&format!(
        "[callers.a]\nidentities = [\"a\"]\nallow = [\"*\"]\nmax_concurrent = 7\n[callers.b]\nkeys_sha256 = [\"{}\"]\nallow = [\"*\"]",
        sha256_hex("k")
    ))
    .expect("valid");
    let budgets = p.budgets(1024);
    assert_eq!(budgets["a"].available_permits(), 7);
    assert_eq!(budgets["b"].available_permits(), 512);
    assert_eq!(p.budgets(1)["b"].available_permits(), 1);
    let err = Policy::parse("[callers.a]\nidentities = [\"a\"]\nallow = []\nmax_concurrent = 0")
        .expect_err("zero");
    assert!(err.to_string().contains("at least 1"), "{err}");
}

#[test]
fn a_certificate_naming_two_callers_speaks_for_nobody() {
    let both = vec![
        "spiffe://barazo/appview-auth".to_owned(),
        "ops.barazo.internal".to_owned(),
    ];
    let denied = policy()
        .authorize("ValidateAccessToken", &both, AuthorizationHeader::Nothing)
        .expect_err("ambiguous");
    assert!(matches!(denied, Denial::Unauthenticated(_)), "{denied:?}");
    assert!(
        denied.to_string().contains("more than one caller"),
        "{denied}"
    );
}

#[test]
fn a_certificate_names_its_san_uris_and_dns_names() {
    let mut params =
        rcgen::CertificateParams::new(vec!["ops.barazo.internal".to_owned()]).expect("params");
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://barazo/appview-auth".try_into().expect("ascii"),
    ));
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    assert_eq!(
        certificate_identities(cert.der()),
        ["ops.barazo.internal", "spiffe://barazo/appview-auth"]
    );
    assert!(certificate_identities(b"not a certificate").is_empty());
}

#[test]
fn paths_map_to_rpcs() {
    assert_eq!(
        method_of("/barazo.session.v1.SessionService/CreateSession"),
        Some("CreateSession")
    );
    assert_eq!(
        method_of("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
        Some(REFLECTION)
    );
    assert_eq!(
        method_of("/envoy.service.auth.v3.Authorization/Check"),
        Some("Check")
    );
    assert_eq!(method_of("/grpc.health.v1.Health/Check"), None);
    assert_eq!(method_of("garbage"), None);
    // Another service's method name is not that method's right.
    for unknown in [
        "/barazo.session.v1.SessionService/Check",
        "/envoy.service.auth.v3.Authorization/CreateSession",
    ] {
        assert_eq!(method_of(unknown), Some(unknown));
    }
}
