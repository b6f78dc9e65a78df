-- The shared prelude, prepended to every script that reads or writes a session, standalone
-- and cluster alike (store::valkey::PRELUDE). Each session rule is here once, as one
-- function that every script calls, so that both topologies decide alike; each names its
-- Rust twin, which names it back, and tests/it/parity.rs runs both over one table of cases.
--
-- A record is read into a table with SessionRecord's fields under their stored (camelCase)
-- names: an absent optional one is nil, userAgent and ipAddress default to '', accessTokens
-- and earlierRotations to {}. It is written back in the TypeScript AppView's field order
-- (record_json), stamped on Valkey's own clock, so that every replica of the service writes
-- expiries on one clock, whatever theirs say.

-- Valkey's clock in epoch milliseconds.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Key names, the one place a script spells them. The rules of store::KeyLayout.
local function data_key(prefix, sid)
  return prefix .. 'data:' .. sid
end
local function access_key(prefix, hash)
  return prefix .. 'access:' .. hash
end
local function refresh_key(prefix, family)
  return prefix .. 'refresh:' .. family
end
local function did_key(prefix, did)
  return prefix .. 'did:' .. did
end
-- Why a revoked session ended, under `id` (see remember_end). store::KeyLayout::ended.
local function ended_key(prefix, id)
  return prefix .. 'ended:' .. id
end

-- The scripts' arguments by name, read in the order args.rs pushes them (each reader names
-- its Rust struct; tests/it/parity.rs checks that every name reads the value Rust pushed).

-- ARGV[1..5] of refresh.lua, cluster_refresh_data.lua, delete.lua and revoke_others.lua: a
-- presented refresh token. args::PresentedArgs.
local function presented_args()
  return {
    prefix = ARGV[1],
    -- The session id: the token when it is one, else '' (cluster: the one its family key
    -- names, looked up before the script).
    sid = ARGV[2],
    -- SHA-256 of a rotated token's family; '' for a session id.
    family = ARGV[3],
    token_hash = ARGV[4],
    -- The reuse grace (ms).
    grace = tonumber(ARGV[5]),
  }
end
-- refresh.lua and cluster_refresh_data.lua. args::RefreshArgs.
local function refresh_args()
  local a = presented_args()
  a.new_hash = ARGV[6]
  a.session_ttl = tonumber(ARGV[7])
  a.access_ttl = tonumber(ARGV[8])
  -- Whether user_agent and ip_address replace the stored device facts.
  a.replace_client = ARGV[9] == '1'
  a.user_agent = ARGV[10]
  a.ip_address = ARGV[11]
  -- The absolute lifetime since createdAt (ms; 0: none).
  a.max_lifetime = tonumber(ARGV[12])
  -- The refreshing tab's previous access token hash ('' when none).
  a.previous_hash = ARGV[13]
  a.max_tokens = tonumber(ARGV[14])
  -- With rotation on, the candidate successor: its nonce ('' when off), SHA-256, family.
  a.nonce = ARGV[15]
  a.successor_hash = ARGV[16]
  a.successor_family = ARGV[17]
  return a
end
-- delete.lua. args::DeleteArgs.
local function delete_args()
  local a = presented_args()
  -- A DID, or '': when given, only a readable session of that DID is revoked (by sid, no
  -- token: RevokeSession).
  a.did = ARGV[6]
  return a
end
-- create.lua and cluster_create_data.lua. args::CreateArgs.
local function create_args()
  return {
    prefix = ARGV[1],
    sid = ARGV[2],
    did = ARGV[3],
    handle = ARGV[4],
    access_hash = ARGV[5],
    user_agent = ARGV[6],
    ip_address = ARGV[7],
    -- With rotation on, SHA-256 of the refresh token's family ('' when off) and of the token.
    family = ARGV[8],
    refresh_hash = ARGV[9],
    session_ttl = tonumber(ARGV[10]),
    access_ttl = tonumber(ARGV[11]),
    prune_sample = tonumber(ARGV[12]),
    -- Most sessions per DID (0: no cap).
    max_per_did = tonumber(ARGV[13]),
  }
end

-- update_handle.lua and cluster_update_handle.lua. args::HandleArgs.
local function handle_args()
  -- The one session to rename (cluster: the session KEYS[1] holds), or '' for every
  -- session in the DID's index (standalone).
  return {prefix = ARGV[1], did = ARGV[2], handle = ARGV[3], sid = ARGV[4]}
