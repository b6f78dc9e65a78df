//! The admin listener: `/metrics` scraped and parsed after real calls, `/livez`, `/readyz`.

use crate::support::http::get;
use crate::support::{TestApp, unique_did};
use barazo_session::config::StoreKind;
use tonic_health::pb::health_check_response::ServingStatus;

/// The value of one series (name with its labels, exactly as exposed).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

fn rpc(method: &str, code: u32) -> String {
    format!(
        "rpc_system=\"grpc\",rpc_service=\"barazo.session.v1.SessionService\",rpc_method=\"{method}\",rpc_grpc_status_code=\"{code}\""
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_outcomes_and_round_trips() {
    // Without the validation cache, so every validation is a round trip (tests/it/cache.rs
    // counts the cache's hits).
    let mut app = TestApp::spawn_with(
        StoreKind::Valkey,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--validation-cache",
            "off",
        ],
    )
    .await;
    let admin = app.metrics_addr.expect("admin listener");
    let did = unique_did();
    let first = app.create(&did, "alice.test").await;
    let second = app.create(&did, "alice.test").await;
    for _ in 0..3 {
        assert!(app.validate(&first.access_token).await.valid);
    }
    assert!(!app.validate(&"0".repeat(64)).await.valid);
    assert!(!app.validate("malformed").await.valid);
    app.refresh(&second.refresh_token).await.expect("refresh");
    assert!(app.delete(&first.refresh_token).await.expect("delete"));
    assert_eq!(app.delete_all(&did).await.expect("delete all"), 1);

    let (status, text) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(text.ends_with("# EOF\n"), "complete exposition");
    assert_eq!(
        sample(&text, "barazo_session_validations_total{outcome=\"valid\"}"),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "barazo_session_validations_total{outcome=\"invalid\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(&text, "barazo_session_sessions_total{event=\"created\"}"),
        2.0
    );
    assert_eq!(
        sample(&text, "barazo_session_sessions_total{event=\"refreshed\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "barazo_session_sessions_total{event=\"deleted\"}"),
        2.0
    );
    assert_eq!(sample(&text, "barazo_session_store_up"), 1.0);
    assert_eq!(
        sample(&text, "barazo_session_valkey_in_flight_commands"),
        0.0
    );
    assert!(text.contains("barazo_session_build_info{version=\""));

    // The histogram: 5 validations answered OK, buckets cumulative and ending at the count.
    let validate = rpc("ValidateAccessToken", 0);
    let count = sample(
        &text,
        &format!("rpc_server_call_duration_seconds_count{{{validate}}}"),
    );
    assert_eq!(count, 5.0);
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.starts_with("rpc_server_call_duration_seconds_bucket{le=")
                && l.contains(&format!(",{validate}}}"))
        })
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .expect("value")
        })
        .collect();
    assert_eq!(buckets.len(), 15, "14 bounds and +Inf");
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last(), Some(&count));
    assert!(
        sample(
            &text,
            &format!("rpc_server_call_duration_seconds_sum{{{validate}}}")
        ) > 0.0
    );
    // One round trip per validation that reached the store (the malformed one did not).
    let round_trips = "db_system_name=\"valkey\",db_operation_name=\"validate\",outcome=\"ok\"";
    assert_eq!(
        sample(
            &text,
            &format!("barazo_session_valkey_round_trip_duration_seconds_count{{{round_trips}}}")
        ),
        4.0
    );
    for (method, n) in [
        ("CreateSession", 2.0),
        ("RefreshSession", 1.0),
        ("DeleteSession", 1.0),
        ("DeleteAllSessionsForDid", 1.0),
    ] {
        let series = format!(
            "rpc_server_call_duration_seconds_count{{{}}}",
            rpc(method, 0)
        );
        assert_eq!(sample(&text, &series), n, "{method}");
    }

    // An outage: errors are counted apart from invalid tokens, and readiness drops.
    assert_eq!(get(admin, "/readyz").await.0, 200);
    app.valkey_mut().kill();
    let failed = app
        .try_validate(&second.access_token)
        .await
        .expect_err("down");
    assert_eq!(failed.code(), tonic::Code::Unavailable);
    app.wait_for_health(ServingStatus::NotServing).await;
    let (_, text) = get(admin, "/metrics").await;
    assert_eq!(
        sample(&text, "barazo_session_validations_total{outcome=\"error\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                "rpc_server_call_duration_seconds_count{{{}}}",
                rpc("ValidateAccessToken", 14)
            )
        ),
        1.0
    );
    assert_eq!(sample(&text, "barazo_session_store_up"), 0.0);
    assert_eq!(get(admin, "/readyz").await.0, 503);
    assert_eq!(get(admin, "/livez").await, (200, "ok\n".to_owned()));
}

