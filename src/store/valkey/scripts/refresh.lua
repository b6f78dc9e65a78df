-- Refreshes the session a refresh token names, atomically (see refresh_record): adds an
-- access token (one per tab) and, with rotation, moves the refresh token on.
-- KEYS[1] = what names the session: <prefix>data:<sid> for a token that is a sid, else
-- <prefix>refresh:<family hash>; KEYS[2] = <prefix>access:<new hash>
-- ARGV: refresh_args (args::RefreshArgs).
-- The new token's expiry is Valkey's clock plus its TTL.
-- Returns nil (no session, or not this token's), {'corrupt', reason, sid} (nothing
-- written), {'expired', '', sid} (past its absolute deadline: the session is gone now),
-- {'reuse', did, sid} (an old refresh token: the session, of that DID, is revoked now), or
-- {'ok', new JSON, sid}.
local a = refresh_args()
local sid = find_sid(a.prefix, a.family, a.sid)
if not sid then
  return false
end
local key = data_key(a.prefix, sid)
local raw = redis.call('GET', key)
if not raw then
  return false
end
-- Checked before any write, so that refresh never revives data that validation would
-- refuse, and an unreadable session is never rotated (a retry would rotate it again).
local s, reason = record_readable(raw, sid)
if not s then
  return {'corrupt', reason, sid}
end
local outcome, session_ttl, access_ttl, removed = refresh_record(s, a, now_ms())
if outcome == 'foreign' then
  return false
end
if outcome ~= 'ok' then
  -- An old refresh token (stolen, or a tab far behind), or past the absolute deadline: the
  -- whole session ends now, whatever its sliding TTL says.
  revoke_session(a.prefix, sid, outcome == 'reuse' and 'reuse' or 'lifetime')
  return {outcome, s.did, sid}
end
-- The tab's previous token, expired ones and any past the cap stop validating now, not
-- when their keys would have expired; the session's other tokens stay.
for _, hash in ipairs(removed) do
  redis.call('DEL', access_key(a.prefix, hash))
end
local json = record_json(s)
redis.call('SET', key, json, 'PX', int(session_ttl))
redis.call('SET', KEYS[2], sid, 'PX', int(access_ttl))
if s.refreshFamily ~= nil then
  -- The family key lives as long as the session it names.
  redis.call('SET', refresh_key(a.prefix, s.refreshFamily), sid, 'PX', int(session_ttl))
end
-- Sliding window for the index too; SADD heals an index that lost this member.
local index = did_key(a.prefix, s.did)
redis.call('SADD', index, sid)
extend_index(index, a.session_ttl)
return {'ok', json, sid}
