-- Revokes every session of a user except one ("log out everywhere else"), atomically.
-- KEYS[1] = what names the session that stays: <prefix>data:<sid> for a sid, else
-- <prefix>refresh:<family hash>
-- ARGV: presented_args (args::PresentedArgs).
-- Returns {-1, '', ''} when that session does not exist or cannot be read, {-2, sid, did}
-- when the token was an old one (reuse: that session, of that DID, is revoked instead),
-- else {how many others were revoked (see revoke_session), '', ''}.
local a = presented_args()
local own_sid = find_sid(a.prefix, a.family, a.sid)
if not own_sid then
  return {-1, '', ''}
end
local raw = redis.call('GET', data_key(a.prefix, own_sid))
if not raw then
  return {-1, '', ''}
end
local own = record_readable(raw, own_sid)
if not own then
  return {-1, '', ''}
end
local role = refresh_role(own, a.sid, a.family, a.token_hash, now_ms(), a.grace)
if role == 'foreign' then
  return {-1, '', ''}
end
if role == 'reuse' then
  revoke_session(a.prefix, own_sid, 'reuse')
  return {-2, own_sid, own.did}
end
local index = did_key(a.prefix, own.did)
local count = 0
for _, sid in ipairs(redis.call('SMEMBERS', index)) do
  if sid ~= own_sid then
    if revoke_session(a.prefix, sid, 'others') then
      count = count + 1
    end
    -- Also a member whose data is gone (or names another DID) leaves this index.
    redis.call('SREM', index, sid)
  end
end
return {count, '', ''}
