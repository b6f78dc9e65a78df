-- Gives every live session of a DID its new handle (UpdateHandle), atomically: see
-- rename_session.
-- KEYS[1] = <prefix>did:<did>
-- ARGV: handle_args (args::HandleArgs, its sid '').
-- Returns how many readable sessions of the DID carry the handle now. Bounded like the index
-- (pruned on create).
local a = handle_args()
local count = 0
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if rename_session(data_key(a.prefix, sid), sid, a.did, a.handle) then
    count = count + 1
  end
end
return count
