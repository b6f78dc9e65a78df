//! The caller policy the gateway tests share: a gateway allowed `Check` by its service key,
//! an edge proxy allowed `Check` by its certificate, a plugin allowed only
//! `ValidateAccessToken`, and the AppView allowed everything (by key or certificate).

use super::pki::TempDir;
use super::{TestApp, sha256_hex};
use barazo_session::proto::{CreateSessionRequest, CreateSessionResponse};

/// The gateway's service key (right: `Check`).
pub const GATEWAY_KEY: &str = "gateway-service-key-0123456789";
/// A plugin's service key (right: `ValidateAccessToken` only).
pub const PLUGIN_KEY: &str = "plugin-service-key-0123456789";
/// The AppView's service key (every right).
pub const APPVIEW_KEY: &str = "appview-service-key-0123456789";
/// The edge proxy's certificate identity (right: `Check`).
pub const EDGE_ID: &str = "spiffe://barazo.test/edge";
/// The AppView's certificate identity (every right).
pub const APPVIEW_ID: &str = "spiffe://barazo.test/appview";

/// Writes the policy into `dir`; its path, for `--authz-policy`.
pub fn gateway_policy(dir: &TempDir) -> String {
    let path = dir.write(
        "policy.toml",
        format!(
            r#"
[callers.gateway]
keys_sha256 = ["{}"]
allow = ["Check"]

[callers.edge]
identities = ["{EDGE_ID}"]
allow = ["Check"]

[callers.plugins]
keys_sha256 = ["{}"]
allow = ["ValidateAccessToken"]

[callers.appview]
identities = ["{APPVIEW_ID}"]
keys_sha256 = ["{}"]
allow = ["*"]
"#,
            sha256_hex(GATEWAY_KEY),
            sha256_hex(PLUGIN_KEY),
            sha256_hex(APPVIEW_KEY),
        ),
    );
    path.to_str().expect("utf-8").to_owned()
}

/// A session of `did` created by the AppView with its key (the policy allows it everything).
pub async fn create_as_appview(app: &TestApp, did: &str) -> CreateSessionResponse {
    let mut create = tonic::Request::new(CreateSessionRequest {
        did: did.to_owned(),
        handle: "alice.test".into(),
        ..Default::default()
    });
    create.metadata_mut().insert(
        "authorization",
        format!("Bearer {APPVIEW_KEY}").parse().expect("ascii"),
    );
    app.client
        .clone()
        .create_session(create)
        .await
        .expect("the AppView may create")
        .into_inner()
}
