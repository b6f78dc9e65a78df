-- Revokes every session of a DID atomically (account deletion, takedown).
-- KEYS[1] = <prefix>did:<did>
-- ARGV[1] = <prefix>
-- Returns how many sessions existed. The index is bounded by pruning on create, so
-- SMEMBERS here is bounded too.
local count = 0
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local data_key = ARGV[1] .. 'data:' .. sid
  local raw = redis.call('GET', data_key)
  if raw then
    local ok, s = pcall(cjson.decode, raw)
    if ok and type(s) == 'table' and type(s.accessTokenHash) == 'string' then
      redis.call('DEL', ARGV[1] .. 'access:' .. s.accessTokenHash)
    end
    redis.call('DEL', data_key)
    count = count + 1
  end
end
redis.call('DEL', KEYS[1])
return count
