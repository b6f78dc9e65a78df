-- Prepended to every script that writes a session: the stored JSON in the TypeScript
-- AppView's field order (integers printed without exponent), stamped on Valkey's own clock,
-- so that every replica of the service writes expiries on one clock, whatever theirs say.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Strings go through cjson.encode, which escapes '/' as '\/': valid JSON that never occurs
-- in valid DIDs, handles or hex ids.
local function session_json(sid, did, handle, hash, expires_at, created_at)
  return '{"sid":' .. cjson.encode(sid)
    .. ',"did":' .. cjson.encode(did)
    .. ',"handle":' .. cjson.encode(handle)
    .. ',"accessTokenHash":' .. cjson.encode(hash)
    .. ',"accessTokenExpiresAt":' .. string.format('%.0f', expires_at)
    .. ',"createdAt":' .. string.format('%.0f', created_at) .. '}'
end
