-- Revokes one session atomically (see revoke_session).
-- KEYS[1] = what names the session: <prefix>data:<sid> for a sid, else
-- <prefix>refresh:<family hash>
-- ARGV: delete_args (args::DeleteArgs).
-- Returns {0, '', ''} when no session of that token (or DID) existed, {1, sid, ''} when it
-- is now revoked, {2, sid, did} when it was revoked because the token was an old one
-- (reuse; the session's DID).
local a = delete_args()
local sid = find_sid(a.prefix, a.family, a.sid)
if not sid then
  return {0, '', ''}
end
local raw = redis.call('GET', data_key(a.prefix, sid))
if not raw then
  return {0, '', ''}
end
local s = record_readable(raw, sid)
if a.did ~= '' then
  -- RevokeSession: only a readable session of that DID.
  if not (s and s.did == a.did) then
    return {0, '', ''}
  end
  revoke_session(a.prefix, sid, 'user')
  return {1, sid, ''}
end
if not s then
  -- Unreadable: a session id still logs out (it is removed); a family token, which only
  -- the record could confirm, finds nothing.
  if a.family ~= '' then
    return {0, '', ''}
  end
  revoke_session(a.prefix, sid, 'logout')
  return {1, sid, ''}
end
-- Logout accepts the current refresh token and one rotated away from within the grace; an
-- older one ends the session all the same, as reuse.
local role = refresh_role(s, a.sid, a.family, a.token_hash, now_ms(), a.grace)
if role == 'foreign' then
  return {0, '', ''}
end
if role == 'reuse' then
  revoke_session(a.prefix, sid, 'reuse')
  return {2, sid, s.did}
end
revoke_session(a.prefix, sid, 'logout')
return {1, sid, ''}
