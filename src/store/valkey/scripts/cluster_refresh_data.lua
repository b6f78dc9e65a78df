-- Cluster mode: refreshes a session's data, only while the session exists (a concurrent
-- delete wins), stamped on this node's clock: adds an access token (one per tab, see
-- next_tokens) and, with rotation, moves the refresh token on (see refresh_role). Both are
-- decided on the data as it is now, in this one single-key script, so concurrent refreshes
-- (several tabs) keep each other's tokens and converge on one successor.
-- KEYS[1] = <prefix>data:<sid>
-- ARGV[1] = sid, ARGV[2] = new access token hash, ARGV[3] = session TTL (ms), ARGV[4] =
-- access token TTL (ms), ARGV[5] = '1' when the device facts are replaced by ARGV[6]
-- (User-Agent) and ARGV[7] (IP address), else kept, ARGV[8] = the absolute lifetime since
-- createdAt (ms; 0: none), ARGV[9] = the refreshing tab's previous access token hash (''
-- when none), ARGV[10] = most access tokens per session, ARGV[11] = the refresh token's
-- family hash ('' for a sid), ARGV[12] = its SHA-256, ARGV[13] = the reuse grace (ms),
-- ARGV[14] = with rotation on, the candidate successor's nonce ('' when off), ARGV[15] = its
-- SHA-256, ARGV[16] = its family hash
-- Returns nil (no session, or not this token's), {'corrupt'} (unreadable now: nothing
-- written), {'expired'} (past its absolute deadline: nothing written, the caller revokes
-- it), {'reuse'} (an old refresh token: nothing written, the caller revokes the session), or
-- {'ok', the JSON written, the new token's TTL in ms, the hashes of the tokens it
-- revoked…} (their keys are the caller's to delete; they no longer
-- validate, the data no longer names them).
local raw = redis.call('GET', KEYS[1])
if not raw then
  return false
end
local ok, s = pcall(cjson.decode, raw)
if not ok or type(s) ~= 'table' or s.sid ~= ARGV[1] or type(s.did) ~= 'string'
    or type(s.handle) ~= 'string' or type(s.accessTokenHash) ~= 'string'
    or not epoch_ms(s.accessTokenExpiresAt) or not epoch_ms(s.createdAt)
    or (s.userAgent ~= nil and type(s.userAgent) ~= 'string')
    or (s.ipAddress ~= nil and type(s.ipAddress) ~= 'string')
    or not tokens_readable(s.accessTokens) or not rotation_readable(s) then
  return {'corrupt'}
end
local now = now_ms()
local role = refresh_role(s, ARGV[11], ARGV[12], now, tonumber(ARGV[13]))
if role == 'foreign' then
  return false
end
if role == 'reuse' then
  return {'reuse'}
end
local session_ttl, access_ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local max = tonumber(ARGV[8])
if max > 0 then
  local left = s.createdAt + max - now
  if left <= 0 then
    return {'expired'}
  end
  session_ttl, access_ttl = math.min(session_ttl, left), math.min(access_ttl, left)
end
local user_agent, ip_address = s.userAgent, s.ipAddress
if ARGV[5] == '1' then
  user_agent, ip_address = ARGV[6], ARGV[7]
end
local tokens, removed = next_tokens(s, ARGV[9], tonumber(ARGV[10]), now)
local rotation = rotation_of(s)
if role == 'current' and ARGV[14] ~= '' then
  rotation = rotate(rotation, ARGV[16], ARGV[12], ARGV[15], ARGV[14], now, tonumber(ARGV[13]))
end
local json = session_json(s.sid, s.did, s.handle, ARGV[2], now + access_ttl, s.createdAt, now,
  user_agent, ip_address, tokens, rotation)
redis.call('SET', KEYS[1], json, 'PX', string.format('%.0f', session_ttl))
local answer = {'ok', json, string.format('%.0f', access_ttl)}
for _, hash in ipairs(removed) do
  answer[#answer + 1] = hash
end
return answer
