-- Looks up the session an access key points to, in one round trip.
-- KEYS[1] = <prefix>access:<sha256 of the access token>
-- ARGV[1] = <prefix>data:
-- Returns {sid, session JSON}, or nil when either key is missing. Whether the token is
-- still the session's current one is decided by the caller from the JSON's accessTokenHash.
local sid = redis.call('GET', KEYS[1])
if not sid then
  return false
end
local data = redis.call('GET', ARGV[1] .. sid)
if not data then
  return false
end
return {sid, data}
