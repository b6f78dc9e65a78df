-- The shared prelude, prepended to every standalone script and to the cluster scripts that
-- write a session: the stored JSON in the TypeScript AppView's field order (integers printed
-- without exponent), stamped on Valkey's own clock, so that every replica of the service
-- writes expiries on one clock, whatever theirs say; and revoke_session, the one place a
-- session's keys are deleted (standalone scripts only: in cluster mode a session's keys live
-- on different nodes, and ValkeyClusterStore's revoke does it command by command).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- An integer a double holds exactly (epoch milliseconds); refuses NaN, infinities and
-- exponent-sized values, which the service's parser would refuse.
local function epoch_ms(n)
  return type(n) == 'number' and n >= 0 and n < 9007199254740992 and n == math.floor(n)
end
-- A JSON string as JSON.stringify writes it: cjson.encode escapes '/' as '\/' (valid, but
-- not what the TypeScript code writes, and User-Agents are full of '/'). cjson never leaves
-- a '/' bare, so every '\/' in its output is an escaped slash (an escaped backslash before
-- it is '\\\/', whose last two characters are the match).
local function str(value)
  return (string.gsub(cjson.encode(value), '\\/', '/'))
end
-- The facts after the six TypeScript fields are this service's own: the TypeScript code
-- drops them when it rewrites a session. `tokens` (may be nil) are the session's other live
-- access tokens, oldest first, as {hash = ..., expiresAt = ...}; `rotation` (may be nil)
-- its refresh-token rotation state, {family, hash, previous, rotatedAt, nonce, earlier}
-- (only family and hash before the first rotation; `earlier` lists the rotations before
-- the previous one still inside the grace, oldest first, as {hash, nonce, rotatedAt}).
local function session_json(sid, did, handle, hash, expires_at, created_at, refreshed_at,
    user_agent, ip_address, tokens, rotation)
  local json = '{"sid":' .. str(sid)
    .. ',"did":' .. str(did)
    .. ',"handle":' .. str(handle)
    .. ',"accessTokenHash":' .. str(hash)
    .. ',"accessTokenExpiresAt":' .. string.format('%.0f', expires_at)
    .. ',"createdAt":' .. string.format('%.0f', created_at)
    .. ',"refreshedAt":' .. string.format('%.0f', refreshed_at)
  if user_agent ~= nil and user_agent ~= '' then
    json = json .. ',"userAgent":' .. str(user_agent)
  end
  if ip_address ~= nil and ip_address ~= '' then
    json = json .. ',"ipAddress":' .. str(ip_address)
  end
  if tokens ~= nil and #tokens > 0 then
    local parts = {}
    for i, t in ipairs(tokens) do
      parts[i] = '{"hash":' .. str(t.hash) .. ',"expiresAt":' .. string.format('%.0f', t.expiresAt)
        .. '}'
    end
    json = json .. ',"accessTokens":[' .. table.concat(parts, ',') .. ']'
  end
  if rotation ~= nil then
    json = json .. ',"refreshFamily":' .. str(rotation.family)
      .. ',"refreshTokenHash":' .. str(rotation.hash)
    if rotation.previous ~= nil then
      json = json .. ',"previousRefreshTokenHash":' .. str(rotation.previous)
        .. ',"rotatedAt":' .. string.format('%.0f', rotation.rotatedAt)
        .. ',"rotationNonce":' .. str(rotation.nonce)
      if rotation.earlier ~= nil and #rotation.earlier > 0 then
        local parts = {}
        for i, r in ipairs(rotation.earlier) do
          parts[i] = '{"hash":' .. str(r.hash) .. ',"nonce":' .. str(r.nonce)
            .. ',"rotatedAt":' .. string.format('%.0f', r.rotatedAt) .. '}'
        end
        json = json .. ',"earlierRotations":[' .. table.concat(parts, ',') .. ']'
      end
    end
  end
  return json .. '}'
