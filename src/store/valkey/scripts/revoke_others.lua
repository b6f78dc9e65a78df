-- Revokes every session of a user except one ("log out everywhere else"), atomically.
-- KEYS[1] = what names the session that stays: <prefix>data:<sid> for a sid, else
-- <prefix>refresh:<family hash>
-- ARGV[1] = <prefix>, ARGV[2] = sid ('' for a family token), ARGV[3] = the refresh token's
-- family hash ('' for a sid), ARGV[4] = its SHA-256, ARGV[5] = the reuse grace (ms)
-- Returns {-1} when that session does not exist or cannot be read, {-2, sid} when the token
-- was an old one (reuse: that session is revoked instead), else {how many others were
-- revoked (see revoke_session)}.
local own_sid = find_sid(ARGV[1], ARGV[3], ARGV[2])
if not own_sid then
  return {-1, ''}
end
local raw = redis.call('GET', ARGV[1] .. 'data:' .. own_sid)
if not raw then
  return {-1, ''}
end
local own = decode_session(raw)
if not own or type(own.did) ~= 'string' then
  return {-1, ''}
end
local role = refresh_role(own, ARGV[3], ARGV[4], now_ms(), tonumber(ARGV[5]))
if role == 'foreign' then
  return {-1, ''}
end
if role == 'reuse' then
  revoke_session(ARGV[1], own_sid)
  return {-2, own_sid}
end
local index = ARGV[1] .. 'did:' .. own.did
local count = 0
for _, sid in ipairs(redis.call('SMEMBERS', index)) do
  if sid ~= own_sid then
    if revoke_session(ARGV[1], sid) then
      count = count + 1
    end
    -- Also a member whose data is gone (or names another DID) leaves this index.
    redis.call('SREM', index, sid)
  end
end
return {count, ''}
