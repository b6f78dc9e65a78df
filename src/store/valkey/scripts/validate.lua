-- Looks up the sessions of one or more access keys, in one round trip (ValidateAccessToken
-- passes one key, ValidateAccessTokens up to 1,000).
-- KEYS[i] = <prefix>access:<sha256 of an access token>
-- ARGV[1] = <prefix>data:
-- Returns {seconds, microseconds, {found_1, ..., found_n}}: Valkey's TIME, then per key
-- {sid, session JSON, the data key's PTTL, the access key's PTTL (-1: no expiry)}, or false
-- when either key is missing. (A cached answer must end with its keys: Valkey announces an expiry only
-- when it reclaims the key, which may be long after.) Whether a token is still a live,
-- unexpired one of its session is decided by the caller from the JSON, against Valkey's
-- clock: one clock for every replica of the service, whatever theirs say.
local found = {}
for i, access_key in ipairs(KEYS) do
  found[i] = false
  local sid = redis.call('GET', access_key)
  if sid then
    local data = redis.call('GET', ARGV[1] .. sid)
    if data then
      found[i] = {sid, data, redis.call('PTTL', ARGV[1] .. sid), redis.call('PTTL', access_key)}
    end
  end
end
local now = redis.call('TIME')
return {now[1], now[2], found}
