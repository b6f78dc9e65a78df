//! Who may call what: caller identities (mTLS certificate SANs, or service keys sent as
//! `authorization: Bearer <key>`, scheme in any case), and the policy file that maps them to RPCs.
//!
//! The policy only ever holds SHA-256 digests of service keys. When a policy is configured,
//! everything it does not allow is denied: no credentials → `UNAUTHENTICATED`, a caller not
//! allowed the RPC → `PERMISSION_DENIED`. Health checks stay open to everyone.
//!
//! [`policy`] reads the file and decides, [`credentials`] reads what a request presents,
//! [`layer`] enforces it.

pub(crate) mod credentials;
pub(crate) mod layer;
pub(crate) mod policy;

pub use credentials::{
    AuthorizationHeader, bearer_credential, certificate_identities, presented_key,
};
pub use layer::{AuthLayer, Authorized};
pub use policy::{Denial, Policy, PolicyError};

#[cfg(test)]
mod tests;
