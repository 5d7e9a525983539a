-- Argo CD health of a kubequant.io LiveTradingSession, read from the status the kubequant operator
-- writes (operator/status/session.py) from the trading pod and the runtime's report: a trading
-- session is Healthy, a halted or failed one Degraded, one on its way (pod starting, journal
-- recovery, kill switch not yet confirmed) Progressing.
-- Written for Argo CD's Lua (gopher-lua, Lua 5.1) without its open libraries: no string or math.
local hs = {}

local function condition(type_)
  for _, c in ipairs(obj.status.conditions or {}) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function message_of(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if obj.status.message ~= nil and obj.status.message ~= "" then
    return obj.status.message
  end
  return fallback
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubequant operator to take the session"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubequant operator to observe generation " .. generation
  return hs
end

local phase = obj.status.phase
local accepted = condition("Accepted")
if accepted ~= nil and accepted.status == "False" then
  -- Refused (phase Failed) until the spec changes, or waiting (Pending) for its RiskPolicy or account;
  -- the pod's conditions (Halted, Degraded) are then older news.
  hs.status = "Progressing"
  if phase == "Failed" then
    hs.status = "Degraded"
  end
  hs.message = (accepted.reason or "NotAccepted") .. ": " .. message_of(accepted, "the operator does not run the session")
  return hs
end

-- Then halted: the operator's own message says "halted: <reason>" whatever else is wrong.
local halted = condition("Halted")
if halted ~= nil and halted.status == "True" then
  hs.status = "Degraded"
  hs.message = "Halted: " .. message_of(halted, "the runtime is halted")
  if halted.reason ~= nil and halted.reason ~= "Halted" then
    hs.message = "Halted (" .. halted.reason .. "): " .. message_of(halted, "the runtime is halted")
  end
  return hs
end

local degraded = condition("Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = (degraded.reason or "Degraded") .. ": " .. message_of(degraded, "the session is degraded")
  return hs
end

if halted ~= nil and halted.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = message_of(halted, "spec.halted is set; the runtime has not confirmed it")
  return hs
end

local trading = condition("Trading")
if trading ~= nil and trading.status == "True" then
  hs.status = "Healthy"
  if trading.reason == "ReduceOnly" then
    hs.message = "Trading reduce-only"
    if obj.status.haltReason ~= nil and obj.status.haltReason ~= "" then
      hs.message = hs.message .. ": " .. obj.status.haltReason
    end
  else
    hs.message = "Trading"
  end
  return hs
end

if phase == nil or phase == "Pending" or phase == "Reconciling" then
  hs.status = "Progressing"
  hs.message = message_of(condition("Ready"), "Waiting for the trading pod")
elseif phase == "Trading" then
  hs.status = "Healthy"
  hs.message = "Trading"
elseif phase == "Halted" then
  hs.status = "Degraded"
  hs.message = message_of(nil, "the runtime is halted")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message_of(nil, "the session failed")
elseif phase == "Stopped" then
  hs.status = "Suspended"
  hs.message = message_of(nil, "the session is stopped")
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. phase .. " (this health check knows Pending, Reconciling, Trading, Halted, Failed, Stopped)"
end
return hs
