-- Cluster mode: writes a new session's data on the node that holds it, stamped on that
-- node's clock (the only one a single-key script can read). Returns the JSON written.
-- KEYS[1] = <prefix>data:<sid>
-- ARGV[1] = sid, ARGV[2] = did, ARGV[3] = handle, ARGV[4] = access token hash,
-- ARGV[5] = session TTL (ms), ARGV[6] = access token TTL (ms), ARGV[7] = User-Agent,
-- ARGV[8] = IP address, ARGV[9] = with rotation on, the SHA-256 of the refresh token's
-- family ('' when off), ARGV[10] = the SHA-256 of the refresh token
local now = now_ms()
local rotation = nil
if ARGV[9] ~= '' then
  rotation = {family = ARGV[9], hash = ARGV[10]}
end
local json = session_json(ARGV[1], ARGV[2], ARGV[3], ARGV[4], now + tonumber(ARGV[6]), now,
  now, ARGV[7], ARGV[8], nil, rotation)
redis.call('SET', KEYS[1], json, 'PX', ARGV[5])
return json
