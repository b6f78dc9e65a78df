-- Cluster mode: replaces a session's data with its new access token, only while the session
-- exists (a concurrent delete wins), stamped on this node's clock. Returns nil (no session),
-- {'', '', 0} when the session is past its absolute deadline (nothing written: the caller
-- revokes it), or {the JSON it replaced, the JSON written, the new token's TTL in ms}.
-- KEYS[1] = <prefix>data:<sid>
-- ARGV[1] = sid, ARGV[2] = did, ARGV[3] = handle, ARGV[4] = new access token hash,
-- ARGV[5] = createdAt (epoch ms), ARGV[6] = session TTL (ms), ARGV[7] = access token TTL (ms),
-- ARGV[8] = User-Agent, ARGV[9] = IP address (the facts to keep), ARGV[10] = the absolute
-- lifetime since createdAt (ms; 0: none)
local replaced = redis.call('GET', KEYS[1])
if not replaced then
  return false
end
local now = now_ms()
local session_ttl, access_ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local max = tonumber(ARGV[10])
if max > 0 then
  local left = tonumber(ARGV[5]) + max - now
  if left <= 0 then
    return {'', '', 0}
  end
  session_ttl, access_ttl = math.min(session_ttl, left), math.min(access_ttl, left)
end
local json = session_json(ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  now + access_ttl, tonumber(ARGV[5]), now, ARGV[8], ARGV[9])
redis.call('SET', KEYS[1], json, 'PX', string.format('%.0f', session_ttl))
return {replaced, json, access_ttl}
