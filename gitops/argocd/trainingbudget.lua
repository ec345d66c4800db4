-- Argo CD health of a frugal.dev TrainingBudget (docs/gitops.md has the table). Argo CD runs it
-- with gopher-lua and only its base and table libraries: no string functions.
local generation = obj.metadata.generation or 0
local status = obj.status
if status == nil or status.observedGeneration == nil or status.observedGeneration ~= generation then
  return {status = "Progressing", message = "the operator has not observed generation " .. generation .. " yet"}
end

local exhausted = nil
for _, c in ipairs(status.conditions or {}) do
  if c.type == "Exhausted" then
    exhausted = c
  end
end
if exhausted == nil then
  return {status = "Progressing", message = "the operator has not counted the budget's jobs yet"}
end
local message = (exhausted.reason or "") .. ": " .. (exhausted.message or "")
if exhausted.status == "True" and (exhausted.reason == "GpuHoursSpent" or exhausted.reason == "CostSpent") then
  -- this period's GPU-hours or cost are spent: its jobs are stopped or wait for the next period
  return {status = "Degraded", message = message}
end
-- within its limits, or every GPU of spec.maxGpus is held (AllGpusInUse): the budget does its
-- work, and the jobs waiting for GPUs say so themselves
return {status = "Healthy", message = message}
