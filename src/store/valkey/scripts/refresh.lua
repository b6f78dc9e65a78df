-- Refreshes the session a refresh token names, atomically: adds an access token (one per
-- tab, see next_tokens) and, with rotation, moves the refresh token on (see refresh_role).
-- KEYS[1] = what names the session: <prefix>data:<sid> for a token that is a sid, else
-- <prefix>refresh:<family hash>; KEYS[2] = <prefix>access:<new hash>
-- ARGV[1] = <prefix>, ARGV[2] = sid ('' for a family token), ARGV[3] = new access token hash,
-- ARGV[4] = session TTL (ms), ARGV[5] = access token TTL (ms), ARGV[6] = '1' when the
-- device facts are replaced by ARGV[7] (User-Agent) and ARGV[8] (IP address), else kept,
-- ARGV[9] = the absolute lifetime since createdAt (ms; 0: none), ARGV[10] = the refreshing
-- tab's previous access token hash ('' when none), ARGV[11] = most access tokens per session,
-- ARGV[12] = the token's family hash ('' for a sid), ARGV[13] = the token's SHA-256,
-- ARGV[14] = the reuse grace (ms), ARGV[15] = with rotation on, the candidate successor's
-- nonce ('' when off), ARGV[16] = its SHA-256, ARGV[17] = its family hash
-- The new token's expiry is Valkey's clock plus its TTL.
-- Returns nil (no session, or not this token's), {'corrupt', reason, sid} (nothing
-- written), {'expired', '', sid} (past its absolute deadline: the session is gone now),
-- {'reuse', '', sid} (an old refresh token: the session is revoked now), or
-- {'ok', new JSON, sid}.
local sid = find_sid(ARGV[1], ARGV[12], ARGV[2])
if not sid then
  return false
end
local data_key = ARGV[1] .. 'data:' .. sid
local raw = redis.call('GET', data_key)
if not raw then
  return false
end
-- Well-formed UTF-8, as the service needs to read the record back: checked before any
-- write, so that an unreadable session is never rotated (a retry would rotate it again).
local function utf8_valid(text)
  if not string.find(text, '[\128-\255]') then
    return true
  end
  local i, n = 1, #text
  while i <= n do
    local c = string.byte(text, i)
    local len
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then len = 3
    elseif c >= 0xF0 and c <= 0xF4 then len = 4
    else return false end
    if i + len - 1 > n then return false end
    for k = i + 1, i + len - 1 do
      local b = string.byte(text, k)
      if b < 0x80 or b > 0xBF then return false end
    end
    local second = string.byte(text, i + 1)
    -- Overlong forms and UTF-16 surrogates are not UTF-8 either.
    if (c == 0xE0 and second < 0xA0) or (c == 0xED and second > 0x9F)
        or (c == 0xF0 and second < 0x90) or (c == 0xF4 and second > 0x8F) then
      return false
    end
    i = i + len
  end
  return true
end
if not utf8_valid(raw) then
  return {'corrupt', 'not UTF-8', sid}
end
local ok, s = pcall(cjson.decode, raw)
if not ok or type(s) ~= 'table' then
  return {'corrupt', 'not a JSON object', sid}
end
-- The same rules the service applies when it reads a session, checked before any write, so
-- that refresh never revives data that validation would refuse.
if s.sid ~= sid or type(s.did) ~= 'string' or type(s.handle) ~= 'string'
    or type(s.accessTokenHash) ~= 'string' or not epoch_ms(s.accessTokenExpiresAt)
    or not epoch_ms(s.createdAt)
    or (s.refreshedAt ~= nil and not epoch_ms(s.refreshedAt))
    or (s.userAgent ~= nil and type(s.userAgent) ~= 'string')
    or (s.ipAddress ~= nil and type(s.ipAddress) ~= 'string')
    or not tokens_readable(s.accessTokens) or not rotation_readable(s) then
  return {'corrupt', 'missing or mistyped fields', sid}
end
local now = now_ms()
local role = refresh_role(s, ARGV[12], ARGV[13], now, tonumber(ARGV[14]))
if role == 'foreign' then
  return false
end
if role == 'reuse' then
  -- An old refresh token: stolen, or a tab far behind. The whole session ends now.
  revoke_session(ARGV[1], sid)
  return {'reuse', '', sid}
end
local session_ttl, access_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local max = tonumber(ARGV[9])
if max > 0 then
  local left = s.createdAt + max - now
  if left <= 0 then
    -- Past its absolute deadline: the session ends now, whatever its sliding TTL says.
    revoke_session(ARGV[1], sid)
    return {'expired', '', sid}
  end
  -- Neither the data nor the new token outlives the deadline.
  session_ttl, access_ttl = math.min(session_ttl, left), math.min(access_ttl, left)
end
local user_agent, ip_address = s.userAgent, s.ipAddress
if ARGV[6] == '1' then
  user_agent, ip_address = ARGV[7], ARGV[8]
end
-- The tab's previous token, expired ones and any past the cap stop validating now, not
-- when their keys would have expired; the session's other tokens stay.
local tokens, removed = next_tokens(s, ARGV[10], tonumber(ARGV[11]), now)
for _, hash in ipairs(removed) do
  redis.call('DEL', ARGV[1] .. 'access:' .. hash)
end
-- Rotation: the current token moves on to the candidate (a session id gets a family); one
-- rotated away from within the grace gets the successor the session already has (the
-- service derives it along the nonces the record keeps).
local rotation = rotation_of(s)
if role == 'current' and ARGV[15] ~= '' then
  rotation = rotate(rotation, ARGV[17], ARGV[13], ARGV[16], ARGV[15], now, tonumber(ARGV[14]))
end
local json = session_json(s.sid, s.did, s.handle, ARGV[3], now + access_ttl,
  s.createdAt, now, user_agent, ip_address, tokens, rotation)
redis.call('SET', data_key, json, 'PX', string.format('%.0f', session_ttl))
redis.call('SET', KEYS[2], sid, 'PX', string.format('%.0f', access_ttl))
if rotation then
  -- The family key lives as long as the session it names.
  redis.call('SET', ARGV[1] .. 'refresh:' .. rotation.family, sid, 'PX',
    string.format('%.0f', session_ttl))
end
-- Sliding window for the index too (only ever extended, as in create.lua); SADD heals an
-- index that lost this member.
local index = ARGV[1] .. 'did:' .. s.did
redis.call('SADD', index, sid)
if redis.call('PTTL', index) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', index, ARGV[4])
end
return {'ok', json, sid}
