//! What a session is, without any I/O: the stored record and its rules, credentials,
//! rotated refresh tokens, lifetimes, input syntax, and the view callers get. Every store
//! and every handler uses these; the Lua prelude of the Valkey scripts mirrors the rules of
//! [`record`] and [`rotation`] (each function names its twin).

pub(crate) mod clock;
pub(crate) mod lifetimes;
pub(crate) mod record;
pub(crate) mod revocation;
pub mod rotation;
pub(crate) mod syntax;
pub(crate) mod tokens;
pub(crate) mod view;

pub use clock::{now_ms, skew_clock_for_tests};
pub use lifetimes::{Lifetimes, TokenRules};
pub use record::{AccessTokenEntry, EarlierRotation, MAX_EARLIER_ROTATIONS, Role, SessionRecord};
pub use revocation::Revocation;
pub use syntax::{
    ClientFacts, MAX_USER_AGENT_BYTES, SyntaxError, validate_did, validate_handle,
    validate_session_key,
};
pub use tokens::{TOKEN_HEX_LEN, Token, is_well_formed_token, log_prefix, sha256_hex};
pub(crate) use tokens::{constant_time_eq, lower_hex};
