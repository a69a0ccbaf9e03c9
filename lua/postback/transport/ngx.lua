--- A non-blocking transport for OpenResty / ngx_http_lua: HTTP/1.1 on
-- ngx.socket.tcp cosockets, so the API client and firing never block an
-- nginx worker.
--
--   local postback = require "postback"
--   local c = postback.client { network = "n", api_key = k,
--                               transport = require "postback.transport.ngx" }
--   postback.fire_many(items, { transport = require "postback.transport.ngx" })
--
-- Features: Content-Length, chunked and read-until-close bodies; a keep-alive
-- pool (setkeepalive); TLS with certificate verification (sslhandshake; give
-- nginx `lua_ssl_trusted_certificate`); connect, send and read timeouts; a
-- response size cap; the same request checks as the C engine (only http and
-- https, no CR, LF or NUL in the method, URL or headers).
--
-- The blocking C engine must not be used inside a request handler: postback
-- checks `ngx.get_phase()` and refuses with an error that names this module.
local core = require "postback.core"
local errors = require "postback.errors"

local M = {}
M.__index = M

local DEFAULT_MAX_BODY = 16 * 1024 * 1024
local POOL_SIZE = 64
local IDLE_MS = 60000

--- true when called where cosockets may yield (a request or timer handler).
function M.available()
  if type(ngx) ~= "table" or not ngx.socket or not ngx.get_phase then return false end
  local phase = ngx.get_phase()
  return phase == "rewrite" or phase == "access" or phase == "content" or phase == "timer"
    or phase == "ssl_cert" or phase == "ssl_session_fetch"
end

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
    retryable = reason ~= "too_large" and reason ~= "tls" })
end

--- A transport object; opts.pool_size, opts.idle_timeout (seconds).
function M.new(opts)
  opts = opts or {}
  return setmetatable({ pool_size = opts.pool_size or POOL_SIZE,
                        idle_ms = (opts.idle_timeout or IDLE_MS / 1000) * 1000 }, M)
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
  local ok, why = core.check_url(url)
  if not ok then return fail("validation", "request refused before sending: URL " .. why, false) end
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

--- Fires many postbacks from light threads (ngx.thread.spawn), with the
-- same options and results as postback.fire_many: concurrency bounds the
-- threads; retries, backoff (ngx.sleep) and ok_status/ok_body as usual.
function M.fire_many(items, opts)
  local fire = require "postback.fire"
  local o = fire.options(opts, 2, "fire_many")
  local transport = M.new()
  local results = o.on_result == nil and {} or nil
  local count = 0
  local it = type(items)
  local len = it == "table" and #items or math.huge
  local cache = setmetatable({}, { __mode = "v" })

  local function next_item()
    if count >= len then return nil end
    local item
    if it == "table" then item = items[count + 1] else item = items() end
    if item == nil then return nil end
    count = count + 1
    return item, count
  end

  local function deliver(r, i)
    if results then results[i] = r end
    if o.on_result then o.on_result(r, i) end
  end

  local function one(item, i)
    local target, values, headers = item, nil, nil
    if type(item) == "table" and item.code == nil and (item.url or item.values) then
      target, values, headers = item.url, item.values, item.headers
    end
    local url, err = fire.render_target(target, values, o, cache)
    if not url then return deliver({ ok = false, attempts = 0, time = 0, error = err }, i) end
    local merged = {}
    for k, v in pairs(o.headers or {}) do merged[k] = v end
    for k, v in pairs(headers or {}) do merged[k] = v end
    local req = { method = "GET", url = url, headers = merged, timeout = o.timeout,
                  connect_timeout = o.connect_timeout, max_body = o.max_body,
                  insecure = o.insecure, user_agent = o.user_agent }
    local job = { url = url, attempts = 0 }
    while true do
      job.attempts = job.attempts + 1
      local t0 = ngx.now()
      local resp, terr = transport:request(req)
      local r, again
      if resp then
        local raw = {}
        for k, v in pairs(resp.headers) do raw[#raw + 1] = k .. ": " .. v end
        r, again = fire.judge(o, job, resp.status, resp.body, table.concat(raw, "\r\n"), nil, nil, ngx.now() - t0, true)
      else
        local reason = terr.reason or (terr.kind == "timeout" and "timeout") or "transport"
        if terr.kind == "validation" then reason = "refused" end
        r, again = fire.judge(o, job, 0, "", "", reason, terr.message, ngx.now() - t0, terr.sent)
      end
      local delay = again and fire.retry_delay(o, job, r)
      if not delay then return deliver(r, i) end
      ngx.sleep(delay)
    end
  end

  local function worker()
    while true do
      local item, i = next_item()
      if item == nil then return end
      one(item, i)
    end
  end

  local threads = {}
  for k = 1, o.concurrency do threads[k] = ngx.thread.spawn(worker) end
  for k = 1, #threads do
    local ok, err = ngx.thread.wait(threads[k])
    if not ok then error(err, 0) end
  end
  if results then return results end
  return count
end

return M
