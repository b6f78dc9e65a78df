-- Stores a new session atomically; with a cap, first revokes the DID's least recently
-- refreshed sessions so that no more than the cap stay live, the new one included.
-- KEYS[1] = <prefix>data:<sid>, KEYS[2] = <prefix>access:<hash>, KEYS[3] = <prefix>did:<did>
-- ARGV[1] = did, ARGV[2] = sid, ARGV[3] = session TTL (ms),
-- ARGV[4] = access token TTL (ms), ARGV[5] = <prefix>data:, ARGV[6] = prune sample size,
-- ARGV[7] = handle, ARGV[8] = access token hash, ARGV[9] = User-Agent, ARGV[10] = IP
-- address (both may be empty), ARGV[11] = <prefix>, ARGV[12] = most sessions per DID (0: no cap),
-- ARGV[13] = with rotation on, the SHA-256 of the refresh token's family ('' when off),
-- ARGV[14] = the SHA-256 of the refresh token;
-- KEYS[4] = <prefix>refresh:<family hash> (only with rotation on)
-- Returns {the session JSON written (createdAt and accessTokenExpiresAt on Valkey's clock),
-- how many sessions the cap revoked}.
local cap = tonumber(ARGV[12])
local revoked = 0
if cap > 0 and redis.call('SCARD', KEYS[3]) >= cap then
  -- The new session may not fit: every member is read, the dead ones leave the index (a
  -- full prune), and the least recently refreshed live ones are revoked until it fits.
  -- (Below the cap nothing is read, and no sampled pruning is needed: the index never
  -- grows past the cap before this pass prunes it.)
  local live = {}
  for _, member in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    local raw = redis.call('GET', ARGV[5] .. member)
    local s = raw and decode_session(raw)
    if not raw or (s and s.did ~= ARGV[1]) then
      -- Gone, or another DID's (a foreign writer): it leaves this index, nothing else.
      redis.call('SREM', KEYS[3], member)
    else
      -- Last refreshed, or created for a session the TypeScript code wrote (it has no
      -- refreshedAt); an unreadable record can never be used again and goes first.
      local at = -1
      if s and type(s.refreshedAt) == 'number' then
        at = s.refreshedAt
      elseif s and type(s.createdAt) == 'number' then
        at = s.createdAt
      end
      live[#live + 1] = {at, member}
    end
  end
  local excess = #live - (cap - 1)
  if excess > 0 then
    -- Oldest first; the sid breaks a tie, as in the other stores.
    table.sort(live, function(a, b)
      if a[1] ~= b[1] then
        return a[1] < b[1]
      end
      return a[2] < b[2]
    end)
    for i = 1, excess do
      if revoke_session(ARGV[11], live[i][2]) then
        revoked = revoked + 1
      end
      -- An unreadable record names no index for revoke_session: it leaves this one here.
      redis.call('SREM', KEYS[3], live[i][2])
    end
  end
elseif cap == 0 then
  -- Without a cap, a bounded random sample of the DID index is pruned: members whose data
  -- expired are removed, so a user who logs in daily for years keeps an index the size of
  -- their live sessions (SRANDMEMBER with a positive count returns distinct members).
  local sample = redis.call('SRANDMEMBER', KEYS[3], tonumber(ARGV[6]))
  for _, member in ipairs(sample) do
    if redis.call('EXISTS', ARGV[5] .. member) == 0 then
      redis.call('SREM', KEYS[3], member)
    end
  end
end
local now = now_ms()
local rotation = nil
if ARGV[13] ~= '' then
  rotation = {family = ARGV[13], hash = ARGV[14]}
end
local json = session_json(ARGV[2], ARGV[1], ARGV[7], ARGV[8], now + tonumber(ARGV[4]), now,
  now, ARGV[9], ARGV[10], nil, rotation)
redis.call('SET', KEYS[1], json, 'PX', ARGV[3])
if rotation then
  redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[3])
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
redis.call('SADD', KEYS[3], ARGV[2])
-- Only ever extend the index TTL: it must outlive every session it lists, including ones
-- written with a longer TTL (by an earlier configuration or by the TypeScript AppView).
if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
return {json, revoked}
