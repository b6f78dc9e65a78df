-- Cluster mode: writes a new session's data (see new_record) on the node that holds it,
-- stamped on that node's clock (the only one a single-key script can read). Returns the
-- JSON written.
-- KEYS[1] = <prefix>data:<sid>
-- ARGV: create_args (args::CreateArgs; the index, its pruning and the cap are the caller's).
local a = create_args()
local json = record_json(new_record(a, now_ms()))
redis.call('SET', KEYS[1], json, 'PX', int(a.session_ttl))
return json
