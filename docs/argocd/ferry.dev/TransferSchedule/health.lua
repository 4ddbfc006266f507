-- Argo CD health of a Ferry TransferSchedule (ferry.dev/v1alpha1).
-- Reads what kstatus (Flux) reads: observedGeneration, then Stalled / Ready.
-- Its latest finished run failed, or its spec is refused: Degraded. Suspended: Suspended.
local hs = { status = "Progressing", message = "Waiting for the Ferry operator" }
local st = obj.status
if st == nil then
  return hs
end
if obj.metadata.generation ~= nil and st.observedGeneration ~= nil
    and st.observedGeneration ~= obj.metadata.generation then
  hs.message = "The Ferry operator has not acted on the latest spec yet"
  return hs
end
local conditions = {}
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type ~= nil then
      conditions[c.type] = c
    end
  end
end
local function says(c)
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    if text ~= "" then
      text = text .. ": "
    end
    text = text .. c.message
  end
  return text
end
local stalled = conditions["Stalled"]
local ready = conditions["Ready"]
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = says(stalled)
elseif obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Suspended by spec.suspend"
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = says(ready)
end
return hs
