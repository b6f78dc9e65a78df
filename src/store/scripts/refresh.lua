-- Rotates a session's access token atomically.
-- KEYS[1] = <prefix>data:<sid>, KEYS[2] = <prefix>access:<new hash>
-- ARGV[1] = <prefix>, ARGV[2] = sid, ARGV[3] = new access token hash,
-- ARGV[4] = new access token expiry (epoch ms), ARGV[5] = session TTL (ms),
-- ARGV[6] = access token TTL (ms)
-- Returns nil (no session), {'corrupt', reason} (nothing written), or {'ok', new JSON}.
local raw = redis.call('GET', KEYS[1])
if not raw then
  return false
end
local ok, s = pcall(cjson.decode, raw)
if not ok or type(s) ~= 'table' then
  return {'corrupt', 'not a JSON object'}
end
-- The same rules the service applies when it reads a session, checked before any write, so
-- that refresh never revives data that validation would refuse.
local function epoch_ms(n)
  -- An integer a double holds exactly; refuses NaN, infinities and exponent-sized values.
  return type(n) == 'number' and n >= 0 and n < 9007199254740992 and n == math.floor(n)
end
if s.sid ~= ARGV[2] or type(s.did) ~= 'string' or type(s.handle) ~= 'string'
    or type(s.accessTokenHash) ~= 'string' or not epoch_ms(s.accessTokenExpiresAt)
    or not epoch_ms(s.createdAt) then
  return {'corrupt', 'missing or mistyped fields'}
end
-- The old token stops validating now, not when its key would have expired.
redis.call('DEL', ARGV[1] .. 'access:' .. s.accessTokenHash)
-- Rebuilt in the TypeScript AppView's field order; integers printed without exponent.
local json = '{"sid":' .. cjson.encode(s.sid)
  .. ',"did":' .. cjson.encode(s.did)
  .. ',"handle":' .. cjson.encode(s.handle)
  .. ',"accessTokenHash":"' .. ARGV[3]
  .. '","accessTokenExpiresAt":' .. ARGV[4]
  .. ',"createdAt":' .. string.format('%.0f', s.createdAt) .. '}'
redis.call('SET', KEYS[1], json, 'PX', ARGV[5])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[6])
-- Sliding window for the index too (only ever extended, as in create.lua); SADD heals an
-- index that lost this member.
local index = ARGV[1] .. 'did:' .. s.did
redis.call('SADD', index, ARGV[2])
if redis.call('PTTL', index) < tonumber(ARGV[5]) then
  redis.call('PEXPIRE', index, ARGV[5])
end
return {'ok', json}