end

-- Whether `text` is well-formed UTF-8 (overlong forms and UTF-16 surrogates are not), as
-- parse_record (store/valkey/mod.rs) requires with std::str::from_utf8 before it parses.
local function utf8_valid(text)
  if not string.find(text, '[\128-\255]') then
    return true
  end
  local i, n = 1, #text
  while i <= n do
    local c = string.byte(text, i)
    local len
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then len = 3
    elseif c >= 0xF0 and c <= 0xF4 then len = 4
    else return false end
    if i + len - 1 > n then return false end
    for k = i + 1, i + len - 1 do
      local b = string.byte(text, k)
      if b < 0x80 or b > 0xBF then return false end
    end
    local second = string.byte(text, i + 1)
    if (c == 0xE0 and second < 0xA0) or (c == 0xED and second > 0x9F)
        or (c == 0xF0 and second < 0x90) or (c == 0xF4 and second > 0x8F) then
      return false
    end
    i = i + len
  end
  return true
end

-- JSON read as serde_json reads it (SessionRecord::from_json): RFC 8259 exactly, which
-- cjson is not (it takes 1.0 or 1e3 for an integer, 0x10, +1, NaN, raw control characters
-- in strings and repeated keys, and stops reading at a NUL byte). So a record is scanned
-- here, and only the values of its known fields are decoded. Positions are byte indexes;
-- each reader starts on the value's first byte and returns the index after it, nil when
-- there is no such value there.

-- The index of the first byte at or after i that is not JSON whitespace.
local function skip_ws(text, i)
  local _, e = string.find(text, '^[ \t\n\r]*', i)
  return e + 1
end

-- A string: no raw control character, only JSON's escapes (their code points unchecked:
-- serde_json checks a skipped string's syntax only).
local function string_end(text, i)
  if string.byte(text, i) ~= 34 then return nil end
  local j = i + 1
  while true do
    local k = string.find(text, '[%z\1-\31"\\]', j)
    if not k then return nil end
    local c = string.byte(text, k)
    if c == 34 then return k + 1 end
    if c ~= 92 then return nil end
    local e = string.byte(text, k + 1)
    if e == 117 then
      if not string.find(text, '^%x%x%x%x', k + 2) then return nil end
      j = k + 6
    elseif e == 34 or e == 92 or e == 47 or e == 98 or e == 102 or e == 110 or e == 114
        or e == 116 then
      j = k + 2
    else
      return nil
    end
  end
end

-- A number (-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?), and whether it is an integer.
local function number_end(text, i)
  local _, e = string.find(text, '^%-?%d+', i)
  if not e or string.find(text, '^%-?0%d', i) then return nil end
  local integer = true
  local _, f = string.find(text, '^%.%d+', e + 1)
  if f then
    e, integer = f, false
  elseif string.byte(text, e + 1) == 46 then
    return nil
  end
  local _, x = string.find(text, '^[eE][+-]?%d+', e + 1)
  if x then
    e, integer = x, false
  elseif string.find(text, '^[eE]', e + 1) then
    return nil
  end
  return e + 1, integer
end

local LITERALS = {[116] = 'true', [102] = 'false', [110] = 'null'}

-- A key and its colon: the index of the value after it.
local function member_value(text, i)
  local e = string_end(text, skip_ws(text, i))
  if not e then return nil end
  e = skip_ws(text, e)
  if string.byte(text, e) ~= 58 then return nil end
  return skip_ws(text, e + 1)
end

