//! The one table of RPC names: what the handlers, the authorization policy, the spans and
//! the metrics call each method of `barazo.session.v1.SessionService`.
//!
//! A name typed anywhere else could drift from the proto; a unit test checks this table
//! against the compiled proto's service, both ways.

use crate::metrics::RpcLabels;
use crate::proto::session_service_server::SERVICE_NAME;
use tonic::Code;

/// Declares [`Rpc`] with each method's name written once.
macro_rules! rpcs {
    ($($(#[$doc:meta])* $method:ident),* $(,)?) => {
        /// A method of `barazo.session.v1.SessionService`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Rpc {
            $($(#[$doc])* $method,)*
        }

        impl Rpc {
            /// Every session RPC, in the proto's order (policy messages list them so).
            pub const ALL: &[Rpc] = &[$(Rpc::$method),*];

            /// The method name, e.g. `ValidateAccessToken`: `rpc.method` on spans, log
            /// lines and metrics, and the name a policy's `allow` uses.
            pub const fn method(self) -> &'static str {
                match self {
                    $(Rpc::$method => stringify!($method),)*
                }
            }

            /// The span name, `barazo.session.v1.SessionService/<method>`.
            pub const fn span_name(self) -> &'static str {
                match self {
                    $(Rpc::$method => concat!("barazo.session.v1.SessionService/", stringify!($method)),)*
                }
            }
        }
    };
}

rpcs! {
    /// The OAuth callback: a new session for a DID.
    CreateSession,
    /// `requireAuth`: whether an access token is valid, and whose it is.
    ValidateAccessToken,
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
}

/// The name under which a policy allows gRPC server reflection (v1 and v1alpha alike).
pub const REFLECTION: &str = "ServerReflection";

/// The `rpc.service` metric label of a reflection call (either version).
pub const REFLECTION_SERVICE: &str = "grpc.reflection.ServerReflection";

impl Rpc {
    /// The session RPC named `method`, if there is one.
    pub fn from_method(method: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|rpc| rpc.method() == method)
    }

    /// The metric labels of this RPC ending with `code`.
    pub fn labels(self, code: Code) -> RpcLabels {
        RpcLabels::grpc(SERVICE_NAME, self.method(), code)
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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// The methods of `SessionService` as the compiled proto declares them.
    fn proto_methods() -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the build's descriptor set decodes");
        let (package, service) = SERVICE_NAME.rsplit_once('.').expect("a package");
        set.file
            .iter()
            .filter(|file| file.package() == package)
            .flat_map(|file| &file.service)
            .filter(|s| s.name() == service)
            .flat_map(|s| &s.method)
            .map(|m| m.name().to_owned())
            .collect()
    }

    #[test]
    fn the_table_is_the_protos_service() {
        let table: Vec<&str> = Rpc::ALL.iter().map(|rpc| rpc.method()).collect();
        assert_eq!(proto_methods(), table);
    }

    #[test]
    fn names_are_derived_from_one_spelling() {
        for &rpc in Rpc::ALL {
            assert_eq!(rpc.span_name(), format!("{SERVICE_NAME}/{}", rpc.method()));
            assert_eq!(Rpc::from_method(rpc.method()), Some(rpc));
            assert_eq!(metric_name(rpc.method()), rpc.method());
            assert_eq!(rpc.labels(Code::Ok).rpc_method, rpc.method());
        }
    }

    #[test]
    fn unknown_names_never_become_label_values() {
        assert_eq!(metric_name(REFLECTION), REFLECTION);
        for stranger in ["", "createsession", "CreateSession ", "Check", "*"] {
            assert_eq!(Rpc::from_method(stranger), None, "{stranger:?}");
            assert_eq!(metric_name(stranger), "unknown", "{stranger:?}");
        }
    }
}
