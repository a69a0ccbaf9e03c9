--- The default transport: the C libcurl engine.
--
-- The transport contract (what the executor runs on):
--   t:submit(job) -> true | nil, err    starts job.req (a request) or a GET
--                                       of job.url; nil: refused, nothing sent
--   t:wait(timeout, sink) -> n          waits at most timeout seconds for
--                                       transfers to finish; appends each
--                                       outcome to sink.slow and returns how
--                                       many finished
--   t:outcome(o) -> resp | nil, err     the response or error of an outcome
--   t:sleep(s), t:close(), and t:wake() where another thread may add work
-- A request is {method=, url=, headers={Name=value}, body=, timeout=,
-- connect_timeout=, username=, password=, max_body=, max_url=, insecure=,
-- ca_file=, user_agent=, proxy=, follow=, fresh_connect=}; a response is
-- {status=, body=, raw_headers= (use M.header to read one), seconds=};
-- an err has kind "transport" or "timeout", `sent` (false when the request
-- certainly never left this machine) and `reason`.
--
-- This transport also has the fast path (t:feed, t:fire and sink options
-- in t:wait): plain fires are rendered and started in C, and their 2xx
-- answers become result tables in C (see binding/engine.c).
--
-- t:request(req) runs one request and blocks: the contract of a plain
-- function transport (client's `transport` option).
local core = require "postback.core"
local errors = require "postback.errors"
local util = require "postback.util"

local M = {}
local T = {}
T.__index = T
T.__name = "postback.transport.curl"

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

--- A response header by lowercase name (the raw block is parsed on first use).
function M.header(resp, name)
  local h = resp.headers
  if not h and resp.raw_headers then
    h = M.parse_headers(resp.raw_headers)
    resp.headers = h
  end
  return h and h[name]
end

local NOT_RETRYABLE = { too_large = true, tls = true }

--- The error of a destination the policy refused (nothing was sent).
function M.blocked(url, why)
  local host = util.host_of(url) or "?"
  local addr = type(why) == "string" and why:match("^(%S+) is") or nil
  local net = addr and (addr:find(":", 1, true) and (addr .. "/128") or (addr .. "/32")) or "ADDRESS/32"
  return errors.new("validation", {
    code = "blocked_address", field = "url", host = host, address = addr, retryable = false, sent = false,
    message = ("postback to %s refused: %s (not a global unicast address); allow it with "
      .. "allow_networks = {\"%s\"} or allow_private = true"):format(host, tostring(why), net),
  })
end

--- The error of a request refused before sending: a blocked address, a URL
-- over max_url (code too_long), a URL that must not be requested
-- (invalid_url), or another bad part of the request (no code). code, when
-- the caller knows it; else (the engine's reasons) read from why.
function M.refused(url, why, code)
  if code == "blocked_address" then return M.blocked(url, why) end
  why = tostring(why)
  code = code or why:find("^URL longer than max_url") and "too_long"
    or (why:find("^URL") or why:find("^no URL")) and "invalid_url" or nil
  return errors.new("validation", { code = code, field = code and "url" or nil, retryable = false, sent = false,
    message = "request refused before sending: " .. why })
end

--- The error of a failed transfer.
function M.failure(fail, message, sent, seconds, url)
  if fail == "blocked" then return M.blocked(url, message) end
  return errors.new(fail == "timeout" and "timeout" or "transport", {
    message = message, reason = fail, sent = sent, seconds = seconds,
    retryable = not NOT_RETRYABLE[fail],
  })
end

--- A transport with its own engine (its own connection cache). opts: the
-- request options every GET of t:submit{url=} and t:feed shares (timeout,
-- connect_timeout, max_body, max_url, follow, insecure, ca_file,
-- user_agent, proxy, proxy_from_env, headers), plus concurrency (transfers
-- running at once; more wait in the engine), per_host and max_total
-- (connections).
function M.new(opts)
  util.refuse_in_nginx(2)
  opts = opts or {}
  local e = { max_running = opts.concurrency, max_host = opts.per_host, max_total = opts.max_total,
              destinations = opts.destinations, allow_private = opts.allow_private,
              allow_networks = opts.allow_networks, allow_userinfo = opts.allow_userinfo }
  for _, k in ipairs(core.REQUEST_OPTIONS) do e[k] = opts[k] end
  e.headers = opts.headers
  return setmetatable({ engine = core.engine(e), sink = { slow = {} } }, T)
end

function T:submit(job)
  local ok, why, code
  if job.req then ok, why, code = self.engine:add(job.req, job.tag)
  else ok, why, code = self.engine:get(job.url, job.tag) end
  if ok then return true end
  return nil, M.refused(job.url or job.req.url, why, code)
end

--- Fast path: fires up to n plain items of a source (see engine:feed).
function T:feed(items, i, n, render)
  return self.engine:feed(items, i, n, render)
end

--- Fast path: renders and starts one plain fire (see engine:fire).
function T:fire(target, values, tag, render)
  return self.engine:fire(target, values, tag, render)
end

--- Fast path: starts a GET of an already rendered URL as a plain fire.
function T:fire_url(url, tag)
  return self.engine:get(url, tag, true)
end

function T:wait(timeout, sink)
  self.engine:perform(timeout or 0)
  return self.engine:drain(sink or self.sink)
end

function T:outcome(o)
  if o.fail then return nil, M.failure(o.fail, o.message, o.sent, o.seconds, o.url) end
  return o
end

function T:sleep(s)
  if s > 0 then core.sleep(s) end
end

--- One request, blocking: response, or nil, err.
function T:request(req)
  local tag = (self.last_tag or 0) + 1
  self.last_tag = tag
  local ok, why, code = self.engine:add(req, tag)
  if not ok then return nil, M.refused(req.url, why, code) end
  local sink = { slow = {} }
  while true do
    self.engine:perform(1)
    self.engine:drain(sink)
    for i, o in ipairs(sink.slow) do
      if o.tag == tag then
        table.remove(sink.slow, i)
        return self:outcome(o)
      end
    end
  end
end

function T:close()
  self.engine:close()
end
T.__close = T.close
T.__gc = T.close

return M
