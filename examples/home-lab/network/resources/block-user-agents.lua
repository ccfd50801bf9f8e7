-- Refuse requests from crawlers we never want to serve.
-- Matching is a case-insensitive plain substring test on the User-Agent.

local denied_agents = {
  "gptbot",
  "ccbot",
  "bytespider",
  "claudebot",
  "petalbot",
  "semrushbot",
  "ahrefsbot",
}

local function is_denied(agent)
  local ua = string.lower(agent)
  for i = 1, #denied_agents do
    if string.find(ua, denied_agents[i], 1, true) ~= nil then
      return true
    end
  end
  return false
end

function envoy_on_request(handle)
  local agent = handle:headers():get("user-agent")
  if agent == nil or agent == "" then
    return
  end
  if is_denied(agent) then
    handle:respond(
      { [":status"] = "403", ["content-type"] = "text/plain" },
      "forbidden\n"
    )
  end
end
