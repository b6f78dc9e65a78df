-- Cluster mode: reads a session's data with the clock of the node that holds it, so that
-- expiry is judged on a Valkey clock, not on that of whichever replica of the service asks.
-- KEYS[1] = <prefix>data:<sid>
-- Returns nil, or {session JSON, seconds, microseconds, the key's PTTL (-1: no expiry)}.
local data = redis.call('GET', KEYS[1])
if not data then
  return false
end
local now = redis.call('TIME')
return {data, now[1], now[2], redis.call('PTTL', KEYS[1])}
