-- Looks up the session an access key points to, in one round trip.
-- KEYS[1] = <prefix>access:<sha256 of the access token>
-- ARGV[1] = <prefix>data:
-- Returns {sid, session JSON, seconds, microseconds} (the last two Valkey's TIME), or nil
-- when either key is missing. Whether the token is still the session's current, unexpired
-- one is decided by the caller from the JSON's accessTokenHash and accessTokenExpiresAt,
-- against Valkey's clock: one clock for every replica of the service, whatever theirs say.
local sid = redis.call('GET', KEYS[1])
if not sid then
  return false
end
local data = redis.call('GET', ARGV[1] .. sid)
if not data then
  return false
end
local now = redis.call('TIME')
return {sid, data, now[1], now[2]}
