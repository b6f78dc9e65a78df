-- Stores a new session atomically; with a cap, first revokes the DID's least recently
-- refreshed sessions so that no more than the cap stay live, the new one included.
-- KEYS[1] = <prefix>data:<sid>, KEYS[2] = <prefix>access:<hash>, KEYS[3] = <prefix>did:<did>,
-- KEYS[4] = <prefix>refresh:<family hash> (only with rotation on)
-- ARGV: create_args (args::CreateArgs).
-- Returns {the session JSON written (createdAt and accessTokenExpiresAt on Valkey's clock),
-- how many sessions the cap revoked}.
local a = create_args()
local revoked = 0
if a.max_per_did > 0 and redis.call('SCARD', KEYS[3]) >= a.max_per_did then
  -- The new session may not fit: every member is read, the dead ones leave the index (a
  -- full prune), and the least recently refreshed live ones are revoked until it fits.
  -- (Below the cap nothing is read, and no sampled pruning is needed: the index never
  -- grows past the cap before this pass prunes it.)
  local live = {}
  for _, member in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    local raw = redis.call('GET', data_key(a.prefix, member))
    local s = raw and record_readable(raw, member)
    if not raw or (s and s.did ~= a.did) then
      -- Gone, or another DID's (a foreign writer): it leaves this index, nothing else.
      redis.call('SREM', KEYS[3], member)
    else
      live[#live + 1] = {s and last_refreshed(s) or -1, member}
    end
  end
  local excess = #live - (a.max_per_did - 1)
  if excess > 0 then
    table.sort(live, cap_order)
    for i = 1, excess do
      if revoke_session(a.prefix, live[i][2], 'cap') then
        revoked = revoked + 1
      end
      -- An unreadable record names no index for revoke_session: it leaves this one here.
      redis.call('SREM', KEYS[3], live[i][2])
    end
  end
elseif a.max_per_did == 0 then
  -- Without a cap, a bounded random sample of the DID index is pruned: members whose data
  -- expired are removed, so a user who logs in daily for years keeps an index the size of
  -- their live sessions (SRANDMEMBER with a positive count returns distinct members).
  for _, member in ipairs(redis.call('SRANDMEMBER', KEYS[3], a.prune_sample)) do
    if redis.call('EXISTS', data_key(a.prefix, member)) == 0 then
      redis.call('SREM', KEYS[3], member)
    end
  end
end
local s = new_record(a, now_ms())
local json = record_json(s)
redis.call('SET', KEYS[1], json, 'PX', int(a.session_ttl))
if s.refreshFamily ~= nil then
  redis.call('SET', KEYS[4], a.sid, 'PX', int(a.session_ttl))
end
redis.call('SET', KEYS[2], a.sid, 'PX', int(a.access_ttl))
redis.call('SADD', KEYS[3], a.sid)
extend_index(KEYS[3], a.session_ttl)
return {json, revoked}