-- Any value, nested to any depth (serde_json skips an unknown field's value without a
-- depth limit): what a record's unknown fields hold.
local function value_end(text, i)
  local open = {} -- the byte closing each container the scan is in, innermost last
  while true do
    i = skip_ws(text, i)
    local c = string.byte(text, i)
    local e
    if c == 123 or c == 91 then
      local close = c + 2 -- '}' or ']'
      local j = skip_ws(text, i + 1)
      if string.byte(text, j) == close then
        e = j + 1
      else
        open[#open + 1] = close
        i = j
        if close == 125 then
          i = member_value(text, i)
          if not i then return nil end
        end
      end
    elseif c == 34 then
      e = string_end(text, i)
      if not e then return nil end
    elseif LITERALS[c] then
      local word = LITERALS[c]
      if string.sub(text, i, i + #word - 1) ~= word then return nil end
      e = i + #word
    else
      e = number_end(text, i)
      if not e then return nil end
    end
    -- A whole value ends at e: close what it completes, then go on after a comma.
    while e do
      local close = open[#open]
      if not close then return e end
      e = skip_ws(text, e)
      local d = string.byte(text, e)
      if d == close then
        open[#open] = nil
        e = e + 1
      elseif d == 44 then
        i = e + 1
        if close == 125 then
          i = member_value(text, i)
          if not i then return nil end
        end
        e = nil
      else
        return nil
      end
    end
  end
end

-- A string's value, its escapes decoded (a lone surrogate, which serde_json refuses in a
-- string it keeps, is refused too).
local function string_value(text, i)
  local e = string_end(text, i)
  if not e then return nil end
  local token = string.sub(text, i, e - 1)
  if not string.find(token, '\\', 1, true) then
    return e, string.sub(token, 2, -2)
  end
  local ok, value = pcall(cjson.decode, token)
  if not ok or type(value) ~= 'string' then return nil end
  return e, value
end

-- 2^53: every integer below it is exact in a double (Lua's numbers, JavaScript's).
local MAX_EPOCH_MS = 9007199254740992

-- Epoch milliseconds: an integer literal from 0 to below 2^53 (serde_json refuses 1.0 or
-- 1e3 for an i64, and parse_record refuses the rest of the i64 range).
local function epoch_ms_value(text, i)
  local e, integer = number_end(text, i)
  if not e or not integer or string.byte(text, i) == 45 or e - i > 16 then return nil end
  local n = tonumber(string.sub(text, i, e - 1))
  if n >= MAX_EPOCH_MS then return nil end
  return e, n
end

-- SessionRecord, AccessTokenEntry and EarlierRotation as serde reads them: each field's
-- name in order, and its kind by name ('!': required; '?': may be null, read as absent).
local RECORD = {'sid', 'did', 'handle', 'accessTokenHash', 'accessTokenExpiresAt', 'createdAt',
  'refreshedAt', 'userAgent', 'ipAddress', 'accessTokens', 'refreshFamily', 'refreshTokenHash',
  'previousRefreshTokenHash', 'rotatedAt', 'rotationNonce', 'earlierRotations',
  sid = 'string!', did = 'string!', handle = 'string!', accessTokenHash = 'string!',
  accessTokenExpiresAt = 'ms!', createdAt = 'ms!', refreshedAt = 'ms?', userAgent = 'string',
  ipAddress = 'string', accessTokens = 'access_tokens', refreshFamily = 'string?',
  refreshTokenHash = 'string?', previousRefreshTokenHash = 'string?', rotatedAt = 'ms?',
  rotationNonce = 'string?', earlierRotations = 'earlier_rotations'}
local ACCESS_TOKEN = {'hash', 'expiresAt', hash = 'string!', expiresAt = 'ms!'}
local EARLIER_ROTATION = {'hash', 'nonce', 'rotatedAt', hash = 'string!', nonce = 'string!',
  rotatedAt = 'ms!'}

local list_value

-- A value of a kind (see RECORD).
local function kind_value(kind, text, i)
  if (kind == 'string?' or kind == 'ms?') and string.sub(text, i, i + 3) == 'null' then
    return i + 4, nil
  end
  if kind == 'ms!' or kind == 'ms?' then
    return epoch_ms_value(text, i)
  elseif kind == 'access_tokens' then
    return list_value(text, i, ACCESS_TOKEN)
  elseif kind == 'earlier_rotations' then
    return list_value(text, i, EARLIER_ROTATION)
  end
  return string_value(text, i)
end

-- The struct at i as serde's derive reads it: from an object by name (unknown keys skipped,
-- a known one twice refused) or from an array by position (serde takes both), every
-- required field present.
local function struct_value(text, i, struct)
  local t, seen = {}, {}
  local c = string.byte(text, i)
  if c ~= 123 and c ~= 91 then return nil end
  i = skip_ws(text, i + 1)
  local n = 0
  if string.byte(text, i) == c + 2 then
    i = i + 1
  else
    while true do
      local name, e, value
      if c == 123 then
        e, name = string_value(text, i)
        if not e then return nil end
        e = skip_ws(text, e)
        if string.byte(text, e) ~= 58 then return nil end
        i = skip_ws(text, e + 1)
        if type(struct[name]) ~= 'string' then
          name = nil
        elseif seen[name] then
          return nil
        end
      else
        n = n + 1
        name = struct[n]
        if not name then return nil end
      end
      if name then
        e, value = kind_value(struct[name], text, i)
        seen[name] = true
        t[name] = value
      else
        e = value_end(text, i)
      end
      if not e then return nil end
      i = skip_ws(text, e)
      local d = string.byte(text, i)
      if d == c + 2 then
        i = i + 1
        break
      end
      if d ~= 44 then return nil end
      i = skip_ws(text, i + 1)
    end
  end
  for _, name in ipairs(struct) do
    local kind = struct[name]
    if (kind == 'string!' or kind == 'ms!') and not seen[name] then return nil end
  end
  return i, t
end

-- A list of structs.
function list_value(text, i, struct)
  if string.byte(text, i) ~= 91 then return nil end
  local list = {}
  i = skip_ws(text, i + 1)
  if string.byte(text, i) == 93 then return i + 1, list end
  while true do
    local e, item = struct_value(text, i, struct)
    if not e then return nil end
    list[#list + 1] = item
    i = skip_ws(text, e)
    local d = string.byte(text, i)
    if d == 93 then return i + 1, list end
    if d ~= 44 then return nil end
    i = skip_ws(text, i + 1)
  end
end

-- The record stored under `sid` (raw bytes), or nil and why it cannot be read: not UTF-8,
-- not JSON, a field missing, mistyped or given twice, a time outside epoch milliseconds, or
-- another sid in it. Every script reads a record through it before acting on it, so that
-- nothing is done with data that validation would refuse. The rules of parse_record
-- (store/valkey/mod.rs), which parses with SessionRecord::from_json.
local function record_readable(raw, sid)
  if not utf8_valid(raw) then
    return nil, 'not UTF-8'
  end
  local e, s = struct_value(raw, skip_ws(raw, 1), RECORD)
  if not e or skip_ws(raw, e) <= #raw then
    return nil, 'not JSON of a session, or a field missing, mistyped or repeated'
  end
  if s.sid ~= sid then
    return nil, 'its sid field does not match its key'
  end
  s.userAgent = s.userAgent or ''
  s.ipAddress = s.ipAddress or ''
  s.accessTokens = s.accessTokens or {}
  s.earlierRotations = s.earlierRotations or {}
  return s
end

-- A JSON string as serde_json and JSON.stringify write it: '"' and '\' escaped, control
-- characters as \b \f \n \r \t or \u00xx, everything else (DEL, '/', non-ASCII) as it is.
local SHORT_ESCAPES = {['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t'}
local function escape(c)
  return SHORT_ESCAPES[c] or string.format('\\u%04x', string.byte(c))
end
local function str(value)
  return '"' .. string.gsub(value, '[%z\1-\31"\\]', escape) .. '"'
end
local function int(value)
  return string.format('%.0f', value)
end

-- A record as stored, in the TypeScript AppView's field order, optional fields left out
-- when absent or empty: the bytes SessionRecord::to_json writes. The facts after the six
-- TypeScript fields are this service's own: the TypeScript code drops them when it
-- rewrites a session.
local function record_json(s)
  local out = {'{"sid":', str(s.sid), ',"did":', str(s.did), ',"handle":', str(s.handle),
    ',"accessTokenHash":', str(s.accessTokenHash), ',"accessTokenExpiresAt":',
    int(s.accessTokenExpiresAt), ',"createdAt":', int(s.createdAt)}
  local function add(...)
    for _, part in ipairs({...}) do
      out[#out + 1] = part
    end
  end
  if s.refreshedAt ~= nil then add(',"refreshedAt":', int(s.refreshedAt)) end
  if s.userAgent ~= '' then add(',"userAgent":', str(s.userAgent)) end
  if s.ipAddress ~= '' then add(',"ipAddress":', str(s.ipAddress)) end
  if #s.accessTokens > 0 then
    local parts = {}
    for i, t in ipairs(s.accessTokens) do
      parts[i] = '{"hash":' .. str(t.hash) .. ',"expiresAt":' .. int(t.expiresAt) .. '}'
    end
    add(',"accessTokens":[', table.concat(parts, ','), ']')
  end
  if s.refreshFamily ~= nil then add(',"refreshFamily":', str(s.refreshFamily)) end
  if s.refreshTokenHash ~= nil then add(',"refreshTokenHash":', str(s.refreshTokenHash)) end
  if s.previousRefreshTokenHash ~= nil then
    add(',"previousRefreshTokenHash":', str(s.previousRefreshTokenHash))
  end
  if s.rotatedAt ~= nil then add(',"rotatedAt":', int(s.rotatedAt)) end
  if s.rotationNonce ~= nil then add(',"rotationNonce":', str(s.rotationNonce)) end
  if #s.earlierRotations > 0 then
    local parts = {}
    for i, r in ipairs(s.earlierRotations) do
      parts[i] = '{"hash":' .. str(r.hash) .. ',"nonce":' .. str(r.nonce) .. ',"rotatedAt":'
        .. int(r.rotatedAt) .. '}'
    end
    add(',"earlierRotations":[', table.concat(parts, ','), ']')
  end
  out[#out + 1] = '}'
  return table.concat(out)
end

-- A new session's record, stamped at `now` on Valkey's clock (create.lua and
-- cluster_create_data.lua). The record CreateSession builds (api/sessions.rs) before the store
-- stamps it.
local function new_record(a, now)
  local s = {sid = a.sid, did = a.did, handle = a.handle, accessTokenHash = a.access_hash,
    accessTokenExpiresAt = now + a.access_ttl, createdAt = now, refreshedAt = now,
    userAgent = a.user_agent, ipAddress = a.ip_address, accessTokens = {},
    earlierRotations = {}}
  if a.family ~= '' then
    s.refreshFamily, s.refreshTokenHash = a.family, a.refresh_hash
  end
  return s
end

-- When the session was last refreshed, or created if never: what the cap ranks sessions by.
-- The rule of SessionRecord::last_refreshed.
local function last_refreshed(s)
  return s.refreshedAt or s.createdAt
end

-- The order in which the cap revokes a DID's sessions, given as {last_refreshed(s), sid}
-- ({-1, sid} for an unreadable record, which can never be used again: times are never
-- negative): oldest first, the sid breaking a tie. The order of the (i64, String) pairs
-- the cap of MemoryStore and ValkeyClusterStore sorts (i64::MIN for an unreadable one).
local function cap_order(x, y)
  if x[1] ~= y[1] then
    return x[1] < y[1]
  end
  return x[2] < y[2]
end

-- Every access token the record names, oldest first, the newest last (expired ones
-- included), as {hash, expiresAt}: what a revocation deletes. SessionRecord::live_tokens.
local function live_tokens(s)
  local all = {}
  for _, t in ipairs(s.accessTokens) do
    all[#all + 1] = t
  end
  all[#all + 1] = {hash = s.accessTokenHash, expiresAt = s.accessTokenExpiresAt}
  return all
end

-- Makes `new_hash` (expiring at `expires_at`) the newest access token: the previous newest
-- joins the others; `previous` (the refreshing tab's own token, '' for none) is dropped, as
-- are expired ones and, past `max_tokens`, the oldest. Returns the hashes dropped (their
-- access keys are to be deleted). The rules of SessionRecord::add_access_token.
local function add_access_token(s, new_hash, expires_at, previous, max_tokens, now)
  local keep, removed = {}, {}
  for _, t in ipairs(live_tokens(s)) do
    if t.hash ~= '' then
      if t.expiresAt <= now or t.hash == previous then
        removed[#removed + 1] = t.hash
      else
        keep[#keep + 1] = t
      end
    end
  end
  local room = math.max(max_tokens, 1) - 1
  while #keep > room do
    removed[#removed + 1] = table.remove(keep, 1).hash
  end
  s.accessTokens, s.accessTokenHash, s.accessTokenExpiresAt = keep, new_hash, expires_at
  return removed
end

-- How many rotations before the previous one a session remembers:
-- session::MAX_EARLIER_ROTATIONS.
local MAX_EARLIER_ROTATIONS = 4

-- The rotations the session remembers, oldest first, the previous one last, as {hash,
-- nonce, rotatedAt}. SessionRecord::rotations.
local function rotations(s)
  local all = {}
  for _, r in ipairs(s.earlierRotations) do
    all[#all + 1] = r
  end
  if s.previousRefreshTokenHash ~= nil and s.rotationNonce ~= nil and s.rotatedAt ~= nil then
    all[#all + 1] = {hash = s.previousRefreshTokenHash, nonce = s.rotationNonce,
      rotatedAt = s.rotatedAt}
  end
  return all
end

-- What a presented refresh token (see presented_args: `sid` when it is a session id, else
-- `family`; its SHA-256 `token_hash`) is to the session `s`, at `now` with a grace of
-- `grace` ms: 'current', 'grace' (one the session rotated away from less than the grace
-- ago), 'reuse' (any other of its tokens) or 'foreign' (not this session's: a family token
-- whose record was rewritten by a writer that does not know rotation). The rules of
-- SessionRecord::role_of.
local function refresh_role(s, sid, family, token_hash, now, grace)
  if s.refreshTokenHash == nil then
    if family == '' and sid == s.sid then
      return 'current'
    end
    return 'foreign'
  end
  if family ~= '' and s.refreshFamily ~= family then
    return 'foreign'
  end
  if s.refreshTokenHash == token_hash then
    return 'current'
  end
  local in_grace = false
  for _, r in ipairs(rotations(s)) do
    in_grace = in_grace or (r.hash == token_hash and now - r.rotatedAt < grace)
  end
  if in_grace then
    return 'grace'
  end
  return 'reuse'
end

-- Moves the session from its current refresh token (`presented_hash`) to `successor`
-- ({nonce, hash, family}) at `now`: the previous rotation joins the earlier ones, which
-- keep those inside `grace` (at most MAX_EARLIER_ROTATIONS, dropped from the oldest end so
-- the rest still chains up to the current token); a session without a family takes the
-- successor's. Returns whether it had none. The rules of SessionRecord::rotate.
local function rotate(s, presented_hash, successor, now, grace)
  local new_family = s.refreshFamily == nil
  if new_family then
    s.refreshFamily = successor.family
  end
  local earlier = rotations(s)
  local stale = 0
  while stale < #earlier and now - earlier[stale + 1].rotatedAt >= grace do
    stale = stale + 1
  end
  stale = math.max(stale, #earlier - MAX_EARLIER_ROTATIONS)
  local kept = {}
  for i = stale + 1, #earlier do
    kept[#kept + 1] = earlier[i]
  end
  s.earlierRotations = kept
  s.previousRefreshTokenHash, s.refreshTokenHash = presented_hash, successor.hash
  s.rotatedAt, s.rotationNonce = now, successor.nonce
  return new_family
end

-- How long the session has before its absolute deadline (`max_lifetime` ms after
-- createdAt) at `now`; 0 or less: past it; nil without one (`max_lifetime` 0). The rules of
-- Lifetimes::deadline_ms.
local function lifetime_left(s, max_lifetime, now)
  if max_lifetime <= 0 then
    return nil
  end
  return s.createdAt + max_lifetime - now
end

-- A refresh of the readable record `s` with refresh_args `a` at `now`, decided on `s` alone
-- (refresh.lua and cluster_refresh_data.lua; the steps of MemoryStore::refresh): the
-- token's role ('foreign', 'reuse': nothing changes), the absolute deadline ('expired':
-- nothing changes; else the TTLs end by it), a new access token (see add_access_token),
-- refreshedAt, the device facts when given, and with rotation on a current token moves on
-- (see rotate; one rotated away from within the grace gets the successor the session
-- already has). Returns 'ok', the session and access token TTLs and the access token
-- hashes dropped; `s` is then the record to write.
local function refresh_record(s, a, now)
  local role = refresh_role(s, a.sid, a.family, a.token_hash, now, a.grace)
  if role == 'foreign' or role == 'reuse' then
    return role
  end
  local session_ttl, access_ttl = a.session_ttl, a.access_ttl
  local left = lifetime_left(s, a.max_lifetime, now)
  if left ~= nil then
    if left <= 0 then
      return 'expired'
    end
    session_ttl, access_ttl = math.min(session_ttl, left), math.min(access_ttl, left)
  end
  local removed = add_access_token(s, a.new_hash, now + access_ttl, a.previous_hash,
    a.max_tokens, now)
  s.refreshedAt = now
  if a.replace_client then
    s.userAgent, s.ipAddress = a.user_agent, a.ip_address
  end
  if role == 'current' and a.nonce ~= '' then
    rotate(s, a.token_hash, {nonce = a.nonce, hash = a.successor_hash,
      family = a.successor_family}, now, a.grace)
  end
  return 'ok', session_ttl, access_ttl, removed
end

-- The sid a presented refresh token names: its family's `refresh:` key's value, or the
-- token itself when it is a sid (`family` empty). nil when there is none. As
-- ValkeyClusterStore's find_sid.
local function find_sid(prefix, family, sid)
  if family == '' then
    return sid
  end
  local found = redis.call('GET', refresh_key(prefix, family))
  if not found then
    return nil
  end
  return found
end

-- Remembers why the session `sid` (of refresh-token family `family`, or nil) ended: the
-- label `reason` under ended:<SHA-1 of the sid> (a sid is a refresh token: never in a key
-- name as it is) and, for a rotated session, ended:<family>, for as long as its data would
-- have lived (`ttl` ms; nothing when it had no TTL). The rule of store::ended. Written
-- after the session's keys are gone and never failing the script: an explanation must not
-- stop a revocation (a Valkey at maxmemory refuses new writes).
local function remember_end(prefix, sid, family, reason, ttl)
  if ttl <= 0 then
    return
  end
  redis.pcall('SET', ended_key(prefix, redis.sha1hex(sid)), reason, 'PX', ttl)
  if family ~= nil then
    redis.pcall('SET', ended_key(prefix, family), reason, 'PX', ttl)
  end
end

-- Revokes one session: every access key it names (first: from then on none of its tokens
-- validates), its refresh-token family key, its entry in its DID index, and its data, and
-- remembers why (`reason`, a Revocation label; see remember_end). The one place a script
-- deletes a session's keys, so what a session owns is listed once (in cluster mode
-- ValkeyClusterStore's revoke does it command by command; in memory, MemoryStore's
-- revoke). A record that cannot be read is removed all the same (its access keys, unknown
-- without the JSON, expire on their own and never validate without the data). Returns
-- whether a session existed.
local function revoke_session(prefix, sid, reason)
  local key = data_key(prefix, sid)
  local raw = redis.call('GET', key)
  if not raw then
    return false
  end
  local s = record_readable(raw, sid)
  local ttl = redis.call('PTTL', key)
  if s then
    for _, t in ipairs(live_tokens(s)) do
      redis.call('DEL', access_key(prefix, t.hash))
    end
    if s.refreshFamily ~= nil then
      redis.call('DEL', refresh_key(prefix, s.refreshFamily))
    end
    redis.call('SREM', did_key(prefix, s.did), sid)
  end
  redis.call('DEL', key)
  remember_end(prefix, sid, s and s.refreshFamily, reason, ttl)
  return true
end

-- Gives the readable record `s` the handle `handle` if it is a session of `did`; whether it
-- is. The rule of SessionRecord::rename.
local function rename(s, did, handle)
  if s.did ~= did then
    return false
  end
  s.handle = handle
  return true
end

-- Renames the session stored under `key` (its sid `sid`; see rename) in place, its TTL
-- kept and nothing else changed; not rewritten when it carries the handle already (a write
-- would end its cached answers for nothing). Whether it is a readable session of `did`.
local function rename_session(key, sid, did, handle)
  local raw = redis.call('GET', key)
  if not raw then
    return false
  end
  local s = record_readable(raw, sid)
  if not s then
    return false
  end
  local before = s.handle
  if not rename(s, did, handle) then
    return false
  end
  if before ~= handle then
    redis.call('SET', key, record_json(s), 'KEEPTTL')
  end
  return true
end

-- Extends (never shortens) the DID index's TTL to `ttl` ms: it must outlive every session
-- it lists, including ones written with a longer TTL (by an earlier configuration or by the
-- TypeScript AppView).
local function extend_index(index, ttl)
  if redis.call('PTTL', index) < ttl then
    redis.call('PEXPIRE', index, int(ttl))
  end
end
