-- Cluster mode: gives one session its new handle (UpdateHandle), a single-key script: see
-- rename_session.
-- KEYS[1] = <prefix>data:<sid>
-- ARGV: handle_args (args::HandleArgs; its sid the one KEYS[1] names).
-- Returns 1 when it is a readable session of the DID (it carries the handle now), else 0.
local a = handle_args()
if rename_session(KEYS[1], a.sid, a.did, a.handle) then
  return 1
end
return 0
