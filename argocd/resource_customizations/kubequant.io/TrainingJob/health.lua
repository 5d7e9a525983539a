-- Argo CD health of a kubequant.io TrainingJob, read from the status the kubequant operator writes
-- (operator/status/training.py): the conditions decide, the phase is the fallback.
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
  hs.message = "Waiting for the kubequant operator to take the training job"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubequant operator to observe generation " .. generation
  return hs
end

local failed = condition("Failed")
if failed ~= nil and failed.status == "True" then
  hs.status = "Degraded"
  hs.message = (failed.reason or "Failed") .. ": " .. message_of(failed, "the training failed")
  return hs
end

local succeeded = condition("Succeeded")
if succeeded ~= nil and succeeded.status == "True" then
  hs.status = "Healthy"
  hs.message = message_of(succeeded, "the training finished")
  return hs
end

local phase = obj.status.phase
if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = message_of(nil, "the training is suspended")
elseif phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = message_of(nil, "the training finished")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message_of(nil, "the training failed")
elseif phase == nil or phase == "Pending" or phase == "Running" then
  hs.status = "Progressing"
  hs.message = message_of(condition("Running"), "Waiting for the training to run")
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. phase .. " (this health check knows Pending, Running, Succeeded, Failed, Suspended)"
end
return hs
