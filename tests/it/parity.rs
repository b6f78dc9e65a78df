//! One home for the session rules: the same cases, one table per rule, each row with its
//! expected outcome, run through
//!
//! - (a) the Rust rule itself (`parse_record`, `SessionRecord`'s methods, `Lifetimes`),
//! - (b) its Lua twin in the scripts' prelude, on a real Valkey (the prelude's text plus a
//!   call of the rule, arguments pushed by the scripts' own argument structs), and
//! - (c) the stores through [`SessionStore`]: the in-memory one, standalone Valkey and
//!   Valkey Cluster,
//!
//! and any difference fails, every differing row named. Rules judged on a clock get `now`
//! explicitly; the stores run on the real clock, with each row's times set relative to it
//! and far from every boundary (a row that sits on a boundary runs through the rules only).
//! The memory store holds records, not JSON: a row about reading bytes runs on it only when
//! the bytes are readable (it is given the record Rust reads), and a row it cannot hold (an
//! unreadable record, another DID's record in an index) skips it.

use crate::support::cluster::ValkeyCluster;
use crate::support::{Valkey, sha256_hex, unique_did};
use barazo_session::domain::rotation::{self, Candidate, Lookup, Presented};
use barazo_session::domain::{AccessTokenEntry, ClientFacts, EarlierRotation, Role, SessionRecord};
use barazo_session::domain::{Lifetimes, Revocation, TokenRules};
use barazo_session::observe::metrics::Metrics;
use barazo_session::store::memory::MemoryStore;
use barazo_session::store::valkey::args::{
    Arg, CreateArgs, DeleteArgs, HandleArgs, PresentedArgs, RefreshArgs, ScriptArgs,
};
use barazo_session::store::valkey::{
    PRELUDE, ValkeyClusterStore, ValkeyOptions, ValkeyStore, parse_record,
};
use barazo_session::store::{ByRefresh, KeyLayout, Refresh, SessionStore, StoreError};
use redis::aio::ConnectionLike;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// The tables.
// ---------------------------------------------------------------------------------------

/// The six fields the TypeScript code writes, with the fields `$rest` after them, then
/// `$tail` after the object. Placeholders, filled per row: SID (the key's sid), HASH (its
/// access token's hash), OTHER (another token's hash), PREV (the sid's hash), EXP (a live
/// expiry), CREATED (a moment ago).
macro_rules! six {
    () => {
        six!("")
    };
    ($rest:literal) => {
        six!($rest, "")
    };
    ($rest:literal, $tail:literal) => {
        concat!(
            r#"{"sid":"SID","did":"did:plc:parity","handle":"alice.test","accessTokenHash":"HASH","accessTokenExpiresAt":EXP,"createdAt":CREATED"#,
            $rest,
            "}",
            $tail
        )
        .as_bytes()
    };
}

/// Reading stored bytes: a name, the bytes (see `six!`), edits made to them first (each
/// text replaced by the bytes given), and whether the record is readable.
type ReadRow = (
    &'static str,
    &'static [u8],
    &'static [(&'static str, &'static [u8])],
    bool,
);

