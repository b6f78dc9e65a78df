-- Revokes one session atomically.
-- KEYS[1] = what names the session: <prefix>data:<sid> for a sid, else
-- <prefix>refresh:<family hash>
-- ARGV[1] = <prefix>, ARGV[2] = sid ('' for a family token), ARGV[3] = a DID, or empty:
-- when given, only a readable session of that DID is revoked (RevokeSession, by sid, no
-- token), anything else answers 0; ARGV[4] = the refresh token's family hash ('' for a sid),
-- ARGV[5] = the refresh token's SHA-256 ('' with a DID), ARGV[6] = the reuse grace (ms)
-- Returns {0} when no session of that token (or DID) existed, {1, sid} when it is now
-- revoked (see revoke_session), {2, sid} when it was revoked because the token was an old
-- one (reuse).
local sid = find_sid(ARGV[1], ARGV[4], ARGV[2])
if not sid then
  return {0, ''}
end
local raw = redis.call('GET', ARGV[1] .. 'data:' .. sid)
if not raw then
  return {0, ''}
end
local s = decode_session(raw)
if ARGV[3] ~= nil and ARGV[3] ~= '' then
  if not (s and s.did == ARGV[3]) then
    return {0, ''}
  end
elseif s then
  -- Logout accepts the current refresh token and the previous one within the grace; an
  -- older one ends the session all the same, as reuse. An unreadable session is removed.
  local role = refresh_role(s, ARGV[4], ARGV[5], now_ms(), tonumber(ARGV[6]))
  if role == 'foreign' then
    return {0, ''}
  end
  revoke_session(ARGV[1], sid)
  if role == 'reuse' then
    return {2, sid}
  end
  return {1, sid}
end
revoke_session(ARGV[1], sid)
return {1, sid}
