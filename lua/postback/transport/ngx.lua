--- A non-blocking transport for OpenResty / ngx_http_lua: HTTP/1.1 on
-- ngx.socket.tcp cosockets, so the API client, firing and the dispatcher
-- never block an nginx worker.
--
-- postback picks it by itself inside a request, timer or ssl handler (see
-- postback.util.in_nginx); it can also be given: `transport = require
-- "postback.transport.ngx"`.
--
-- The executor's contract (see postback.transport.curl): submit(job) puts
-- the job in a queue drained by a fixed pool of light threads (as many as
-- the concurrency, spawned by the coroutine that runs the executor), each
-- doing one request at a time on a shared keep-alive pool; wait(timeout)
-- waits on a semaphore for their outcomes; wake() lets another coroutine
-- (a request handler calling d:fire) wake the executor's loop.
--
-- Requests: Content-Length, chunked and read-until-close bodies; a
-- keep-alive pool (setkeepalive); TLS with certificate verification
-- (sslhandshake; give nginx `lua_ssl_trusted_certificate`); connect, send
-- and read timeouts; a response size cap; the same request checks as the C
-- engine (only http and https, bounded sizes, no CR, LF or NUL).
local core = require "postback.core"
local errors = require "postback.errors"
local util = require "postback.util"

local M = {}
M.__index = M

local DEFAULT_MAX_BODY = 16 * 1024 * 1024
local POOL_SIZE = 64
local IDLE_MS = 60000

--- true when called where cosockets may yield (a request or timer handler).
M.available = util.in_nginx

local function parse_url(url)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil end
  scheme = scheme:lower()
  local authority, path = rest:match("^([^/?#]*)(.*)$")
  path = path:gsub("#.*$", "")
  if path == "" or path:sub(1, 1) == "?" then path = "/" .. path end
  local hostport = authority:match("@([^@]*)$") or authority
  local host, port = hostport:match("^%[([^%]]+)%]:?(%d*)$")
  if not host then host, port = hostport:match("^([^:]+):?(%d*)$") end
  if not host then return nil end
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  return scheme, host, port, path, hostport
end

local function fail(kind, message, sent, reason)
  return nil, errors.new(kind, { message = message, sent = sent, reason = reason,
    retryable = kind ~= "validation" and reason ~= "too_large" and reason ~= "tls" })
end

--- A transport object. opts: the request options every GET of submit{url=}
-- shares (timeout, connect_timeout, max_body, max_url, insecure, ca_file,
-- user_agent, headers), concurrency (light threads; default 16), pool_size
-- (keep-alive connections per host, default 64) and idle_timeout (seconds).
function M.new(opts)
  opts = opts or {}
  local profile = {}
  for _, k in ipairs(core.REQUEST_OPTIONS) do profile[k] = opts[k] end
  profile.headers = opts.headers
  return setmetatable({ pool_size = opts.pool_size or POOL_SIZE,
                        idle_ms = (opts.idle_timeout or IDLE_MS / 1000) * 1000,
                        profile = profile, threads_max = opts.concurrency or 16,
                        queue = {}, qhead = 1, qtail = 0, done = {}, threads = {} }, M)
end