#[rustfmt::skip]
const READ_ROWS: &[ReadRow] = &[
    ("the six fields the TypeScript code writes", six!(), &[], true),
    ("the six in another order, spaced",
        b" {\n \"createdAt\" : CREATED , \"handle\":\"alice.test\",\"did\":\"did:plc:parity\",\"sid\":\"SID\",\t\"accessTokenExpiresAt\":EXP,\"accessTokenHash\":\"HASH\"\r\n}\n",
        &[], true),
    ("every field this service writes",
        six!(r#","refreshedAt":CREATED,"userAgent":"Mozilla/5.0 (X11) \"q\" \\ é \u001f","ipAddress":"2001:db8::1","accessTokens":[{"hash":"OTHER","expiresAt":EXP}],"refreshFamily":"fam","refreshTokenHash":"cur","previousRefreshTokenHash":"PREV","rotatedAt":CREATED,"rotationNonce":"n1","earlierRotations":[{"hash":"e0","nonce":"n0","rotatedAt":CREATED}]"#),
        &[], true),
    ("unknown fields of every JSON type",
        six!(r#","x":{"a":[1,-0.5e+3,2E-2,true,false,null,{"b":"\ud800 lone"}],"c":{}},"y":[],"z":"é\/\n\u0000""#),
        &[], true),
    ("a known key spelled with an escape", six!(), &[(r#"{"sid""#, br#"{"s\u0069d""#)], true),
    ("null for the optional fields",
        six!(r#","refreshedAt":null,"refreshFamily":null,"refreshTokenHash":null,"previousRefreshTokenHash":null,"rotatedAt":null,"rotationNonce":null"#),
        &[], true),
    ("a record as an array of its fields (serde's derive reads one)",
        br#"["SID","did:plc:parity","alice.test","HASH",EXP,CREATED,null,"agent"]"#, &[], true),
    ("an access token entry as an array", six!(r#","accessTokens":[["OTHER",EXP]]"#), &[], true),
    ("an unknown key twice", six!(r#","x":1,"x":"2""#), &[], true),
    ("the largest time a double holds exactly", six!(), &[("CREATED", b"9007199254740991")], true),
    ("not JSON", b"not json", &[], false),
    ("empty", b"", &[], false),
    ("an empty array", b"[]", &[], false),
    ("an empty object", b"{}", &[], false),
    ("cut short", br#"{"sid":"SID","did":"did:plc:parity","handle":"ali"#, &[], false),
    ("trailing characters", six!("", " x"), &[], false),
    ("a trailing NUL byte", six!("", "\0"), &[], false),
    ("a byte-order mark", six!(), &[(r#"{"sid""#, "\u{feff}{\"sid\"".as_bytes())], false),
    ("a trailing comma", six!(","), &[], false),
    ("bytes that are not UTF-8", six!(), &[("alice.test", b"alice\xff\xfe")], false),
    ("an overlong encoding in an unknown field", six!(r#","x":"@@""#), &[("@@", b"\xc0\xaf")], false),
    ("a UTF-16 surrogate encoded as UTF-8", six!(r#","x":"@@""#), &[("@@", b"\xed\xa0\x80")], false),
    ("a raw control character in a string", six!(), &[("alice.test", b"alice\n.test")], false),
    ("a raw control character in an unknown field", six!(",\"x\":\"a\tb\""), &[], false),
    ("a lone surrogate in a known field", six!(), &[("alice.test", br"\ud800")], false),
    ("a lone surrogate in a key", six!(r#","\ud800":1"#), &[], false),
    ("an invalid escape", six!(r#","x":"\x""#), &[], false),
    ("createdAt as a string", six!(), &[(":CREATED", br#":"CREATED""#)], false),
    ("an integer written 1.0", six!(), &[(":EXP", b":EXP.0")], false),
    ("an integer written with an exponent", six!(), &[(":CREATED", b":1e3")], false),
    ("minus zero", six!(), &[(":CREATED", b":-0")], false),
    ("a negative time", six!(), &[(":CREATED", b":-1")], false),
    ("a time of 2^53", six!(), &[(":CREATED", b":9007199254740992")], false),
    ("a hexadecimal number", six!(), &[(":CREATED", b":0x10")], false),
    ("a leading zero", six!(r#","x":01"#), &[], false),
    ("a plus sign", six!(r#","x":+1"#), &[], false),
    ("NaN", six!(r#","x":NaN"#), &[], false),
    ("did null", six!(), &[(r#""did:plc:parity""#, b"null")], false),
    ("handle a number", six!(), &[(r#""alice.test""#, b"7")], false),
    ("userAgent null", six!(r#","userAgent":null"#), &[], false),
    ("accessTokens null", six!(r#","accessTokens":null"#), &[], false),
    ("an access token entry without expiresAt", six!(r#","accessTokens":[{"hash":"OTHER"}]"#), &[], false),
    ("an access token entry's hash a number", six!(r#","accessTokens":[{"hash":5,"expiresAt":EXP}]"#), &[], false),
    ("an access token entry with a field twice",
        six!(r#","accessTokens":[{"hash":"OTHER","expiresAt":EXP,"hash":"OTHER"}]"#), &[], false),
    ("an access token entry as a longer array", six!(r#","accessTokens":[["OTHER",EXP,1]]"#), &[], false),
    ("an earlier rotation's time a string",
        six!(r#","earlierRotations":[{"hash":"e0","nonce":"n0","rotatedAt":"CREATED"}]"#), &[], false),
    ("refreshFamily a number", six!(r#","refreshFamily":7"#), &[], false),
    ("rotatedAt a fraction", six!(r#","rotatedAt":1.5"#), &[], false),
    ("the sid twice", six!(r#","sid":"SID""#), &[], false),
    ("another sid than its key's", six!(), &[(r#""sid":"SID""#, br#""sid":"other""#)], false),
    ("an array record missing a field", br#"["SID","did:plc:parity","alice.test","HASH",EXP]"#, &[], false),
];

/// Whether a row runs on the stores too: a row that sits on a clock boundary cannot (the
/// stores read the real clock).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clock {
    Any,
    Exact,
}

/// How long from now a live token expires (ms).
const LIVE: i64 = 600_000;

/// The per-tab access tokens (`add_access_token`): a name; the session's other tokens and
/// its newest (a label, when it expires relative to now); the refreshing tab's previous
/// token; the most tokens per session; the other tokens kept (oldest first; the new one is
/// then the newest); the ones dropped, in the rule's order.
type TokenRow = (
    &'static str,
    &'static [(&'static str, i64)],
    (&'static str, i64),
    Option<&'static str>,
    usize,
    &'static [&'static str],
    &'static [&'static str],
    Clock,
);

#[rustfmt::skip]
const TOKEN_ROWS: &[TokenRow] = &[
    ("a TypeScript record (no accessTokens), no previous token",
        &[], ("a", LIVE), None, 8, &["a"], &[], Clock::Any),
    ("the tab's own previous token goes at once",
        &[], ("a", LIVE), Some("a"), 8, &[], &["a"], Clock::Any),
    ("a previous token the session never had changes nothing",
        &[("a", LIVE)], ("b", LIVE), Some("stranger"), 8, &["a", "b"], &[], Clock::Any),
    ("one tab's previous token among several",
        &[("a", LIVE), ("b", LIVE)], ("c", LIVE), Some("b"), 8, &["a", "c"], &["b"], Clock::Any),
    ("expired tokens go",
        &[("a", -1_000), ("b", LIVE)], ("c", LIVE), None, 8, &["b", "c"], &["a"], Clock::Any),
    ("an expired newest token goes too",
        &[("a", LIVE)], ("b", -5_000), None, 8, &["a"], &["b"], Clock::Any),
    ("a token expiring exactly now goes",
        &[("a", 0)], ("b", LIVE), None, 8, &["b"], &["a"], Clock::Exact),
    ("a token expiring a millisecond from now stays",
        &[("a", 1)], ("b", LIVE), None, 8, &["a", "b"], &[], Clock::Exact),
    ("past the cap the oldest go",
        &[("a", LIVE), ("b", LIVE), ("c", LIVE)], ("d", LIVE), None, 3, &["c", "d"], &["a", "b"], Clock::Any),
    ("a cap of one: each refresh revokes the tokens before",
        &[("a", LIVE)], ("b", LIVE), None, 1, &[], &["a", "b"], Clock::Any),
    ("a cap of zero counts as one",
        &[], ("a", LIVE), None, 0, &[], &["a"], Clock::Any),
    ("expired, the tab's own and the cap at once",
        &[("a", -1_000), ("b", LIVE), ("c", LIVE)], ("d", LIVE), Some("c"), 2, &["d"], &["a", "c", "b"], Clock::Any),
    ("an entry with an empty hash is skipped",
        &[("", LIVE), ("a", LIVE)], ("b", LIVE), None, 8, &["a", "b"], &[], Clock::Exact),
];

/// The reuse grace of the rows (ms).
const GRACE: i64 = 10_000;

/// Which refresh token a row presents.
#[derive(Clone, Copy)]
enum Shown {
    /// The session id.
    Sid,
    /// The i-th token of the session's chain (0: its first).
    Token(usize),
    /// A token of another family.
    OtherFamily,
    /// A token of the session's family it never issued.
    NeverIssued,
}

/// A session's refresh-token history: `rotations` `None` is a TypeScript record (never
/// rotated); else its rotations, oldest first, each as how long ago it happened (ms);
/// `migrated`: the chain starts with the session id (its first refresh had rotation on),
/// else with a token of its own family (created with rotation on).
struct History {
    rotations: Option<&'static [i64]>,
    migrated: bool,
}

const NEVER: History = History {
    rotations: None,
    migrated: false,
};

const fn rotated(agos: &'static [i64]) -> History {
    History {
        rotations: Some(agos),
        migrated: false,
    }
}

const fn migrated(agos: &'static [i64]) -> History {
    History {
        rotations: Some(agos),
        migrated: true,
    }
}

/// What a presented refresh token is to its session (`role_of` / `refresh_role`).
type RoleRow = (&'static str, History, Shown, Role, Clock);

#[rustfmt::skip]
const ROLE_ROWS: &[RoleRow] = &[
    ("a TypeScript session, by its sid", NEVER, Shown::Sid, Role::Current, Clock::Any),
    ("a TypeScript session, by a rotated token (the TypeScript code rewrote it)",
        NEVER, Shown::OtherFamily, Role::Foreign, Clock::Any),
    ("a session created with rotation on, by its token", rotated(&[]), Shown::Token(0), Role::Current, Clock::Any),
    ("a session created with rotation on, by its sid", rotated(&[]), Shown::Sid, Role::Reuse, Clock::Any),
    ("the current token after rotations", rotated(&[3_000, 1_000]), Shown::Token(2), Role::Current, Clock::Any),
    ("the previous token within the grace", rotated(&[3_000, 1_000]), Shown::Token(1), Role::Grace, Clock::Any),
    ("an earlier token within the grace", rotated(&[3_000, 1_000]), Shown::Token(0), Role::Grace, Clock::Any),
    ("an earlier token past the grace", rotated(&[20_000, 1_000]), Shown::Token(0), Role::Reuse, Clock::Any),
    ("the previous token past the grace", rotated(&[30_000, 20_000]), Shown::Token(1), Role::Reuse, Clock::Any),
    ("the previous token exactly a grace ago", rotated(&[30_000, GRACE]), Shown::Token(1), Role::Reuse, Clock::Exact),
    ("the previous token a millisecond inside the grace",
        rotated(&[30_000, GRACE - 1]), Shown::Token(1), Role::Grace, Clock::Exact),
    ("a migrated session, by its old sid within the grace", migrated(&[1_000]), Shown::Sid, Role::Grace, Clock::Any),
    ("a migrated session, by its old sid past the grace", migrated(&[20_000]), Shown::Sid, Role::Reuse, Clock::Any),
    ("a migrated session, by its current token", migrated(&[1_000]), Shown::Token(1), Role::Current, Clock::Any),
    ("a token of another family", rotated(&[1_000]), Shown::OtherFamily, Role::Foreign, Clock::Any),
    ("a token of its family it never issued", rotated(&[1_000]), Shown::NeverIssued, Role::Reuse, Clock::Any),
];

/// One more rotation, with the current token (`rotate`): the history; the earlier
/// rotations kept after it (labels: `t<i>` is the chain's i-th token); whether the session
/// got its family now.
type RotateRow = (&'static str, History, &'static [&'static str], bool, Clock);

#[rustfmt::skip]
const ROTATE_ROWS: &[RotateRow] = &[
    ("a TypeScript session's first rotation", NEVER, &[], true, Clock::Any),
    ("the first rotation of a session created with rotation on", rotated(&[]), &[], false, Clock::Any),
    ("the previous rotation within the grace joins the earlier ones", rotated(&[1_000]), &["t0"], false, Clock::Any),
    ("a previous rotation past the grace is forgotten", rotated(&[20_000]), &[], false, Clock::Any),
    ("the earlier ones past the grace go, from the oldest end",
        rotated(&[20_000, 15_000, 5_000, 1_000]), &["t2", "t3"], false, Clock::Any),
    ("at most four earlier rotations",
        rotated(&[5_000, 4_000, 3_000, 2_000, 1_000]), &["t1", "t2", "t3", "t4"], false, Clock::Any),
    ("only the oldest end is cut: a stale one after a fresh one stays",
        rotated(&[1_000, 20_000]), &["t0", "t1"], false, Clock::Any),
    ("a rotation exactly a grace ago is forgotten", rotated(&[GRACE]), &[], false, Clock::Exact),
    ("a migrated session's next rotation", migrated(&[1_000]), &["t0"], false, Clock::Any),
];

const DAY: i64 = 86_400_000;

/// The absolute lifetime (`deadline_ms` / `lifetime_left`): how long ago the session was
/// created; when it was last refreshed (`None`: a TypeScript record); the absolute
/// lifetime; the session and access token TTLs a refresh gives (of 600 s and 60 s), `None`
/// when it is past its deadline.
type LifetimeRow = (
    &'static str,
    i64,
    Option<i64>,
    Option<i64>,
    Option<(i64, i64)>,
    Clock,
);

#[rustfmt::skip]
const LIFETIME_ROWS: &[LifetimeRow] = &[
    ("no absolute lifetime", 400 * DAY, None, None, Some((600_000, 60_000)), Clock::Any),
    ("far from the deadline", 1_000, None, Some(30 * DAY), Some((600_000, 60_000)), Clock::Any),
    ("the deadline before the session's TTL ends",
        30 * DAY - 300_000, Some(1_000), Some(30 * DAY), Some((300_000, 60_000)), Clock::Any),
    ("the deadline before the token's TTL ends",
        30 * DAY - 30_000, None, Some(30 * DAY), Some((30_000, 30_000)), Clock::Any),
    ("a millisecond before the deadline", 30 * DAY - 1, None, Some(30 * DAY), Some((1, 1)), Clock::Exact),
    ("exactly at the deadline", 30 * DAY, None, Some(30 * DAY), None, Clock::Exact),
    ("past the deadline (a TypeScript record)", 30 * DAY + 1_000, None, Some(30 * DAY), None, Clock::Any),
    ("refreshed a moment ago, created past the deadline",
        30 * DAY + 1_000, Some(10), Some(30 * DAY), None, Clock::Any),
];

/// A session in the index of a cap row: readable (last refreshed, or `None` for a
/// TypeScript record, and created, both ms ago), unreadable, or another DID's.
#[derive(Clone, Copy)]
enum Member {
    Readable(Option<i64>, i64),
    Unreadable,
    OtherDid,
}

/// The cap on sessions per DID, when a new session is created (`last_refreshed` and the
/// cap's order): the DID's indexed sessions (labels: their sids sort in label order), the
/// cap, the ones revoked.
type CapRow = (
    &'static str,
    &'static [(&'static str, Member)],
    u32,
    &'static [&'static str],
);

#[rustfmt::skip]
const CAP_ROWS: &[CapRow] = &[
    ("the least recently refreshed go first",
        &[("a", Member::Readable(Some(5_000), 10_000)), ("b", Member::Readable(Some(1_000), 10_000)),
          ("c", Member::Readable(Some(3_000), 10_000))], 3, &["a"]),
    ("a TypeScript session counts as refreshed when created",
        &[("a", Member::Readable(Some(2_000), 10_000)), ("b", Member::Readable(None, 8_000)),
          ("c", Member::Readable(Some(1_000), 10_000))], 2, &["b", "a"]),
    ("a tie goes by sid",
        &[("b", Member::Readable(Some(1_000), 10_000)), ("a", Member::Readable(Some(1_000), 10_000)),
          ("c", Member::Readable(Some(500), 10_000))], 3, &["a"]),
    ("an unreadable record goes first",
        &[("a", Member::Readable(Some(1_000), 10_000)), ("x", Member::Unreadable),
          ("b", Member::Readable(Some(2_000), 10_000))], 3, &["x"]),
    ("another DID's record only leaves the index",
        &[("a", Member::Readable(Some(1_000), 10_000)), ("o", Member::OtherDid),
          ("b", Member::Readable(Some(2_000), 10_000))], 3, &[]),
    ("below the cap nothing goes",
        &[("a", Member::Readable(Some(1_000), 10_000)), ("b", Member::Readable(Some(2_000), 10_000))], 5, &[]),
];

// ---------------------------------------------------------------------------------------
// Running them.
// ---------------------------------------------------------------------------------------

const PREFIX: &str = "parity:";

/// The rules' clock: any fixed epoch millisecond.
const T0: i64 = 1_764_357_100_000;

/// The stores' lifetimes (the rows change what they test).
const LIFETIMES: Lifetimes = Lifetimes {
    session: Duration::from_secs(600),
    access_token: Duration::from_secs(60),
    max: None,
    max_per_did: None,
    tokens: TokenRules {
        max_access_tokens: 8,
        rotation: false,
        reuse_grace: Duration::from_secs(10),
    },
};

/// A call of one prelude rule: `KEYS[1]` names it; a record is read from `KEYS[2]` under
/// the sid `KEYS[3]` and judged at `KEYS[4]`; `ARGV` is what the rule takes (for `role`
/// and `refresh`, what the scripts' argument structs push). Two calls differ: `args` reads
/// the `ARGV` pushed with the reader `KEYS[2]` names, and `cap` ranks the sessions given as
/// sid and bytes pairs in `KEYS[2..]` as `create.lua` does.
const CALL: &str = r"
local rule = KEYS[1]
if rule == 'readable' then
  local s, why = record_readable(KEYS[2], KEYS[3])
  if not s then return {'corrupt', why} end
  return {'ok', record_json(s)}
elseif rule == 'args' then
  local readers = {presented = presented_args, refresh = refresh_args, delete = delete_args,
    create = create_args, handle = handle_args}
  return cjson.encode(readers[KEYS[2]]())
elseif rule == 'cap' then
  local live = {}
  for i = 2, #KEYS, 2 do
    local s = record_readable(KEYS[i + 1], KEYS[i])
    live[#live + 1] = {s and last_refreshed(s) or -1, KEYS[i]}
  end
  table.sort(live, cap_order)
  local sids = {}
  for i, entry in ipairs(live) do sids[i] = entry[2] end
  return sids
end
local s = assert(record_readable(KEYS[2], KEYS[3]))
local now = tonumber(KEYS[4])
if rule == 'role' then
  local a = presented_args()
  return refresh_role(s, a.sid, a.family, a.token_hash, now, a.grace)
elseif rule == 'add_access_token' then
  local removed = add_access_token(s, ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]),
    now)
  return {record_json(s), table.concat(removed, ' ')}
elseif rule == 'rotate' then
  local new_family = rotate(s, ARGV[1], {nonce = ARGV[2], hash = ARGV[3], family = ARGV[4]},
    now, tonumber(ARGV[5]))
  return {record_json(s), new_family and 'new family' or 'same family'}
elseif rule == 'rename' then
  local renamed = rename(s, ARGV[1], ARGV[2])
  return {record_json(s), renamed and 'renamed' or 'not its DID'}
elseif rule == 'refresh' then
  local outcome, session_ttl, access_ttl, removed = refresh_record(s, refresh_args(), now)
  if outcome ~= 'ok' then return {outcome} end
  return {outcome, record_json(s), int(session_ttl), int(access_ttl),
    table.concat(removed, ' ')}
end
error('no such rule: ' .. rule)
";

/// The prelude on a real Valkey.
struct Lua {
    conn: redis::aio::MultiplexedConnection,
    script: redis::Script,
}

impl Lua {
    async fn on(valkey: &Valkey) -> Self {
        Self {
            conn: valkey.client().await,
            script: redis::Script::new(&format!("{PRELUDE}\n{CALL}")),
        }
    }

    /// Runs `rule` on `record` (read under `sid`) at `now`, with `args` pushed after.
    async fn call<T: redis::FromRedisValue>(
        &self,
        rule: &str,
        record: &[u8],
        sid: &str,
        now: i64,
        args: &dyn Fn(&mut redis::ScriptInvocation<'_>),
    ) -> T {
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(rule)
            .key(record)
            .key(sid)
            .key(now.to_string());
        args(&mut invocation);
        invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .unwrap_or_else(|e| panic!("{rule}: {e}"))
    }

    /// Reads `record` under `sid` in Lua: its JSON as written back, or why not.
    async fn readable(&self, record: &[u8], sid: &str) -> Result<String, String> {
        let (status, text): (String, String) = self.call("readable", record, sid, 0, &|_| {}).await;
        if status == "ok" { Ok(text) } else { Err(text) }
    }
}

/// Every difference found, each naming its table, row and what differed.
#[derive(Default)]
struct Report(Vec<String>);

impl Report {
    fn check<T: PartialEq + std::fmt::Debug>(&mut self, row: &str, what: &str, got: T, want: T) {
        if got != want {
            self.0
                .push(format!("{row}: {what}: got {got:?}, expected {want:?}"));
        }
    }

    fn assert_empty(self, table: &str) {
        assert!(
            self.0.is_empty(),
            "{table}: {} difference(s):\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// The three stores, and a way to write keys behind the Valkey ones' backs.
struct Stores {
    memory: MemoryStore,
    standalone: ValkeyStore,
    cluster: ValkeyClusterStore,
    standalone_conn: redis::aio::MultiplexedConnection,
    cluster_conn: redis::cluster_async::ClusterConnection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    Standalone,
    Cluster,
}

const BACKENDS: [Backend; 3] = [Backend::Memory, Backend::Standalone, Backend::Cluster];

/// Runs `$body` with `$store` bound to the store of `$backend`.
macro_rules! on {
    ($stores:expr, $backend:expr, |$store:ident| $body:expr) => {
        match $backend {
            Backend::Memory => {
                let $store = &$stores.memory;
                $body
            }
            Backend::Standalone => {
                let $store = &$stores.standalone;
                $body
            }
            Backend::Cluster => {
                let $store = &$stores.cluster;
                $body
            }
        }
    };
}

/// What a store answered a call naming a session by a refresh token, in words.
fn outcome<T>(answer: &Result<ByRefresh<T>, StoreError>) -> &'static str {
    match answer {
        Ok(ByRefresh::Found(_)) => "found",
        Ok(ByRefresh::NotFound) => "not found",
        Ok(ByRefresh::Reused { .. }) => "reused",
        Ok(ByRefresh::PastLifetime) => "past lifetime",
        Err(StoreError::CorruptSession { .. }) => "corrupt",
        Err(_) => "store error",
    }
}

/// What a session holds besides itself: its access keys, its DID index entry, its family key.
struct Seed<'a> {
    access_hashes: Vec<String>,
    did: Option<&'a str>,
    family: Option<&'a str>,
}

impl Stores {
    async fn start(valkey: &Valkey, cluster: &ValkeyCluster) -> Self {
        let options = |urls: Vec<String>| ValkeyOptions {
            urls,
            password: None,
            ca_pem: None,
            key_prefix: PREFIX.to_owned(),
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
        };
        let seeds: Vec<String> = cluster.urls().split(',').map(str::to_owned).collect();
        let metrics = Arc::new(Metrics::new());
        Self {
            memory: MemoryStore::new(),
            standalone: ValkeyStore::new(&options(vec![valkey.url()]), metrics.clone())
                .expect("standalone store"),
            cluster: ValkeyClusterStore::new(&options(seeds.clone()), metrics)
                .expect("cluster store"),
            standalone_conn: valkey.client().await,
            cluster_conn: redis::cluster::ClusterClient::new(seeds)
                .expect("cluster client")
                .get_async_connection()
                .await
                .expect("cluster connection"),
        }
    }

    /// Stores `raw` under `sid` as a session of `backend` with what `seed` names (the
    /// Valkey stores: the bytes as they are; the memory store: the record Rust reads from
    /// them, created with its access key, index entry and family key). False when the
    /// memory store cannot hold it (unreadable bytes).
    async fn seed(&mut self, backend: Backend, sid: &str, raw: &[u8], seed: &Seed<'_>) -> bool {
        let ttl = 600_000;
        let mut commands = vec![redis::cmd("SET")];
        commands[0]
            .arg(format!("{PREFIX}data:{sid}"))
            .arg(raw)
            .arg("PX")
            .arg(ttl);
        for hash in &seed.access_hashes {
            let mut set = redis::cmd("SET");
            set.arg(format!("{PREFIX}access:{hash}"))
                .arg(sid)
                .arg("PX")
                .arg(ttl);
            commands.push(set);
        }
        if let Some(did) = seed.did {
            let mut sadd = redis::cmd("SADD");
            sadd.arg(format!("{PREFIX}did:{did}")).arg(sid);
            let mut pexpire = redis::cmd("PEXPIRE");
            pexpire.arg(format!("{PREFIX}did:{did}")).arg(ttl);
            commands.extend([sadd, pexpire]);
        }
        if let Some(family) = seed.family {
            let mut set = redis::cmd("SET");
            set.arg(format!("{PREFIX}refresh:{family}"))
                .arg(sid)
                .arg("PX")
                .arg(ttl);
            commands.push(set);
        }
        match backend {
            Backend::Memory => {
                let Ok(record) = parse_record(sid, raw) else {
                    return false;
                };
                self.memory
                    .create(&record, LIFETIMES)
                    .await
                    .expect("memory create");
            }
            Backend::Standalone => run(&mut self.standalone_conn, &commands).await,
            Backend::Cluster => run(&mut self.cluster_conn, &commands).await,
        }
        true
    }

    /// The data key's remaining life (Valkey stores).
    async fn pttl(&mut self, backend: Backend, sid: &str) -> Option<i64> {
        let mut pttl = redis::cmd("PTTL");
        pttl.arg(format!("{PREFIX}data:{sid}"));
        match backend {
            Backend::Memory => None,
            Backend::Standalone => pttl.query_async(&mut self.standalone_conn).await.ok(),
            Backend::Cluster => pttl.query_async(&mut self.cluster_conn).await.ok(),
        }
    }

    /// The bytes stored under `sid` (Valkey stores).
    async fn raw(&mut self, backend: Backend, sid: &str) -> Option<Vec<u8>> {
        let mut get = redis::cmd("GET");
        get.arg(format!("{PREFIX}data:{sid}"));
        match backend {
            Backend::Memory => None,
            Backend::Standalone => get.query_async(&mut self.standalone_conn).await.ok()?,
            Backend::Cluster => get.query_async(&mut self.cluster_conn).await.ok()?,
        }
    }
}

async fn run(conn: &mut impl ConnectionLike, commands: &[redis::Cmd]) {
    for command in commands {
        let _: redis::Value = command.query_async(conn).await.expect("seed");
    }
}

/// A refresh-token-like session id, unique to one row (64 hex characters, not rotated).
fn sid_for(row: &str) -> String {
    sha256_hex(&format!("parity sid {row} {}", unique_did()))
}

/// The hash of the access token labelled `label` in `row`.
fn hash(row: &str, label: &str) -> String {
    sha256_hex(&format!("parity token {row} {label}"))
}

/// The label of `hash` among `labels` (or the hash itself, shortened).
fn label_of(row: &str, labels: &[&str], hash_text: &str) -> String {
    labels
        .iter()
        .find(|label| hash(row, label) == hash_text)
        .map_or_else(
            || format!("?{}", &hash_text[..8.min(hash_text.len())]),
            |l| (*l).to_owned(),
        )
}

/// A record as the service or the TypeScript code would store it.
fn record(
    sid: &str,
    did: &str,
    access_hash: &str,
    expires_at: i64,
    created_at: i64,
) -> SessionRecord {
    SessionRecord {
        sid: sid.to_owned(),
        did: did.to_owned(),
        handle: "alice.test".to_owned(),
        access_token_hash: access_hash.to_owned(),
        access_token_expires_at: expires_at,
        created_at,
        ..Default::default()
    }
}

/// A record with its times zeroed where a store stamps its own clock, so that records
/// written by different stores at different moments compare.
fn untimed(mut record: SessionRecord) -> SessionRecord {
    record.access_token_expires_at = 0;
    record.refreshed_at = record.refreshed_at.map(|_| 0);
    record.rotated_at = record.rotated_at.map(|_| 0);
    record
}

/// The outcome of a refresh as the rules decide it, in Rust: the steps of
/// `MemoryStore::refresh`, each a `SessionRecord` or `Lifetimes` rule.
fn rust_refresh(
    record: &SessionRecord,
    presented: &Presented,
    refresh: &Refresh<'_>,
    lifetimes: Lifetimes,
    now: i64,
) -> RefreshOutcome {
    let grace = lifetimes.tokens.grace_ms();
    let role = record.role_of(presented, now, grace);
    if matches!(role, Role::Foreign | Role::Reuse) {
        return RefreshOutcome::Not(if role == Role::Foreign {
            "foreign"
        } else {
            "reuse"
        });
    }
    let lifetimes = match lifetimes.deadline_ms(record.created_at) {
        Some(deadline) if deadline <= now => return RefreshOutcome::Not("expired"),
        Some(deadline) => lifetimes.capped(Duration::from_millis(
            u64::try_from(deadline - now).expect("left"),
        )),
        None => lifetimes,
    };
    let access_ms = i64::try_from(lifetimes.access_token.as_millis()).expect("ms");
    let mut record = record.clone();
    let removed = record.add_access_token(
        refresh.new_access_hash,
        now + access_ms,
        refresh.previous_access_hash,
        lifetimes.tokens.max_access_tokens,
        now,
    );
    record.refreshed_at = Some(now);
    if let Some(client) = refresh.client {
        record.user_agent.clone_from(&client.user_agent);
        record.ip_address.clone_from(&client.ip_address);
    }
    if let (Role::Current, Some(candidate)) = (role, refresh.rotation) {
        record.rotate(&presented.token_hash, candidate, now, grace);
    }
    RefreshOutcome::Ok {
        json: record.to_json(),
        session_ms: i64::try_from(lifetimes.session.as_millis()).expect("ms"),
        access_ms,
        removed: removed.join(" "),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RefreshOutcome {
    /// 'foreign', 'reuse' or 'expired': nothing changes.
    Not(&'static str),
    /// The record to write, its TTLs, the access token hashes dropped.
    Ok {
        json: String,
        session_ms: i64,
        access_ms: i64,
        removed: String,
    },
}

/// The same in Lua: the prelude's `refresh_record`, arguments pushed by `RefreshArgs`.
async fn lua_refresh(
    lua: &Lua,
    record: &SessionRecord,
    presented: &Presented,
    refresh: &Refresh<'_>,
    lifetimes: Lifetimes,
    now: i64,
) -> RefreshOutcome {
    let keys = KeyLayout::new(PREFIX);
    let args = RefreshArgs {
        presented: PresentedArgs::new(&keys, presented, lifetimes.tokens.grace_ms()),
        new_hash: refresh.new_access_hash,
        lifetimes,
        client: refresh.client,
        previous_hash: refresh.previous_access_hash,
        candidate: refresh.rotation,
    };
    let answer: Vec<String> = lua
        .call(
            "refresh",
            record.to_json().as_bytes(),
            &record.sid,
            now,
            &|invocation| args.push(invocation),
        )
        .await;
    match answer.as_slice() {
        [outcome] => RefreshOutcome::Not(match outcome.as_str() {
            "foreign" => "foreign",
            "reuse" => "reuse",
            "expired" => "expired",
            other => panic!("refresh_record answered {other}"),
        }),
        [_, json, session, access, removed] => RefreshOutcome::Ok {
            json: json.clone(),
            session_ms: session.parse().expect("ms"),
            access_ms: access.parse().expect("ms"),
            removed: removed.clone(),
        },
        other => panic!("refresh_record answered {other:?}"),
    }
}

/// A script's arguments by name, as `ScriptArgs::named` gives them.
type Named<'a> = Vec<(&'static str, Arg<'a>)>;

/// Each argument struct's fields are read by the prelude's reader under the name Rust
/// gives them, at the position Rust pushes them: nothing shifted, nothing missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_arguments_are_read_by_the_names_rust_pushes() {
    let valkey = Valkey::start();
    let lua = Lua::on(&valkey).await;
    let keys = KeyLayout::new("p:");
    let presented = Presented {
        lookup: Lookup::Family("family-digest".to_owned()),
        token_hash: "token-digest".to_owned(),
    };
    let by_sid = Presented::parse(&"ab".repeat(32)).expect("a sid");
    let client = ClientFacts::new("agent/1.0", "203.0.113.7").expect("facts");
    let candidate = Candidate {
        nonce: "the-nonce".to_owned(),
        successor_hash: "successor-digest".to_owned(),
        family_hash: "successor-family".to_owned(),
    };
    let lifetimes = Lifetimes {
        session: Duration::from_millis(600_001),
        access_token: Duration::from_millis(60_002),
        max: Some(Duration::from_millis(86_400_003)),
        max_per_did: NonZeroU32::new(7),
        tokens: TokenRules {
            max_access_tokens: 5,
            rotation: true,
            reuse_grace: Duration::from_millis(10_004),
        },
    };
    let mut created = record(&"cd".repeat(32), "did:plc:args", "access-digest", 0, 0);
    created.user_agent = "creator/2.0".to_owned();
    created.ip_address = "198.51.100.9".to_owned();
    created.refresh_family = Some("created-family".to_owned());
    created.refresh_token_hash = Some("created-token".to_owned());
    let cases: Vec<(&str, &str, Named<'_>)> = vec![
        (
            "PresentedArgs (family token)",
            "presented",
            PresentedArgs::new(&keys, &presented, 10_005).named(),
        ),
        (
            "PresentedArgs (session id)",
            "presented",
            PresentedArgs::new(&keys, &by_sid, 10_006).named(),
        ),
        (
            "RefreshArgs",
            "refresh",
            RefreshArgs {
                presented: PresentedArgs::new(&keys, &presented, 10_007).found("found-sid"),
                new_hash: "new-digest",
                lifetimes,
                client: Some(&client),
                previous_hash: Some("previous-digest"),
                candidate: Some(&candidate),
            }
            .named(),
        ),
        (
            "RefreshArgs (no client, no rotation)",
            "refresh",
            RefreshArgs {
                presented: PresentedArgs::new(&keys, &by_sid, 10_008),
                new_hash: "new-digest",
                lifetimes: LIFETIMES,
                client: None,
                previous_hash: None,
                candidate: None,
            }
            .named(),
        ),
        (
            "DeleteArgs",
            "delete",
            DeleteArgs {
                presented: PresentedArgs::session(&keys, "a-sid"),
                did: "did:plc:owner",
            }
            .named(),
        ),
        (
            "HandleArgs",
            "handle",
            HandleArgs {
                prefix: keys.prefix(),
                did: "did:plc:owner",
                handle: "owner.example.com",
                sid: "a-sid",
            }
            .named(),
        ),
        (
            "CreateArgs",
            "create",
            CreateArgs {
                prefix: keys.prefix(),
                record: &created,
                lifetimes,
            }
            .named(),
        ),
    ];
    let mut report = Report::default();
    for (row, reader, named) in cases {
        let json: String = lua
            .call("args", reader.as_bytes(), "", 0, &|invocation| {
                for (_, arg) in &named {
                    invocation.arg(*arg);
                }
            })
            .await;
        let read: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&json).expect("an object");
        report.check(row, "how many names", read.len(), named.len());
        for (name, arg) in &named {
            let got = match read.get(*name) {
                Some(serde_json::Value::String(text)) => text.clone(),
                Some(serde_json::Value::Number(number)) => number.to_string(),
                Some(serde_json::Value::Bool(flag)) => (if *flag { "1" } else { "0" }).to_owned(),
                other => format!("{other:?}"),
            };
            report.check(row, name, got, arg.to_string());
        }
    }
    report.assert_empty("script arguments");
}

/// Reading a stored record ([`READ_ROWS`]): Rust's `parse_record` and Lua's
/// `record_readable` agree on every row, and where it is readable Lua writes it back byte
/// for byte as Rust does; every store validates, refreshes and logs it out alike (an
/// unreadable one: validation and refresh say corrupt and write nothing, a logout removes
/// it), and a readable one comes out of each store's refresh as the same record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_record_agrees_everywhere() {
    let valkey = Valkey::start();
    let cluster = ValkeyCluster::start().await;
    let lua = Lua::on(&valkey).await;
    let mut stores = Stores::start(&valkey, &cluster).await;
    let mut report = Report::default();
    let mut refreshed: Vec<(&str, Backend, SessionRecord)> = Vec::new();
    for &(name, template, edits, readable) in READ_ROWS {
        let sid = sid_for(name);
        let access = hash(name, "access");
        let now = barazo_session::domain::now_ms();
        let mut bytes = template.to_vec();
        for (from, to) in edits {
            bytes = replace(&bytes, from.as_bytes(), to);
        }
        for (from, to) in [
            ("SID", sid.clone()),
            ("HASH", access.clone()),
            ("OTHER", hash(name, "other")),
            ("PREV", sha256_hex(&sid)),
            ("EXP", (now + LIVE).to_string()),
            ("CREATED", (now - 1_000).to_string()),
        ] {
            bytes = replace(&bytes, from.as_bytes(), to.as_bytes());
        }
        // (a) and (b).
        let rust = parse_record(&sid, &bytes).map(|record| record.to_json());
        let lua_read = lua.readable(&bytes, &sid).await;
        report.check(name, "Rust reads it", rust.is_ok(), readable);
        report.check(name, "Lua reads it", lua_read.is_ok(), readable);
        if let (Ok(rust), Ok(lua_json)) = (&rust, &lua_read) {
            report.check(name, "Lua writes it back as Rust does", lua_json, rust);
        }
        // (c): validation, a refresh by sid, a logout.
        let presented = Presented::parse(&sid).expect("a sid");
        let new_hash = hash(name, "new");
        let refresh = Refresh {
            new_access_hash: &new_hash,
            previous_access_hash: None,
            client: None,
            rotation: None,
        };
        let want = if readable { "found" } else { "corrupt" };
        for backend in BACKENDS {
            let row = format!("{name} [{backend:?}]");
            let seed = Seed {
                access_hashes: vec![access.clone()],
                did: None,
                family: None,
            };
            if !stores.seed(backend, &sid, &bytes, &seed).await {
                continue;
            }
            let found = on!(stores, backend, |store| store
                .find_by_access_hash(&access)
                .await);
            let found = match found {
                Ok(Some(_)) => "found",
                Ok(None) => "none",
                Err(StoreError::CorruptSession { .. }) => "corrupt",
                Err(_) => "store error",
            };
            report.check(&row, "validation", found, want);
            let answer = on!(stores, backend, |store| store
                .refresh(&presented, &refresh, LIFETIMES)
                .await);
            report.check(&row, "refresh", outcome(&answer), want);
            if let Ok(ByRefresh::Found(done)) = answer {
                refreshed.push((name, backend, untimed(done.record)));
            }
            if !readable {
                let kept = stores.raw(backend, &sid).await;
                report.check(
                    &row,
                    "an unreadable record is kept as it was",
                    kept,
                    Some(bytes.clone()),
                );
            }
            let grace = LIFETIMES.tokens.reuse_grace;
            let deleted = on!(stores, backend, |store| store
                .delete(&presented, grace)
                .await);
            report.check(&row, "logout", outcome(&deleted), "found");
        }
    }
    for (name, backend, record) in &refreshed {
        if let Some((_, _, memory)) = refreshed
            .iter()
            .find(|(n, b, _)| n == name && *b == Backend::Memory)
        {
            report.check(
                &format!("{name} [{backend:?}]"),
                "refreshed as the memory store refreshes it (times aside)",
                record.to_json(),
                memory.to_json(),
            );
        }
    }
    report.assert_empty("reading a record");
}

/// `bytes` with every `from` replaced by `to`.
fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// The rules of a session's credentials and lifetime, each table through Rust, Lua and the
/// three stores: the per-tab access tokens ([`TOKEN_ROWS`]), what a refresh token is to its
/// session ([`ROLE_ROWS`]), rotation ([`ROTATE_ROWS`]), the absolute lifetime
/// ([`LIFETIME_ROWS`]) and the cap on sessions per DID ([`CAP_ROWS`]). Each row but the
/// cap's also runs a whole refresh through the Rust rules in `MemoryStore::refresh`'s order
/// and through the prelude's `refresh_record`, which must decide alike and write the same
/// bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_rules_agree_everywhere() {
    let valkey = Valkey::start();
    let cluster = ValkeyCluster::start().await;
    let lua = Lua::on(&valkey).await;
    let mut stores = Stores::start(&valkey, &cluster).await;
    let mut report = Report::default();
    access_tokens(&lua, &mut stores, &mut report).await;
    roles(&lua, &mut stores, &mut report).await;
    rotations(&lua, &mut stores, &mut report).await;
    lifetimes(&lua, &mut stores, &mut report).await;
    caps(&lua, &mut stores, &mut report).await;
    renames(&lua, &mut report).await;
    report.assert_empty("the session rules");
}

/// The hash of a token label of a row ("" stays empty: an entry without a hash).
fn token_hash(row: &str, label: &str) -> String {
    if label.is_empty() {
        String::new()
    } else {
        hash(row, label)
    }
}

/// The labels of `hashes` among a row's.
fn labels_of(row: &str, labels: &[&str], hashes: impl IntoIterator<Item = String>) -> Vec<String> {
    hashes
        .into_iter()
        .map(|h| label_of(row, labels, &h))
        .collect()
}

fn owned(labels: &[&str]) -> Vec<String> {
    labels.iter().map(|l| (*l).to_owned()).collect()
}

async fn access_tokens(lua: &Lua, stores: &mut Stores, report: &mut Report) {
    for &(name, others, newest, previous, max, kept, removed, clock) in TOKEN_ROWS {
        let sid = sid_for(name);
        let at = |now: i64| {
            let mut record = record(
                &sid,
                "did:plc:parity",
                &token_hash(name, newest.0),
                now + newest.1,
                now - 60_000,
            );
            record.access_tokens = others
                .iter()
                .map(|(label, at)| AccessTokenEntry {
                    hash: token_hash(name, label),
                    expires_at: now + at,
                })
                .collect();
            record
        };
        let mut labels: Vec<&str> = others.iter().map(|(l, _)| *l).collect();
        labels.extend([newest.0, "new", "stranger"]);
        let new_hash = hash(name, "new");
        let previous = previous.map(|label| hash(name, label));
        // (a)
        let before = at(T0);
        let mut rust = before.clone();
        let dropped = rust.add_access_token(&new_hash, T0 + 60_000, previous.as_deref(), max, T0);
        let rust_kept = rust.access_tokens.iter().map(|e| e.hash.clone());
        report.check(
            name,
            "Rust keeps",
            labels_of(name, &labels, rust_kept),
            owned(kept),
        );
        report.check(
            name,
            "Rust drops",
            labels_of(name, &labels, dropped.clone()),
            owned(removed),
        );
        // (b)
        let previous_arg = previous.clone().unwrap_or_default();
        let (json, lua_dropped): (String, String) = lua
            .call(
                "add_access_token",
                before.to_json().as_bytes(),
                &sid,
                T0,
                &|invocation| {
                    invocation
                        .arg(&new_hash)
                        .arg(T0 + 60_000)
                        .arg(&previous_arg)
                        .arg(max);
                },
            )
            .await;
        report.check(name, "Lua writes what Rust writes", json, rust.to_json());
        report.check(
            name,
            "Lua drops what Rust drops",
            lua_dropped,
            dropped.join(" "),
        );
        let presented = Presented::parse(&sid).expect("a sid");
        let refresh = Refresh {
            new_access_hash: &new_hash,
            previous_access_hash: previous.as_deref(),
            client: None,
            rotation: None,
        };
        let lifetimes = Lifetimes {
            tokens: TokenRules {
                max_access_tokens: max,
                ..LIFETIMES.tokens
            },
            ..LIFETIMES
        };
        report.check(
            name,
            "refresh_record decides as Rust's steps",
            lua_refresh(lua, &before, &presented, &refresh, lifetimes, T0).await,
            rust_refresh(&before, &presented, &refresh, lifetimes, T0),
        );
        if clock == Clock::Exact {
            continue;
        }
        // (c): a refresh by that tab.
        for backend in BACKENDS {
            let row = format!("{name} [{backend:?}]");
            let stored = at(barazo_session::domain::now_ms());
            let all: Vec<String> = stored.live_tokens().map(|(h, _)| h.to_owned()).collect();
            let seed = Seed {
                access_hashes: all.clone(),
                did: None,
                family: None,
            };
            stores
                .seed(backend, &sid, stored.to_json().as_bytes(), &seed)
                .await;
            let answer = on!(stores, backend, |store| store
                .refresh(&presented, &refresh, lifetimes)
                .await);
            let Ok(ByRefresh::Found(done)) = answer else {
                report.check(&row, "refresh", outcome(&answer), "found");
                continue;
            };
            let store_kept = done.record.access_tokens.iter().map(|e| e.hash.clone());
            report.check(
                &row,
                "the store keeps",
                labels_of(name, &labels, store_kept),
                owned(kept),
            );
            report.check(
                &row,
                "the new token is the newest",
                done.record.access_token_hash,
                new_hash.clone(),
            );
            if backend != Backend::Memory {
                // The memory store holds only the newest token's key (it is created with
                // it); the Valkey ones every token's: a dropped token's key goes with it.
                for hash in &all {
                    let found = on!(stores, backend, |store| store
                        .find_by_access_hash(hash)
                        .await)
                    .expect("the store answers")
                    .is_some();
                    let label = label_of(name, &labels, hash);
                    let want = !removed.contains(&label.as_str());
                    report.check(&row, &format!("{label}'s access key stays"), found, want);
                }
            }
            let grace = LIFETIMES.tokens.reuse_grace;
            on!(stores, backend, |store| store
                .delete(&presented, grace)
                .await)
            .expect("cleaned up");
        }
    }
}

/// A session's refresh tokens (its chain, the session id first when migrated) and its
/// record at `now`.
struct Chain {
    sid: String,
    tokens: Vec<String>,
    record: SessionRecord,
}

fn chain(history: &History, sid: &str, first: &str, now: i64) -> Chain {
    let mut record = record(
        sid,
        "did:plc:parity",
        &hash(sid, "access"),
        now + LIVE,
        now - 60_000,
    );
    let Some(agos) = history.rotations else {
        return Chain {
            sid: sid.to_owned(),
            tokens: vec![sid.to_owned()],
            record,
        };
    };
    let mut tokens = vec![if history.migrated { sid } else { first }.to_owned()];
    let mut rotations = Vec::new();
    for (i, ago) in agos.iter().enumerate() {
        let nonce = format!("nonce-{i}");
        let next = rotation::successor(&tokens[i], &nonce);
        rotations.push(EarlierRotation {
            hash: sha256_hex(&tokens[i]),
            nonce,
            rotated_at: now - ago,
        });
        tokens.push(next);
    }
    let current = tokens.last().expect("a token");
    record.refresh_family = Some(rotation::family_hash(current));
    record.refresh_token_hash = Some(sha256_hex(current));
    if let Some(previous) = rotations.pop() {
        record.previous_refresh_token_hash = Some(previous.hash);
        record.rotation_nonce = Some(previous.nonce);
        record.rotated_at = Some(previous.rotated_at);
    }
    record.earlier_rotations = rotations;
    Chain {
        sid: sid.to_owned(),
        tokens,
        record,
    }
}

/// The family key a presented rotated token finds its session by.
fn family_of(presented: &Presented) -> Option<&str> {
    match &presented.lookup {
        Lookup::Family(family) => Some(family),
        Lookup::Sid(_) => None,
    }
}

async fn roles(lua: &Lua, stores: &mut Stores, report: &mut Report) {
    let keys = KeyLayout::new(PREFIX);
    for (name, history, shown, role, clock) in ROLE_ROWS {
        let sid = sid_for(name);
        let first = rotation::first_token().expect("random");
        let at_t0 = chain(history, &sid, &first, T0);
        let token = match shown {
            Shown::Sid => at_t0.sid.clone(),
            Shown::Token(i) => at_t0.tokens[*i].clone(),
            Shown::OtherFamily => rotation::first_token().expect("random"),
            Shown::NeverIssued => {
                rotation::successor(at_t0.tokens.last().expect("a token"), "never issued")
            }
        };
        let presented = Presented::parse(&token).expect("a token");
        // (a) and (b), at T0.
        report.check(
            name,
            "Rust",
            at_t0.record.role_of(&presented, T0, GRACE),
            *role,
        );
        let args = PresentedArgs::new(&keys, &presented, GRACE);
        let lua_role: String = lua
            .call(
                "role",
                at_t0.record.to_json().as_bytes(),
                &sid,
                T0,
                &|invocation| {
                    args.push(invocation);
                },
            )
            .await;
        report.check(name, "Lua", lua_role, format!("{role:?}").to_lowercase());
        let new_hash = hash(name, "new");
        let refresh = Refresh {
            new_access_hash: &new_hash,
            previous_access_hash: None,
            client: None,
            rotation: None,
        };
        report.check(
            name,
            "refresh_record decides as Rust's steps",
            lua_refresh(lua, &at_t0.record, &presented, &refresh, LIFETIMES, T0).await,
            rust_refresh(&at_t0.record, &presented, &refresh, LIFETIMES, T0),
        );
        if *clock == Clock::Exact {
            continue;
        }
        // (c): a logout with that token.
        let want = match role {
            Role::Current | Role::Grace => "found",
            Role::Reuse => "reused",
            Role::Foreign => "not found",
        };
        for backend in BACKENDS {
            let row = format!("{name} [{backend:?}]");
            let stored = chain(history, &sid, &first, barazo_session::domain::now_ms()).record;
            // The family key the token finds its session by, as a store left it (for a
            // foreign token: before the TypeScript code rewrote the record); the memory
            // store keeps one only for the family its record names.
            let family = family_of(&presented);
            if backend == Backend::Memory
                && family.is_some()
                && stored.refresh_family.as_deref() != family
            {
                continue;
            }
            let seed = Seed {
                access_hashes: vec![stored.access_token_hash.clone()],
                did: Some("did:plc:parity"),
                family,
            };
            stores
                .seed(backend, &sid, stored.to_json().as_bytes(), &seed)
                .await;
            let grace = LIFETIMES.tokens.reuse_grace;
            let answer = on!(stores, backend, |store| store
                .delete(&presented, grace)
                .await);
            report.check(&row, "logout", outcome(&answer), want);
            on!(stores, backend, |store| store
                .revoke_in_did("did:plc:parity", &sid)
                .await)
            .expect("cleaned up");
        }
    }
}

/// A handle change (`rename`): a session of the DID takes the handle, another DID's is left
/// as it is; Lua writes what Rust writes. (The stores run it in `behaviour.rs` and
/// `storage.rs`.)
async fn renames(lua: &Lua, report: &mut Report) {
    for (name, did, renamed) in [
        ("rename: its DID", "did:plc:parity", true),
        ("rename: another DID", "did:plc:someone-else", false),
    ] {
        let sid = sid_for(name);
        let record = SessionRecord {
            sid: sid.clone(),
            did: "did:plc:parity".into(),
            handle: "old.test".into(),
            access_token_hash: hash(name, "access"),
            access_token_expires_at: T0 + 60_000,
            created_at: T0 - 1_000,
            refreshed_at: Some(T0 - 500),
            ..SessionRecord::default()
        };
        let mut rust = record.clone();
        let rust_renamed = rust.rename(did, "new.example.com");
        report.check(name, "Rust renames", rust_renamed, renamed);
        let (json, outcome): (String, String) = lua
            .call(
                "rename",
                record.to_json().as_bytes(),
                &sid,
                T0,
                &|invocation| {
                    invocation.arg(did).arg("new.example.com");
                },
            )
            .await;
        report.check(name, "Lua writes what Rust writes", json, rust.to_json());
        report.check(name, "Lua renames", outcome == "renamed", rust_renamed);
    }
}

async fn rotations(lua: &Lua, stores: &mut Stores, report: &mut Report) {
    for (name, history, kept, new_family, clock) in ROTATE_ROWS {
        let sid = sid_for(name);
        let first = rotation::first_token().expect("random");
        let at_t0 = chain(history, &sid, &first, T0);
        let current = at_t0.tokens.last().expect("a token").clone();
        let presented = Presented::parse(&current).expect("a token");
        let candidate = Candidate::new(&current).expect("random");
        let label = |hash: &str| {
            at_t0
                .tokens
                .iter()
                .position(|t| sha256_hex(t) == hash)
                .map_or_else(|| "?".to_owned(), |i| format!("t{i}"))
        };
        let earlier = |record: &SessionRecord| -> Vec<String> {
            record
                .earlier_rotations
                .iter()
                .map(|r| label(&r.hash))
                .collect()
        };
        // (a)
        let mut rust = at_t0.record.clone();
        let rust_new = rust.rotate(&presented.token_hash, &candidate, T0, GRACE);
        report.check(name, "Rust keeps", earlier(&rust), owned(kept));
        report.check(name, "Rust: a new family", rust_new, *new_family);
        // (b)
        let (json, lua_new): (String, String) = lua
            .call(
                "rotate",
                at_t0.record.to_json().as_bytes(),
                &sid,
                T0,
                &|invocation| {
                    invocation
                        .arg(&presented.token_hash)
                        .arg(&candidate.nonce)
                        .arg(&candidate.successor_hash)
                        .arg(&candidate.family_hash)
                        .arg(GRACE);
                },
            )
            .await;
        report.check(name, "Lua writes what Rust writes", json, rust.to_json());
        report.check(name, "Lua: a new family", lua_new == "new family", rust_new);
        let new_hash = hash(name, "new");
        let refresh = Refresh {
            new_access_hash: &new_hash,
            previous_access_hash: None,
            client: None,
            rotation: Some(&candidate),
        };
        report.check(
            name,
            "refresh_record decides as Rust's steps",
            lua_refresh(lua, &at_t0.record, &presented, &refresh, LIFETIMES, T0).await,
            rust_refresh(&at_t0.record, &presented, &refresh, LIFETIMES, T0),
        );
        if *clock == Clock::Exact {
            continue;
        }
        // (c): a refresh with the current token, rotation on.
        for backend in BACKENDS {
            let row = format!("{name} [{backend:?}]");
            let stored = chain(history, &sid, &first, barazo_session::domain::now_ms()).record;
            let seed = Seed {
                access_hashes: vec![stored.access_token_hash.clone()],
                did: Some("did:plc:parity"),
                family: family_of(&presented),
            };
            stores
                .seed(backend, &sid, stored.to_json().as_bytes(), &seed)
                .await;
            let answer = on!(stores, backend, |store| store
                .refresh(&presented, &refresh, LIFETIMES)
                .await);
            let Ok(ByRefresh::Found(done)) = answer else {
                report.check(&row, "refresh", outcome(&answer), "found");
                continue;
            };
            let record = done.record;
            report.check(&row, "the store keeps", earlier(&record), owned(kept));
            let previous = Some(presented.token_hash.clone());
            report.check(
                &row,
                "the previous token",
                record.previous_refresh_token_hash.clone(),
                previous,
            );
            let successor = Some(candidate.successor_hash.clone());
            report.check(
                &row,
                "the current token",
                record.refresh_token_hash.clone(),
                successor,
            );
            report.check(
                &row,
                "the family",
                record.refresh_family.clone(),
                rust.refresh_family.clone(),
            );
            on!(stores, backend, |store| store
                .revoke_in_did("did:plc:parity", &sid)
                .await)
            .expect("cleaned up");
        }
    }
}

async fn lifetimes(lua: &Lua, stores: &mut Stores, report: &mut Report) {
    for &(name, created_ago, refreshed_ago, max, want, clock) in LIFETIME_ROWS {
        let sid = sid_for(name);
        let presented = Presented::parse(&sid).expect("a sid");
        let lifetimes = Lifetimes {
            max: max.map(|ms| Duration::from_millis(u64::try_from(ms).expect("ms"))),
            ..LIFETIMES
        };
        let new_hash = hash(name, "new");
        let refresh = Refresh {
            new_access_hash: &new_hash,
            previous_access_hash: None,
            client: None,
            rotation: None,
        };
        let at = |now: i64| {
            let mut record = record(
                &sid,
                "did:plc:parity",
                &hash(name, "access"),
                now + LIVE,
                now - created_ago,
            );
            record.refreshed_at = refreshed_ago.map(|ago| now - ago);
            record
        };
        // (a) and (b).
        let rust = rust_refresh(&at(T0), &presented, &refresh, lifetimes, T0);
        let ttls = match &rust {
            RefreshOutcome::Ok {
                session_ms,
                access_ms,
                ..
            } => Some((*session_ms, *access_ms)),
            RefreshOutcome::Not(_) => None,
        };
        report.check(name, "Rust's TTLs", ttls, want);
        report.check(
            name,
            "refresh_record decides as Rust's steps",
            lua_refresh(lua, &at(T0), &presented, &refresh, lifetimes, T0).await,
            rust,
        );
        if clock == Clock::Exact {
            continue;
        }
        // (c): a refresh.
        for backend in BACKENDS {
            let row = format!("{name} [{backend:?}]");
            let now = barazo_session::domain::now_ms();
            let stored = at(now);
            let seed = Seed {
                access_hashes: vec![stored.access_token_hash.clone()],
                did: Some("did:plc:parity"),
                family: None,
            };
            stores
                .seed(backend, &sid, stored.to_json().as_bytes(), &seed)
                .await;
            let answer = on!(stores, backend, |store| store
                .refresh(&presented, &refresh, lifetimes)
                .await);
            let grace = LIFETIMES.tokens.reuse_grace;
            match (&answer, want) {
                (Ok(ByRefresh::Found(done)), Some((session_ms, access_ms))) => {
                    let given = done.record.access_token_expires_at - now;
                    let close = (given - access_ms).abs() <= 2_000;
                    report.check(
                        &row,
                        "the new token lives as the rules say (±2 s)",
                        close,
                        true,
                    );
                    if let Some(left) = stores.pttl(backend, &sid).await {
                        let close = (left - session_ms).abs() <= 2_000;
                        report.check(
                            &row,
                            "the session lives as the rules say (±2 s)",
                            close,
                            true,
                        );
                    }
                }
                (_, Some(_)) => report.check(&row, "refresh", outcome(&answer), "found"),
                (_, None) => {
                    report.check(&row, "refresh", outcome(&answer), "past lifetime");
                    let gone = on!(stores, backend, |store| store
                        .delete(&presented, grace)
                        .await);
                    report.check(&row, "the session is gone", outcome(&gone), "not found");
                }
            }
            on!(stores, backend, |store| store
                .revoke_in_did("did:plc:parity", &sid)
                .await)
            .expect("cleaned up");
        }
    }
}

async fn caps(lua: &Lua, stores: &mut Stores, report: &mut Report) {
    for &(name, members, limit, revoked) in CAP_ROWS {
        // Sids in the order of their labels' first letters, unique to the row.
        let suffix = sha256_hex(&format!("{name} {}", unique_did()))[1..].to_owned();
        let sid_of = |label: &str| format!("{}{suffix}", &label[..1]);
        let did = unique_did();
        let raw = |label: &str, member: Member, now: i64| -> Vec<u8> {
            let sid = sid_of(label);
            match member {
                Member::Readable(refreshed_ago, created_ago) => {
                    let mut record = record(
                        &sid,
                        &did,
                        &hash(name, label),
                        now + LIVE,
                        now - created_ago,
                    );
                    record.refreshed_at = refreshed_ago.map(|ago| now - ago);
                    record.to_json().into_bytes()
                }
                Member::Unreadable => format!("{{\"sid\":\"{sid}\"").into_bytes(),
                Member::OtherDid => {
                    let other = record(
                        &sid,
                        "did:plc:someone-else",
                        &hash(name, label),
                        now + LIVE,
                        now,
                    );
                    other.to_json().into_bytes()
                }
            }
        };
        let ranked = members
            .iter()
            .filter(|(_, m)| !matches!(m, Member::OtherDid));
        let room = usize::try_from(limit - 1).expect("a cap");
        let want: Vec<String> = revoked.iter().map(|l| sid_of(l)).collect();
        // (a): the order both Rust stores sort their pairs in.
        let mut pairs: Vec<(i64, String)> = ranked
            .clone()
            .map(|(label, member)| {
                let at = parse_record(&sid_of(label), &raw(label, *member, T0))
                    .map_or(i64::MIN, |record| record.last_refreshed());
                (at, sid_of(label))
            })
            .collect();
        pairs.sort();
        let order: Vec<String> = pairs.into_iter().map(|(_, sid)| sid).collect();
        let excess = order.len().saturating_sub(room);
        report.check(name, "Rust revokes", order[..excess].to_vec(), want.clone());
        // (b): the prelude's order.
        let mut invocation = lua.script.prepare_invoke();
        invocation.key("cap");
        for (label, member) in ranked {
            invocation.key(sid_of(label)).key(raw(label, *member, T0));
        }
        let lua_order: Vec<String> = invocation
            .invoke_async(&mut lua.conn.clone())
            .await
            .expect("cap");
        report.check(name, "Lua ranks as Rust", lua_order, order.clone());
        // (c): a new session of the DID, with that cap.
        let lifetimes = Lifetimes {
            max_per_did: NonZeroU32::new(limit),
            ..LIFETIMES
        };
        for backend in BACKENDS {
            let row = format!("{name} [{backend:?}]");
            if backend == Backend::Memory
                && members
                    .iter()
                    .any(|(_, m)| !matches!(m, Member::Readable(..)))
            {
                continue;
            }
            let now = barazo_session::domain::now_ms();
            for (label, member) in members {
                let seed = Seed {
                    access_hashes: vec![hash(name, label)],
                    did: Some(&did),
                    family: None,
                };
                stores
                    .seed(backend, &sid_of(label), &raw(label, *member, now), &seed)
                    .await;
            }
            let new = record(&sid_of("z"), &did, &hash(name, "new"), now + LIVE, now);
            let created =
                on!(stores, backend, |store| store.create(&new, lifetimes).await).expect("created");
            report.check(
                &row,
                "how many the cap revoked",
                created.revoked as usize,
                want.len(),
            );
            let mut listed: Vec<String> =
                on!(stores, backend, |store| store.list_for_did(&did).await)
                    .expect("listed")
                    .into_iter()
                    .map(|record| record.sid)
                    .collect();
            listed.sort();
            let mut left: Vec<String> = members
                .iter()
                .filter(|(label, m)| matches!(m, Member::Readable(..)) && !revoked.contains(label))
                .map(|(label, _)| sid_of(label))
                .chain([new.sid.clone()])
                .collect();
            left.sort();
            report.check(&row, "the sessions left", listed, left);
            for (label, member) in members {
                if matches!(member, Member::OtherDid) {
                    let kept = stores.raw(backend, &sid_of(label)).await.is_some();
                    report.check(&row, "another DID's record is left alone", kept, true);
                }
            }
            on!(stores, backend, |store| store
                .delete_all_for_did(&did, Revocation::AllForDid)
                .await)
            .expect("cleaned up");
        }
    }
}
