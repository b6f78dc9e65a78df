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
-- A JSON string as JSON.stringify writes it: cjson.encode escapes '/' as '\/' (valid, but
-- not what the TypeScript code writes, and User-Agents are full of '/'). cjson never leaves
-- a '/' bare, so every '\/' in its output is an escaped slash (an escaped backslash before
-- it is '\\\/', whose last two characters are the match).
local function str(value)
  return (string.gsub(cjson.encode(value), '\\/', '/'))
end
-- The three facts after the six TypeScript fields are this service's own: the TypeScript
-- code drops them when it rewrites a session.
local function session_json(sid, did, handle, hash, expires_at, created_at, refreshed_at,
    user_agent, ip_address)
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
  return json .. '}'
end
-- A stored record decoded, or nil when it is not a JSON object (a corrupt or foreign value).
local function decode_session(raw)
  local ok, s = pcall(cjson.decode, raw)
  if ok and type(s) == 'table' then
    return s
  end
  return nil
end
-- Revokes one session: its access key (first: from then on no token of it validates), its
-- entry in its DID index, and its data. The one place a script deletes a session's keys, so
-- what a session owns is listed once. A record that cannot be read is removed all the same
-- (its access key, unknown without the JSON, expires on its own and never validates without
-- the data). Returns whether a session existed.
local function revoke_session(prefix, sid)
  local data_key = prefix .. 'data:' .. sid
  local raw = redis.call('GET', data_key)
  if not raw then
    return false
  end
  local s = decode_session(raw)
  if s then
    if type(s.accessTokenHash) == 'string' then
      redis.call('DEL', prefix .. 'access:' .. s.accessTokenHash)
    end
    if type(s.did) == 'string' then
      redis.call('SREM', prefix .. 'did:' .. s.did, sid)
    end
  end
  redis.call('DEL', data_key)
  return true
end
