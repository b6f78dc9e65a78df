//! The one table of RPC names: what the handlers, the authorization policy, the spans and
//! the metrics call each method the service answers: those of
//! `barazo.session.v1.SessionService`, and Envoy's `envoy.service.auth.v3.Authorization/Check`
//! (the ext_authz gateway call, [`crate::api::ext_authz`]).
//!
//! A name typed anywhere else could drift from the proto; unit tests check this table
//! against the compiled protos' services, both ways.

use crate::observe::metrics::RpcLabels;
use tonic::Code;

/// The gRPC service of Envoy's external authorization call.
pub const EXT_AUTHZ_SERVICE: &str =
    envoy_types::pb::envoy::service::auth::v3::authorization_server::SERVICE_NAME;

/// Declares [`Rpc`] with each method's name written once, grouped by the service that has it.
macro_rules! rpcs {
    ($($service:literal => { $($(#[$doc:meta])* $method:ident),* $(,)? })*) => {
        /// A method the service answers: a session RPC or the ext_authz `Check`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Rpc {
            $($($(#[$doc])* $method,)*)*
        }

        impl Rpc {
            /// Every RPC, in the protos' order (policy messages list them so).
            pub const ALL: &[Rpc] = &[$($(Rpc::$method),*),*];

            /// The method name, e.g. `ValidateAccessToken`: `rpc.method` on spans, log
            /// lines and metrics, and the name a policy's `allow` uses (unique across
            /// services, which a unit test checks).
            pub const fn method(self) -> &'static str {
                match self {
                    $($(Rpc::$method => stringify!($method),)*)*
                }
            }

            /// The gRPC service that has the method: `rpc.service` on spans and metrics.
            pub const fn service(self) -> &'static str {
                match self {
                    $($(Rpc::$method => $service,)*)*
                }
            }

            /// The span name, `<service>/<method>`.
            pub const fn span_name(self) -> &'static str {
                match self {
                    $($(Rpc::$method => concat!($service, "/", stringify!($method)),)*)*
                }
            }
        }
    };
}

rpcs! {
    "barazo.session.v1.SessionService" => {
        /// The OAuth callback: a new session for a DID.
        CreateSession,
        /// `requireAuth`: whether an access token is valid, and whose it is.
        ValidateAccessToken,
        /// A caller's coalesced validations: up to 1,000 tokens, one answer each.
        ValidateAccessTokens,
        /// A new access token for the session named by a refresh token.
        RefreshSession,
        /// Logout: the session named by a refresh token ends.
        DeleteSession,
        /// Account deletion or takedown: every session of a DID ends.
        DeleteAllSessionsForDid,
        /// "Your sessions": a DID's live sessions, without credentials.
        ListSessions,
        /// "Log out that device": one session of a DID ends, named by its session key.
        RevokeSession,
        /// "Log out everywhere else": every session of the caller's DID but its own ends.
        RevokeOtherSessions,
        /// Callers that cache validations: what to drop, as it happens.
        WatchRevocations,
        /// The firehose's `#identity` event: a DID's sessions take its new handle.
        UpdateHandle,
    }
    "envoy.service.auth.v3.Authorization" => {
        /// A gateway's ext_authz question: may this HTTP request through, as whom.
        Check,
    }
    "http" => {
        /// `/v1/forward-auth` on the HTTP listener: nginx's, Caddy's or Traefik's
        /// question, may this request through, as whom.
        ForwardAuth,
        /// `/v1/introspect` on the HTTP listener: RFC 7662 token introspection.
        Introspect,
    }
}

/// The `rpc.service` of the HTTP listener's endpoints (no gRPC service has them).
pub const HTTP_SERVICE: &str = "http";

/// The name under which a policy allows gRPC server reflection (v1 and v1alpha alike).
pub const REFLECTION: &str = "ServerReflection";

/// The `rpc.service` metric label of a reflection call (either version).
pub const REFLECTION_SERVICE: &str = "grpc.reflection.ServerReflection";

impl Rpc {
    /// The gRPC method named `method` (as a policy names it), if there is one. The HTTP
    /// endpoints are not among them: the right to `Check` covers them
    /// ([`Rpc::policy_right`]).
    pub fn from_method(method: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|rpc| rpc.method() == method && !rpc.is_http())
    }

    /// The gRPC method a request path (`/<service>/<method>`) calls, if the service has it.
    pub fn from_path(path: &str) -> Option<Self> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        Self::from_method(method).filter(|rpc| rpc.service() == service)
    }

    /// Whether this is an endpoint of the HTTP listener rather than a gRPC method.
    pub const fn is_http(self) -> bool {
        matches!(self, Rpc::ForwardAuth | Rpc::Introspect)
    }

    /// The right a policy must grant for a call of this RPC: its own, except that the
    /// HTTP listener's endpoints ask what `Check` asks, so a gateway allowed `Check` may
    /// use them whichever protocol it speaks.
    pub const fn policy_right(self) -> Rpc {
        if self.is_http() { Rpc::Check } else { self }
    }

    /// Whether the RPC validates an access token (`ValidateAccessToken`, `Check` and the
    /// HTTP endpoints share one path, [`crate::api::validation`], and its outcome counter).
    pub const fn validates(self) -> bool {
        matches!(
            self,
            Rpc::ValidateAccessToken
                | Rpc::ValidateAccessTokens
                | Rpc::Check
                | Rpc::ForwardAuth
                | Rpc::Introspect
        )
    }

    /// The largest request message the RPC accepts, in bytes. Every session request but a
    /// batch is well under 3 KiB (a 2048-char DID and a 253-char handle), so 16 KiB leaves
    /// room and refuses junk early; a batch of 1,000 tokens is 66 KB, and ext_authz's
    /// `Check` carries the user's headers (see [`crate::api::ext_authz::MAX_CHECK_REQUEST_BYTES`]).
    pub const fn max_request_bytes(self) -> usize {
        match self {
            Rpc::ValidateAccessTokens | Rpc::Check => 128 * 1024,
            _ => 16 * 1024,
        }
    }

    /// The metric labels of this RPC ending with `code`.
    pub fn labels(self, code: Code) -> RpcLabels {
        RpcLabels::grpc(self.service(), self.method(), code)
    }
}

/// The static name of a method a policy can name, for metric labels: a session RPC or
/// [`REFLECTION`]. Anything else is `unknown`, so that callers cannot create label values.
pub fn metric_name(method: &str) -> &'static str {
    match Rpc::from_method(method) {
        Some(rpc) => rpc.method(),
        None if method == REFLECTION => REFLECTION,
        None => "unknown",
    }
}

