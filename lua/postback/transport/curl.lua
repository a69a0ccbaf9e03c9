--- The default transport: the C libcurl engine (blocking calls).
--
-- A transport turns a request table into a response table:
--   request  {method=, url=, headers={Name=value}, body=, timeout=,
--             connect_timeout=, username=, password=, max_body=,
--             insecure=, ca_file=, user_agent=}
--   response {status=, headers={lowercase-name=value}, body=}
--   or nil, err (kind "transport" or "timeout", err.sent = false when the
--   request certainly never left this machine, err.reason = why)
-- Any function(req) with that contract can stand in (see client's `transport`).
local core = require "postback.core"
local errors = require "postback.errors"

local unpack = table.unpack or unpack

local M = {}
M.__index = M

--- Parses a raw header block into a table of lowercase names.
function M.parse_headers(raw)
  local h = {}
  for name, value in raw:gmatch("([^%s:]+):[ \t]*([^\r\n]*)") do
    name = name:lower()
    value = value:gsub("%s+$", "")
    if h[name] then h[name] = h[name] .. ", " .. value else h[name] = value end
  end
  return h
end

--- A response header by lowercase name, parsing the raw block on first use.
function M.header(resp, name)
  local h = resp.headers
  if not h and resp.raw_headers then
    h = M.parse_headers(resp.raw_headers)
    resp.headers = h
  end
  return h and h[name]
end

--- Turns one finished transfer (as engine:next returns it) into response or nil, err.
-- The response's headers are parsed on first use (see M.header).
function M.result(status, body, raw_headers, fail, message, seconds, sent)
  if fail then
    return nil, errors.new(fail == "timeout" and "timeout" or "transport", {
      message = message,
      reason = fail,
      sent = sent,
      retryable = fail ~= "too_large" and fail ~= "tls" and fail ~= "cancelled",
      seconds = seconds,
    })
  end
  return { status = status, body = body, raw_headers = raw_headers, seconds = seconds }
end

--- A new transport with its own engine (its own connection cache).
function M.new(opts)
  require("postback.pump").refuse_in_nginx()
  opts = opts or {}
  local self = setmetatable({}, M)
  self.engine = core.engine { max_host = opts.max_host, max_total = opts.max_total }
  self.stash = {} -- results of other transfers seen while waiting for ours
  return self
end

--- Starts a request without waiting; returns a tag, or nil, err (nothing sent).
function M:start(req)
  local tag, why = self.engine:add(req)
  if not tag then
    return nil, errors.new("validation", { message = "request refused before sending: " .. why })
  end
  return tag
end

--- Blocking request: response or nil, err.
function M:request(req)
  local tag, err = self:start(req)
  if not tag then return nil, err end
  local engine = self.engine
  while true do
    local stashed = self.stash[tag]
    if stashed then
      self.stash[tag] = nil
      return M.result(unpack(stashed, 1, 7))
    end
    engine:perform(1)
    while true do
      local t, status, body, raw, fail, message, seconds, sent = engine:next(true)
      if not t then break end
      if t == tag then return M.result(status, body, raw, fail, message, seconds, sent) end
      self.stash[t] = { status, body, raw, fail, message, seconds, sent }
    end
  end
end

function M:close()
  self.engine:close()
end

return M
