-- Cluster mode: refreshes a session's data (see refresh_record), only while the session
-- exists (a concurrent delete wins), stamped on this node's clock: adds an access token (one
-- per tab) and, with rotation, moves the refresh token on. Both are decided on the data as
-- it is now, in this one single-key script, so concurrent refreshes (several tabs) keep each
-- other's tokens and converge on one successor.
-- KEYS[1] = <prefix>data:<sid>
-- ARGV: refresh_args (args::RefreshArgs; its sid is the one KEYS[1] names).
-- Returns nil (no session, or not this token's), {'corrupt'} (unreadable now: nothing
-- written), {'expired'} (past its absolute deadline: nothing written, the caller revokes
-- it), {'reuse'} (an old refresh token: nothing written, the caller revokes the session), or
-- {'ok', the JSON written, the new token's TTL in ms, the hashes of the tokens it
-- revoked…} (their keys are the caller's to delete; they no longer validate, the data no
-- longer names them).
local a = refresh_args()
local raw = redis.call('GET', KEYS[1])
if not raw then
  return false
end
local s = record_readable(raw, a.sid)
if not s then
  return {'corrupt'}
end
local outcome, session_ttl, access_ttl, removed = refresh_record(s, a, now_ms())
if outcome == 'foreign' then
  return false
end
if outcome ~= 'ok' then
  return {outcome}
end
local json = record_json(s)
redis.call('SET', KEYS[1], json, 'PX', int(session_ttl))
local answer = {'ok', json, int(access_ttl)}
for _, hash in ipairs(removed) do
  answer[#answer + 1] = hash
end
return answer
