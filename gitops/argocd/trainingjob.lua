-- Argo CD health of a frugal.dev TrainingJob (docs/gitops.md has the table). Argo CD runs it with
-- gopher-lua and only its base and table libraries: no string functions. The order matters: a
-- status the operator has not written for this generation says nothing yet, a failure outranks
-- everything else, and a job that waits for a person or for time is Suspended, not Progressing.
local function condition(status, name)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == name then
      return c
    end
  end
  return nil
end

local function holds(status, name)
  local c = condition(status, name)
  return c ~= nil and c.status == "True"
end

-- "Reason: message", from the condition that says why.
local function why(c)
  if c == nil then
    return ""
  end
  if c.reason == nil or c.reason == "" then
    return c.message or ""
  end
  return c.reason .. ": " .. (c.message or "")
end

local generation = obj.metadata.generation or 0
local status = obj.status
if status == nil or status.observedGeneration == nil or status.observedGeneration ~= generation then
  return {status = "Progressing", message = "the operator has not observed generation " .. generation .. " yet"}
end

-- a failed job: its training (BackoffLimitExceeded, DeadlineExceeded, ConfigurationError), or a
-- spec that cannot work (InvalidSpec, BudgetTooSmall, RejectedByApiServer, ...)
if holds(status, "Failed") then
  return {status = "Degraded", message = why(condition(status, "Failed"))}
end
-- the watchdog is replacing an attempt that made no progress
if holds(status, "Stalled") then
  return {status = "Degraded", message = why(condition(status, "Stalled"))}
end
-- it trains, or trained, on a loss that is not a number
if holds(status, "NonFiniteLoss") then
  return {status = "Degraded", message = why(condition(status, "NonFiniteLoss"))}
end

local phase = status.phase
-- every condition the operator writes for a pass carries its reason and message; Ready always
-- exists
local ready = condition(status, "Ready")
local reason = ready ~= nil and ready.reason or ""
if phase == "Suspended" then
  -- runPolicy.suspend: as asked, or its pods are still stopping (Suspending)
  return {status = "Suspended", message = why(ready)}
end
if reason == "BudgetExhausted" then
  -- it waits for a limit to be raised, its budget's next period, or its budget's GPUs: Queued,
  -- or Running or Pending while its attempt is stopped for it
  return {status = "Suspended", message = why(ready)}
end
if phase == "Running" then
  if reason == "DeadlineExceeded" then
    -- stopping the attempt because runPolicy.activeDeadlineSeconds passed: it fails next
    return {status = "Degraded", message = why(ready)}
  end
  -- a batch job is healthy while it trains, as Ready=True says; it need not finish first
  return {status = "Healthy", message = why(ready)}
end
if phase == "Succeeded" then
  return {status = "Healthy", message = why(ready)}
end
if phase == "Pending" or phase == "Queued" then
  -- being created, restarting, its pods starting (or not: Unschedulable, ImagePullFailed, ...
  -- until runPolicy.startupDeadlineSeconds), waiting for its checkpoint claim, a missing budget
  -- or its Kueue queue
  return {status = "Progressing", message = why(ready)}
end
if phase == "Failed" then
  return {status = "Degraded", message = why(ready)}
end
return {status = "Unknown", message = "phase " .. (phase or "(none)") .. " is not one this script knows"}
