-- Revokes every session of a user except one ("log out everywhere else"), atomically.
-- KEYS[1] = <prefix>data:<sid of the session that stays>
-- ARGV[1] = <prefix>, ARGV[2] = that sid
-- Returns -1 when that session does not exist or cannot be read, else how many others
-- were revoked (see revoke_session).
local raw = redis.call('GET', KEYS[1])
if not raw then
  return -1
end
local own = decode_session(raw)
if not own or type(own.did) ~= 'string' then
  return -1
end
local index = ARGV[1] .. 'did:' .. own.did
local count = 0
for _, sid in ipairs(redis.call('SMEMBERS', index)) do
  if sid ~= ARGV[2] then
    if revoke_session(ARGV[1], sid) then
      count = count + 1
    end
    -- Also a member whose data is gone (or names another DID) leaves this index.
    redis.call('SREM', index, sid)
  end
end
return count
