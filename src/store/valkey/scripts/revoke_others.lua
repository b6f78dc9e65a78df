-- Revokes every session of a user except one ("log out everywhere else"), atomically.
-- KEYS[1] = <prefix>data:<sid of the session that stays>
-- ARGV[1] = <prefix>, ARGV[2] = that sid
-- Returns -1 when that session does not exist or cannot be read, else how many others
-- were revoked (their access keys, data and index entries).
local raw = redis.call('GET', KEYS[1])
if not raw then
  return -1
end
local ok, own = pcall(cjson.decode, raw)
if not ok or type(own) ~= 'table' or type(own.did) ~= 'string' then
  return -1
end
local index = ARGV[1] .. 'did:' .. own.did
local count = 0
for _, sid in ipairs(redis.call('SMEMBERS', index)) do
  if sid ~= ARGV[2] then
    local data_key = ARGV[1] .. 'data:' .. sid
    local other = redis.call('GET', data_key)
    if other then
      local decoded, s = pcall(cjson.decode, other)
      if decoded and type(s) == 'table' and type(s.accessTokenHash) == 'string' then
        redis.call('DEL', ARGV[1] .. 'access:' .. s.accessTokenHash)
      end
      redis.call('DEL', data_key)
      count = count + 1
    end
    redis.call('SREM', index, sid)
  end
end
return count
