-- Revokes every session of a DID atomically (account deletion, takedown).
-- KEYS[1] = <prefix>did:<did>
-- ARGV[1] = <prefix>
-- ARGV[2] = why (a Revocation label: all-for-did, account-deleted, …), remembered for each
-- Returns how many sessions existed. The index is bounded by pruning on create, so
-- SMEMBERS here is bounded too.
local count = 0
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if revoke_session(ARGV[1], sid, ARGV[2]) then
    count = count + 1
  end
end
redis.call('DEL', KEYS[1])
return count
