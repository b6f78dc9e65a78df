//! Hostile clients (issue 11): raw HTTP/2 from the test on 127.0.0.1, each attack bounded in
//! time and count, against the real server.

use crate::security::{metrics_text, sample_or_zero};
use crate::support::TestApp;
use crate::support::raw::{self, grpc_frame};
use barazo_session::config::StoreKind;

const VALIDATE: &str = "/barazo.session.v1.SessionService/ValidateAccessToken";

/// Junk is the caller's mistake: INVALID_ARGUMENT (not INTERNAL, a server fault), counted
/// in the RPC metrics under its method and code, and the connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_is_invalid_argument_and_counted() {
    let app = TestApp::spawn_with(StoreKind::Memory, &["--metrics-listen", "127.0.0.1:0"]).await;
    let mut h2 = raw::connect(app.addr).await;
    let junk = [
        ("undecodable bytes", grpc_frame(false, &[0xff, 0xff, 0xff])),
        // Field 1 (access_token, a string) sent as a varint.
        ("a wrong wire type", grpc_frame(false, &[0x08, 0x01])),
        (
            "invalid UTF-8 in a string",
            grpc_frame(false, &[0x0a, 0x02, 0xff, 0xfe]),
        ),
        (
            "the compressed flag without grpc-encoding",
            grpc_frame(true, &[]),
        ),
    ];
    for (what, body) in &junk {
        let (code, message) = raw::unary(&mut h2, VALIDATE, body.clone()).await;
        assert_eq!(code, 3, "{what}: {message}");
        assert_eq!(message, "the request could not be decoded", "{what}");
    }
    // The open health service answers junk the same way.
    let (code, _) = raw::unary(
        &mut h2,
        "/grpc.health.v1.Health/Check",
        grpc_frame(false, &[0xff]),
    )
    .await;
    assert_eq!(code, 3, "health");
    // A well-formed request on the same connection is answered (an unknown token).
    let (code, message) = raw::unary(&mut h2, VALIDATE, grpc_frame(false, &[])).await;
    assert_eq!(code, 0, "{message}");

    let text = metrics_text(app.metrics_addr.expect("admin")).await;
    let count = |code: u32| {
        sample_or_zero(
            &text,
            &format!(
                "rpc_server_call_duration_seconds_count{{rpc_system=\"grpc\",rpc_service=\"barazo.session.v1.SessionService\",rpc_method=\"ValidateAccessToken\",rpc_grpc_status_code=\"{code}\"}}"
            ),
        )
    };
    assert_eq!(count(3), junk.len() as f64, "{text}");
    assert_eq!(count(13), 0.0, "{text}");
}
