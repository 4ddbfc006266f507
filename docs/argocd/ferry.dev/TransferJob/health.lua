-- Argo CD health of a Ferry TransferJob (ferry.dev/v1alpha1).
-- Reads what kstatus (Flux) reads: observedGeneration, then Stalled / Ready / Reconciling.
-- Failed, refused or stuck: Degraded. Finished: Healthy. Suspended: Suspended.
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
local function is_true(name)
  return conditions[name] ~= nil and conditions[name].status == "True"
end
if is_true("Stalled") then
  hs.status = "Degraded"
  hs.message = says(conditions["Stalled"])
elseif is_true("Reconciling") then
  hs.message = says(conditions["Reconciling"])
  if st.progress ~= nil and st.progress.percent ~= nil then
    hs.message = hs.message .. " (" .. st.progress.percent .. ")"
  end
elseif is_true("Suspended") then
  hs.status = "Suspended"
  hs.message = "Suspended by spec.suspend"
elseif is_true("Ready") then
  hs.status = "Healthy"
  hs.message = says(conditions["Ready"])
end
return hs