end
-- The rotation state of a decoded session (see session_json), or nil when its refresh
-- token never rotated (it is its sid).
local function rotation_of(s)
  if type(s.refreshTokenHash) ~= 'string' or type(s.refreshFamily) ~= 'string' then
    return nil
  end
  local rotation = {family = s.refreshFamily, hash = s.refreshTokenHash}
  if type(s.previousRefreshTokenHash) == 'string' and type(s.rotatedAt) == 'number'
      and type(s.rotationNonce) == 'string' then
    rotation.previous = s.previousRefreshTokenHash
    rotation.rotatedAt = s.rotatedAt
    rotation.nonce = s.rotationNonce
    rotation.earlier = {}
    if type(s.earlierRotations) == 'table' then
      for i, r in ipairs(s.earlierRotations) do
        rotation.earlier[i] = {hash = r.hash, nonce = r.nonce, rotatedAt = r.rotatedAt}
      end
    end
  end
  return rotation
end
-- How many rotations before the previous one a session remembers: the same as
-- session::MAX_EARLIER_ROTATIONS (the behaviour suite checks both).
local MAX_EARLIER_ROTATIONS = 4
-- The rotation state once the current token (`presented`, a hash) moves on to `hash`,
-- derived with `nonce`, at `now`: the previous rotation joins the earlier ones, which keep
-- those inside `grace` (at most MAX_EARLIER_ROTATIONS, dropped from the oldest end so the
-- rest still chains up to the current token). `rotation` may be nil (never rotated: the
-- session takes `family`). The rules of SessionRecord::rotate.
local function rotate(rotation, family, presented, hash, nonce, now, grace)
  local earlier = {}
  if rotation ~= nil and rotation.previous ~= nil then
    for _, r in ipairs(rotation.earlier) do
      earlier[#earlier + 1] = r
    end
    earlier[#earlier + 1] = {hash = rotation.previous, nonce = rotation.nonce,
      rotatedAt = rotation.rotatedAt}
  end
  local stale = 0
  while stale < #earlier and now - earlier[stale + 1].rotatedAt >= grace do
    stale = stale + 1
  end
  stale = math.max(stale, #earlier - MAX_EARLIER_ROTATIONS)
  local kept = {}
  for i = stale + 1, #earlier do
    kept[#kept + 1] = earlier[i]
  end
  return {family = rotation and rotation.family or family, hash = hash, previous = presented,
    rotatedAt = now, nonce = nonce, earlier = kept}
end
-- Whether the rotation fields of a decoded session are absent or of the types the service
-- reads (checked before any write).
local function rotation_readable(s)
  for _, field in ipairs({'refreshFamily', 'refreshTokenHash', 'previousRefreshTokenHash',
      'rotationNonce'}) do
    if s[field] ~= nil and type(s[field]) ~= 'string' then
      return false
    end
  end
  if s.rotatedAt ~= nil and type(s.rotatedAt) ~= 'number' then
    return false
  end
  if s.earlierRotations == nil then
    return true
  end
  if type(s.earlierRotations) ~= 'table' then
    return false
  end
  for _, r in ipairs(s.earlierRotations) do
    if type(r) ~= 'table' or type(r.hash) ~= 'string' or type(r.nonce) ~= 'string'
        or not epoch_ms(r.rotatedAt) then
      return false
    end
  end
  return true
end
-- What a presented refresh token (its SHA-256 `token_hash`; `family` is the digest of its
-- family, or '' when it was presented as a sid and found the data under it) is to the
-- session `s`: 'current', 'grace' (one the session rotated away from less than `grace` ms
-- ago: the previous one or an earlier one it remembers), 'reuse' (any other) or 'foreign'
-- (not this session's: a family token whose record was rewritten by a writer that does not
-- know rotation).
-- The rules of SessionRecord::role_of.
local function refresh_role(s, family, token_hash, now, grace)
  if type(s.refreshTokenHash) ~= 'string' then
    if family == '' then
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
  local rotation = rotation_of(s)
  if rotation ~= nil and rotation.previous ~= nil then
    if rotation.previous == token_hash and now - rotation.rotatedAt < grace then
      return 'grace'
    end
    for _, r in ipairs(rotation.earlier) do
      if r.hash == token_hash and now - r.rotatedAt < grace then
        return 'grace'
      end
    end
  end
  return 'reuse'
end
-- The sid a presented refresh token names: its family's `refresh:` key's value, or the
-- token itself when it is a sid (`family` empty). nil when there is none.
local function find_sid(prefix, family, sid)
  if family == '' then
    return sid
  end
  local found = redis.call('GET', prefix .. 'refresh:' .. family)
  if not found then
    return nil
  end
  return found
end
-- Every access token a decoded session names: the newest (accessTokenHash) and the others
-- (accessTokens), as hashes. What a revocation deletes.
local function token_hashes(s)
  local hashes = {}
  if type(s) ~= 'table' then
    return hashes
  end
  if type(s.accessTokens) == 'table' then
    for _, t in ipairs(s.accessTokens) do
      if type(t) == 'table' and type(t.hash) == 'string' then
        hashes[#hashes + 1] = t.hash
      end
    end
  end
  if type(s.accessTokenHash) == 'string' then
    hashes[#hashes + 1] = s.accessTokenHash
  end
  return hashes
end
-- Whether a decoded `accessTokens` is absent or a list of {hash, expiresAt} as the service
-- reads it (checked before any write, like the other fields).
local function tokens_readable(tokens)
  if tokens == nil then
    return true
  end
  if type(tokens) ~= 'table' then
    return false
  end
  for _, t in ipairs(tokens) do
    if type(t) ~= 'table' or type(t.hash) ~= 'string' or not epoch_ms(t.expiresAt) then
      return false
    end
  end
  return true
end
-- The session's other live tokens once `new` becomes its newest, and the hashes to revoke:
-- `previous` (the refreshing tab's own token) when live, expired ones, and past
-- `max_tokens` the oldest. The rules of SessionRecord::add_access_token.
local function next_tokens(s, previous, max_tokens, now)
  local all = {}
  if type(s.accessTokens) == 'table' then
    for _, t in ipairs(s.accessTokens) do
      all[#all + 1] = t
    end
  end
  all[#all + 1] = {hash = s.accessTokenHash, expiresAt = s.accessTokenExpiresAt}
  local keep, removed = {}, {}
  for _, t in ipairs(all) do
    if t.hash ~= '' then
      if t.expiresAt <= now or t.hash == previous then
        removed[#removed + 1] = t.hash
      else
        keep[#keep + 1] = {hash = t.hash, expiresAt = t.expiresAt}
      end
    end
  end
  local room = math.max(max_tokens, 1) - 1
  while #keep > room do
    removed[#removed + 1] = table.remove(keep, 1).hash
  end
  return keep, removed
end
-- A stored record decoded, or nil when it is not a JSON object (a corrupt or foreign value).
local function decode_session(raw)
  local ok, s = pcall(cjson.decode, raw)
  if ok and type(s) == 'table' then
    return s
  end
  return nil
end
-- Revokes one session: every access key it names (first: from then on none of its tokens
-- validates), its refresh-token family key, its entry in its DID index, and its data. The one place a script deletes a
-- session's keys, so what a session owns is listed once. A record that cannot be read is
-- removed all the same (its access keys, unknown without the JSON, expire on their own and
-- never validate without the data). Returns whether a session existed.
local function revoke_session(prefix, sid)
  local data_key = prefix .. 'data:' .. sid
  local raw = redis.call('GET', data_key)
  if not raw then
    return false
  end
  local s = decode_session(raw)
  if s then
    for _, hash in ipairs(token_hashes(s)) do
      redis.call('DEL', prefix .. 'access:' .. hash)
    end
    if type(s.refreshFamily) == 'string' then
      redis.call('DEL', prefix .. 'refresh:' .. s.refreshFamily)
    end
    if type(s.did) == 'string' then
      redis.call('SREM', prefix .. 'did:' .. s.did, sid)
    end
  end
  redis.call('DEL', data_key)
  return true
end
