-- Cluster mode: adds a member to a DID index and extends (never shortens) the index's TTL,
-- atomically: there is no moment when the set exists without an expiry.
-- KEYS[1] = <prefix>did:<did>
-- ARGV[1] = sid, ARGV[2] = session TTL (ms)
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
