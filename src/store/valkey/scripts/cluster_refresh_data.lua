-- Cluster mode: replaces a session's data with its new access token, only while the session
-- exists (a concurrent delete wins), stamped on this node's clock. Returns nil (no session)
-- or {the JSON it replaced, the JSON written}.
-- KEYS[1] = <prefix>data:<sid>
-- ARGV[1] = sid, ARGV[2] = did, ARGV[3] = handle, ARGV[4] = new access token hash,
-- ARGV[5] = createdAt (epoch ms), ARGV[6] = session TTL (ms), ARGV[7] = access token TTL (ms),
-- ARGV[8] = User-Agent, ARGV[9] = IP address (the facts to keep)
local replaced = redis.call('GET', KEYS[1])
if not replaced then
  return false
end
local now = now_ms()
local json = session_json(ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  now + tonumber(ARGV[7]), tonumber(ARGV[5]), now, ARGV[8], ARGV[9])
redis.call('SET', KEYS[1], json, 'PX', ARGV[6])
return {replaced, json}
