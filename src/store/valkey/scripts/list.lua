-- The stored records of a DID's sessions ("your sessions"), read-only.
-- KEYS[1] = <prefix>did:<did>
-- ARGV[1] = <prefix>
-- Returns sid, JSON, sid, JSON, … for each member that still has data; the caller parses,
-- checks the DID and sorts. Bounded like the index (pruned on create).
local found = {}
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local raw = redis.call('GET', data_key(ARGV[1], sid))
  if raw then
    found[#found + 1] = sid
    found[#found + 1] = raw
  end
end
return found