local function read_body(sock, headers, max)
  local te = headers["transfer-encoding"]
  if te and te:lower():find("chunked", 1, true) then
    local parts, total = {}, 0
    while true do
      local line, err = sock:receive("*l")
      if not line then return nil, err end
      local size = tonumber(line:match("^%s*(%x+)"), 16)
      if not size then return nil, "bad chunk size" end
      if size == 0 then
        -- trailers, up to the blank line
        repeat
          local t, terr = sock:receive("*l")
          if not t then return nil, terr end
        until t == ""
        return table.concat(parts)
      end
      total = total + size
      if total > max then return nil, "too_large" end
      local data, derr = sock:receive(size)
      if not data then return nil, derr end
      parts[#parts + 1] = data
      local crlf, cerr = sock:receive(2)
      if not crlf then return nil, cerr end
    end
  end
  local len = tonumber(headers["content-length"])
  if len then
    if len > max then return nil, "too_large" end
    if len == 0 then return "" end
    return sock:receive(len)
  end
  -- no length: read until the server closes
  local data, err, partial = sock:receive("*a")
  if not data then return nil, err end
  if #data > max then return nil, "too_large" end
  return data, nil, partial
end

--- One request (see postback.transport.curl for the shapes): resp or nil, err.
function M:request(req)
  local method, url = req.method or "GET", req.url
  if not method:match("^%u+$") then return fail("validation", "invalid method", false) end
  local max_url = req.max_url or 16384
  if type(url) ~= "string" then return fail("validation", "request refused before sending: no URL", false) end
  if #url > max_url then
    return fail("validation", ("request refused before sending: URL longer than max_url (%d bytes)"):format(max_url), false)
  end
  local ok, why = core.check_url(url)
  if not ok then return fail("validation", "request refused before sending: URL " .. why, false) end
  local bad_headers = util.check_headers(req.headers)
  if bad_headers then return nil, bad_headers end
  local scheme, host, port, path, hostport = parse_url(url)
  if not scheme then return fail("validation", "request refused before sending: bad URL", false) end

  local lines = { ("%s %s HTTP/1.1"):format(method, path), "Host: " .. hostport }
  local has = {}
  for name, value in pairs(req.headers or {}) do
    if type(name) == "number" then name, value = value:match("^([^:]+):%s*(.*)$") end
    value = tostring(value)
    if not name or name:find("[%c%s:]") or value:find("[\r\n%z]") then
      return fail("validation", "request refused before sending: invalid header", false)
    end
    has[name:lower()] = true
    lines[#lines + 1] = name .. ": " .. value
  end
  if req.username then
    local cred = req.username .. ":" .. (req.password or "")
    if cred:find("[\r\n%z]") then return fail("validation", "credentials contain CR, LF or NUL", false) end
    lines[#lines + 1] = "Authorization: Basic " .. ngx.encode_base64(cred)
  end
  if req.user_agent and not has["user-agent"] then
    if req.user_agent:find("[\r\n%z]") then return fail("validation", "user agent contains CR, LF or NUL", false) end
    lines[#lines + 1] = "User-Agent: " .. req.user_agent
  end
  local body = req.body
  if body or method == "POST" or method == "PUT" then
    lines[#lines + 1] = "Content-Length: " .. #(body or "")
  end
  lines[#lines + 1] = "Connection: keep-alive"
  local head = table.concat(lines, "\r\n") .. "\r\n\r\n"

  local timeout_ms = (req.timeout or 30) * 1000
  local connect_ms = (req.connect_timeout or math.min(req.timeout or 10, 10)) * 1000
  local sock = ngx.socket.tcp()
  sock:settimeouts(connect_ms, timeout_ms, timeout_ms)
  local pool = ("postback:%s:%s:%d:%s"):format(scheme, host, port, req.insecure and "i" or "v")
  local cok, cerr = sock:connect(host, port, { pool = pool })
  if not cok then
    local kind = cerr == "timeout" and "timeout" or "transport"
    return fail(kind, ("connect to %s:%d failed: %s"):format(host, port, tostring(cerr)), false, "connect")
  end
  if scheme == "https" and sock:getreusedtimes() == 0 then
    local hok, herr = sock:sslhandshake(nil, host, not req.insecure)
    if not hok then
      sock:close()
      return fail("transport", "TLS handshake with " .. host .. " failed: " .. tostring(herr), true, "tls")
    end
  end
  local sent, serr = sock:send(body and (head .. body) or head)
  if not sent then
    sock:close()
    return fail(serr == "timeout" and "timeout" or "transport", "send failed: " .. tostring(serr), true, "transport")
  end

  local status_line, rerr = sock:receive("*l")
  if not status_line then
    sock:close()
    return fail(rerr == "timeout" and "timeout" or "transport", "no answer: " .. tostring(rerr), true, "transport")
  end
  local status = tonumber(status_line:match("^HTTP/%d%.%d (%d%d%d)"))
  if not status then
    sock:close()
    return fail("transport", "not an HTTP answer", true, "transport")
  end
  local headers = {}
  while true do
    local line, herr = sock:receive("*l")
    if not line then
      sock:close()
      return fail(herr == "timeout" and "timeout" or "transport", "headers cut short: " .. tostring(herr), true, "transport")
    end
    if line == "" then break end
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then
      name = name:lower()
      headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
    end
  end

  local data, berr
  if method == "HEAD" or status == 204 or status == 304 or (status >= 100 and status < 200) then
    data = ""
  else
    data, berr = read_body(sock, headers, req.max_body or DEFAULT_MAX_BODY)
  end
  if not data then
    sock:close()
    if berr == "too_large" then
      return fail("transport", "answer larger than the response size cap", true, "too_large")
    end
    return fail(berr == "timeout" and "timeout" or "transport", "body cut short: " .. tostring(berr), true, "transport")
  end
  local conn = (headers["connection"] or ""):lower()
  if conn:find("close", 1, true) or not (headers["content-length"] or headers["transfer-encoding"]) then
    sock:close()
  else
    sock:setkeepalive(self.idle_ms, self.pool_size)
  end
  return { status = status, headers = headers, body = data }
end

-- ---- the executor's contract ------------------------------------------------

local semaphore

local function sema()
  semaphore = semaphore or require "ngx.semaphore"
  return semaphore.new(0)
end

-- The request of a url-only job: the profile with its URL.
function M:profile_request(url)
  local req = {}
  for k, v in pairs(self.profile) do req[k] = v end
  req.method, req.url = "GET", url
  return req
end

local function worker(self)
  while not self.closed do
    local job
    if self.qhead <= self.qtail then
      job = self.queue[self.qhead]
      self.queue[self.qhead] = nil
      self.qhead = self.qhead + 1
    end
    if job then
      local t0 = ngx.now()
      local ok, resp, err = pcall(self.request, self, job.req or self:profile_request(job.url))
      if not ok then
        resp, err = nil, errors.new("transport", { message = "request raised: " .. tostring(resp) })
      end
      if resp then resp.seconds = ngx.now() - t0 end
      self.done[#self.done + 1] = { tag = job.tag, resp = resp, err = err }
      self.events:post(1)
    else
      self.idle = self.idle + 1
      self.work:wait(1)
      self.idle = self.idle - 1
    end
  end
end

function M:submit(job)
  if not self.events then
    self.events, self.work, self.idle = sema(), sema(), 0
  end
  self.qtail = self.qtail + 1
  self.queue[self.qtail] = job
  if self.idle > 0 then
    self.work:post(1)
  elseif #self.threads < self.threads_max then
    self.threads[#self.threads + 1] = ngx.thread.spawn(worker, self)
  end
  return true
end

function M:wait(timeout, sink)
  if #self.done == 0 and timeout and timeout > 0 and self.events then
    self.events:wait(timeout)
  end
  local n = #self.done
  for i = 1, n do
    sink.slow[#sink.slow + 1] = self.done[i]
    self.done[i] = nil
  end
  return n
end

function M.outcome(_, o)
  return o.resp, o.err
end

--- Wakes a wait (another coroutine queued work).
function M:wake()
  if self.events then self.events:post(1) end
end

function M:sleep(s)
  if s <= 0 then return end
  if self.events then self.events:wait(s) else ngx.sleep(s) end
end

function M:close()
  if self.closed then return end
  self.closed = true
  for _, th in ipairs(self.threads) do ngx.thread.kill(th) end
  self.threads = {}
end

return M
