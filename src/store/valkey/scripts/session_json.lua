-- Prepended to every script that writes a session: the stored JSON in the TypeScript
-- AppView's field order (integers printed without exponent), stamped on Valkey's own clock,
-- so that every replica of the service writes expiries on one clock, whatever theirs say.
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
