-- Stores a new session atomically.
-- KEYS[1] = <prefix>data:<sid>, KEYS[2] = <prefix>access:<hash>, KEYS[3] = <prefix>did:<did>
-- ARGV[1] = did, ARGV[2] = sid, ARGV[3] = session TTL (ms),
-- ARGV[4] = access token TTL (ms), ARGV[5] = <prefix>data:, ARGV[6] = prune sample size,
-- ARGV[7] = handle, ARGV[8] = access token hash, ARGV[9] = User-Agent, ARGV[10] = IP
-- address (both may be empty), ARGV[11] = with rotation on, the SHA-256 of the refresh
-- token's family ('' when off), ARGV[12] = the SHA-256 of the refresh token;
-- KEYS[4] = <prefix>refresh:<family hash> (only with rotation on)
-- Returns the session JSON written (createdAt and accessTokenExpiresAt on Valkey's clock).
--
-- First prunes a bounded random sample of the DID index: members whose data expired are
-- removed, so a user who logs in daily for years keeps an index the size of their live
-- sessions (SRANDMEMBER with a positive count returns distinct members).
local sample = redis.call('SRANDMEMBER', KEYS[3], tonumber(ARGV[6]))
for _, member in ipairs(sample) do
  if redis.call('EXISTS', ARGV[5] .. member) == 0 then
    redis.call('SREM', KEYS[3], member)
  end
end
local now = now_ms()
local rotation = nil
if ARGV[11] ~= '' then
  rotation = {family = ARGV[11], hash = ARGV[12]}
end
local json = session_json(ARGV[2], ARGV[1], ARGV[7], ARGV[8], now + tonumber(ARGV[4]), now,
  now, ARGV[9], ARGV[10], nil, rotation)
redis.call('SET', KEYS[1], json, 'PX', ARGV[3])
if rotation then
  redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[3])
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
redis.call('SADD', KEYS[3], ARGV[2])
-- Only ever extend the index TTL: it must outlive every session it lists, including ones
-- written with a longer TTL (by an earlier configuration or by the TypeScript AppView).
if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
return json