/// Revocations are counted by why, each RPC under its own reason, and also as `deleted`
/// sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_are_counted_by_reason() {
    use barazo_session::proto::{AccountStatus, RevokeOtherSessionsRequest, RevokeSessionRequest};
    let app = TestApp::spawn_with(
        StoreKind::Valkey,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--max-sessions-per-did",
            "2",
        ],
    )
    .await;
    let did = unique_did();
    let mut created = Vec::new();
    for _ in 0..4 {
        // The third and the fourth login revoke one each (cap).
        created.push(app.create(&did, "alice.test").await);
    }
    let others = app
        .client
        .clone()
        .revoke_other_sessions(RevokeOtherSessionsRequest {
            refresh_token: created[3].refresh_token.clone(),
        })
        .await
        .expect("revoke others")
        .into_inner();
    assert_eq!(others.revoked_count, 1);
    let fifth = app.create(&did, "alice.test").await;
    let revoked = app
        .client
        .clone()
        .revoke_session(RevokeSessionRequest {
            did: did.clone(),
            session_key: crate::support::sha256_hex(&fifth.refresh_token),
        })
        .await
        .expect("revoke")
        .into_inner();
    assert!(revoked.revoked);
    assert!(app.delete(&created[3].refresh_token).await.expect("logout"));
    app.create(&did, "alice.test").await;
    app.create(&did, "alice.test").await;
    assert_eq!(app.delete_all(&did).await.expect("delete all"), 2);

    let (_, text) = get(app.metrics_addr.expect("admin listener"), "/metrics").await;
    let reason = |r: &str| {
        sample(
            &text,
            &format!("barazo_session_revocations_total{{reason=\"{r}\"}}"),
        )
    };
    assert_eq!(reason("cap"), 2.0);
    assert_eq!(reason("others"), 1.0);
    assert_eq!(reason("user"), 1.0);
    assert_eq!(reason("logout"), 1.0);
    assert_eq!(reason("all-for-did"), 2.0);
    // An account's status, as the firehose announced it, is its own reason.
    let statuses = [
        (AccountStatus::AccountDeleted, "account-deleted"),
        (AccountStatus::AccountTakendown, "account-takendown"),
        (AccountStatus::AccountDeactivated, "account-deactivated"),
        (AccountStatus::AccountSuspended, "account-suspended"),
    ];
    for (status, _) in statuses {
        let did = crate::support::unique_did();
        app.create(&did, "alice.test").await;
        assert_eq!(
            app.delete_all_because(&did, status as i32)
                .await
                .expect("delete all"),
            1
        );
    }
    let refused = app
        .delete_all_because(&crate::support::unique_did(), 99)
        .await
        .expect_err("an unknown status");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        refused.message(),
        "reason is not one this service knows: 99"
    );
    let (_, after) = get(app.metrics_addr.expect("admin listener"), "/metrics").await;
    let counted = |r: &str| {
        sample(
            &after,
            &format!("barazo_session_revocations_total{{reason=\"{r}\"}}"),
        )
    };
    for (_, label) in statuses {
        assert_eq!(counted(label), 1.0, "{label}");
    }
    assert_eq!(counted("all-for-did"), 2.0, "unchanged by the statuses");
    assert!(
        !text.contains("reason=\"lifetime\""),
        "none ended by lifetime"
    );
    assert_eq!(
        sample(&text, "barazo_session_sessions_total{event=\"deleted\"}"),
        7.0
    );

    // A refresh past the absolute lifetime ends the session: reason "lifetime". (This
    // service never lets a session's data outlive its deadline; a session the TypeScript
    // code keeps refreshing does: created 61 days ago, written a moment ago.)
    let mut conn = app.valkey().client().await;
    let sid = crate::support::sha256_hex(&format!("metrics-lifetime-{did}"));
    let created_ms = 1_700_000_000_000i64;
    let json = format!(
        r#"{{"sid":"{sid}","did":"{did}","handle":"carol.test","accessTokenHash":"{}","accessTokenExpiresAt":{},"createdAt":{created_ms}}}"#,
        "0".repeat(64),
        created_ms + 900_000
    );
    let _: () = redis::cmd("SET")
        .arg(format!("barazo:session:data:{sid}"))
        .arg(&json)
        .arg("EX")
        .arg(600)
        .query_async(&mut conn)
        .await
        .expect("write");
    let over = app.refresh(&sid).await.expect_err("over");
    assert_eq!(over.code(), tonic::Code::NotFound);
    let (_, text) = get(app.metrics_addr.expect("admin listener"), "/metrics").await;
    assert_eq!(
        sample(
            &text,
            "barazo_session_revocations_total{reason=\"lifetime\"}"
        ),
        1.0
    );
}

/// Reuse of an old refresh token is counted (the session is revoked, the call answers
/// NOT_FOUND like an unknown token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_reuse_is_counted() {
    let app = TestApp::spawn_with(
        StoreKind::Memory,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--refresh-token-rotation",
            "on",
            "--refresh-reuse-grace",
            "0",
        ],
    )
    .await;
    let admin = app.metrics_addr.expect("admin listener");
    let created = app.create(&unique_did(), "alice.test").await;
    app.refresh(&created.refresh_token).await.expect("rotate");
    let status = app
        .refresh(&created.refresh_token)
        .await
        .expect_err("reuse");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let (_, text) = get(admin, "/metrics").await;
    assert_eq!(
        sample(
            &text,
            "barazo_session_sessions_total{event=\"refresh_token_reused\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_counts_its_validations_and_one_call() {
    let app = TestApp::spawn_with(StoreKind::Memory, &["--metrics-listen", "127.0.0.1:0"]).await;
    let admin = app.metrics_addr.expect("admin listener");
    let created = app.create(&unique_did(), "alice.test").await;
    let batch = [
        created.access_token.clone(),
        created.access_token.clone(),
        "0".repeat(64),
        "malformed".into(),
    ];
    app.validate_many(&batch).await.expect("the batch answers");
    let status = app
        .validate_many(&vec!["0".repeat(64); 1001])
        .await
        .expect_err("too many");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let (_, text) = get(admin, "/metrics").await;
    let validations = |outcome: &str| {
        sample(
            &text,
            &format!("barazo_session_validations_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(validations("valid"), 2.0);
    assert_eq!(validations("invalid"), 2.0);
    // A refused call judged no token: one call without an answer.
    assert_eq!(validations("error"), 1.0);
    let calls = |code: u32| {
        sample(
            &text,
            &format!(
                "rpc_server_call_duration_seconds_count{{{}}}",
                rpc("ValidateAccessTokens", code)
            ),
        )
    };
    assert_eq!(calls(0), 1.0);
    assert_eq!(calls(3), 1.0);
}
