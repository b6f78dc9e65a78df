-- Revokes one session atomically.
-- KEYS[1] = <prefix>data:<sid>
-- ARGV[1] = <prefix>, ARGV[2] = sid, ARGV[3] = a DID, or empty: when given, only a
-- readable session of that DID is revoked (RevokeSession), anything else answers 0
-- Returns 1 when a session existed, 0 otherwise. A session whose JSON is corrupt is still
-- removed (its access key, which cannot be found without the JSON, expires on its own and
-- never validates without the data).
local raw = redis.call('GET', KEYS[1])
if not raw then
  return 0
end
local ok, s = pcall(cjson.decode, raw)
local readable = ok and type(s) == 'table'
if ARGV[3] ~= nil and ARGV[3] ~= '' and not (readable and s.did == ARGV[3]) then
  return 0
end
if readable then
  if type(s.accessTokenHash) == 'string' then
    redis.call('DEL', ARGV[1] .. 'access:' .. s.accessTokenHash)
  end
  if type(s.did) == 'string' then
    redis.call('SREM', ARGV[1] .. 'did:' .. s.did, ARGV[2])
  end
end
redis.call('DEL', KEYS[1])
return 1