/// The answer of a response future polled again after it completed: a bug in whatever
/// polls it, answered as a failed call rather than with a panic inside the server. Shared by
/// the layers that answer some calls themselves (authorization, undecodable requests).
pub fn polled_after_completion() -> tonic::Status {
    tonic::Status::internal("polled after completion")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::session_service_server::SERVICE_NAME;
    use prost::Message as _;

    /// The methods of `full_name` (`package.Service`) as the compiled descriptors declare them.
    fn proto_methods(descriptors: &[u8], full_name: &str) -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(descriptors)
            .expect("the build's descriptor set decodes");
        let (package, service) = full_name.rsplit_once('.').expect("a package");
        set.file
            .iter()
            .filter(|file| file.package() == package)
            .flat_map(|file| &file.service)
            .filter(|s| s.name() == service)
            .flat_map(|s| &s.method)
            .map(|m| m.name().to_owned())
            .collect()
    }

    /// The table's methods of `service`.
    fn table(service: &str) -> Vec<&'static str> {
        Rpc::ALL
            .iter()
            .filter(|rpc| rpc.service() == service)
            .map(|rpc| rpc.method())
            .collect()
    }

    #[test]
    fn the_table_is_the_protos_services() {
        assert_eq!(
            proto_methods(crate::proto::FILE_DESCRIPTOR_SET, SERVICE_NAME),
            table(SERVICE_NAME)
        );
        assert_eq!(
            proto_methods(crate::proto::EXT_AUTHZ_DESCRIPTOR_SET, EXT_AUTHZ_SERVICE),
            table(EXT_AUTHZ_SERVICE)
        );
        assert_eq!(table(HTTP_SERVICE), ["ForwardAuth", "Introspect"]);
        // No other service: every RPC is one of the two protos' or the HTTP listener's.
        assert_eq!(
            table(SERVICE_NAME).len() + table(EXT_AUTHZ_SERVICE).len() + table(HTTP_SERVICE).len(),
            Rpc::ALL.len()
        );
    }

    #[test]
    fn names_are_derived_from_one_spelling() {
        for &rpc in Rpc::ALL {
            assert_eq!(
                rpc.span_name(),
                format!("{}/{}", rpc.service(), rpc.method())
            );
            assert_eq!(rpc.labels(Code::Ok).rpc_method, rpc.method());
            if rpc.is_http() {
                // Not a gRPC path, nor a right of its own.
                assert_eq!(Rpc::from_path(&format!("/{}", rpc.span_name())), None);
                assert_eq!(Rpc::from_method(rpc.method()), None);
                assert_eq!(rpc.policy_right(), Rpc::Check);
                continue;
            }
            assert_eq!(Rpc::from_path(&format!("/{}", rpc.span_name())), Some(rpc));
            assert_eq!(Rpc::from_method(rpc.method()), Some(rpc));
            assert_eq!(metric_name(rpc.method()), rpc.method());
            assert_eq!(rpc.policy_right(), rpc);
        }
    }

    #[test]
    fn unknown_names_never_become_label_values() {
        assert_eq!(metric_name(REFLECTION), REFLECTION);
        for stranger in ["", "createsession", "CreateSession ", "check", "*"] {
            assert_eq!(Rpc::from_method(stranger), None, "{stranger:?}");
            assert_eq!(metric_name(stranger), "unknown", "{stranger:?}");
        }
    }

    #[test]
    fn a_method_belongs_to_its_own_service_only() {
        assert_eq!(
            Rpc::from_path("/envoy.service.auth.v3.Authorization/Check"),
            Some(Rpc::Check)
        );
        for stranger in [
            "/barazo.session.v1.SessionService/Check",
            "/envoy.service.auth.v3.Authorization/ValidateAccessToken",
            "/grpc.health.v1.Health/Check",
            "envoy.service.auth.v3.Authorization/Check",
            "/envoy.service.auth.v3.Authorization",
        ] {
            assert_eq!(Rpc::from_path(stranger), None, "{stranger}");
        }
        assert!(Rpc::Check.validates() && Rpc::ValidateAccessToken.validates());
        assert!(!Rpc::RefreshSession.validates());
    }
}
