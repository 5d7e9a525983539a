-- Argo CD health of a kubequant.io RiskPolicy, read from the status the kubequant operator writes
-- (operator/status/policy.py). The API server has accepted the limits (the CRD's schema and rules)
-- once the object exists; the policy is Healthy once the operator has observed its generation and
-- so passed it on to the sessions that use it (the message names them).
-- Written for Argo CD's Lua (gopher-lua, Lua 5.1) without its open libraries: no string or math.
local hs = {}

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubequant operator to take the policy"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubequant operator to observe generation " .. generation
  return hs
end

for _, c in ipairs(obj.status.conditions or {}) do
  if c.type == "InUse" and c.reason == "DeletionBlocked" then
    hs.status = "Progressing"
    hs.message = c.message
    return hs
  end
end

hs.status = "Healthy"
if obj.status.message ~= nil and obj.status.message ~= "" then
  hs.message = obj.status.message
else
  hs.message = "Accepted"
end
return hs
