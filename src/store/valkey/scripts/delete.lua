-- Revokes one session atomically.
-- KEYS[1] = <prefix>data:<sid>
-- ARGV[1] = <prefix>, ARGV[2] = sid, ARGV[3] = a DID, or empty: when given, only a
-- readable session of that DID is revoked (RevokeSession), anything else answers 0
-- Returns 1 when a session existed (and is now revoked, see revoke_session), 0 otherwise.
local raw = redis.call('GET', KEYS[1])
if not raw then
  return 0
end
if ARGV[3] ~= nil and ARGV[3] ~= '' then
  local s = decode_session(raw)
  if not (s and s.did == ARGV[3]) then
    return 0
  end
end
revoke_session(ARGV[1], ARGV[2])
return 1
