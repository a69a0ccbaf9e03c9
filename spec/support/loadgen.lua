-- A small HTTP load generator that knows what happened to every request:
-- N clients (one connection each, kept alive), select-based, in one process.
--
--   luajit spec/support/loadgen.lua --port P --path "/conversion?offer_id=1&click_id=c{i}"
--          [--total 3000] [--clients 32] [--out FILE] [--hup-at N --hup-pid PID]
--          [--close] [--timeout 30] [--rate R]
--
-- {i} in the path is the request's number (1..total). Each request ends in
-- an HTTP status or in "noanswer" (the connection failed, was reset or
-- closed before a whole answer, or the timeout passed). One exception, as
-- every HTTP client does it: a request sent on a kept-alive connection that
-- the server closed before a single byte of answer (nginx closes idle
-- connections when it reloads; the request was never read) is sent again on
-- a new connection and counted in `resent`. --close sends
-- "Connection: close" (one connection per request). --rate R paces the
-- requests: number n is not sent before R/s would send it.
--
-- With --hup-at N, once N requests are answered it runs `kill -HUP PID`.
-- Prints one JSON line: {total, seconds, rate, status = {["202"] = n, ...},
-- noanswer, resent, retry_after (answers 429 or 503 with a Retry-After
-- header), errors = {reason = n}}; --out FILE gets "i status" lines.
local socket = require "socket"

local o = { total = 3000, clients = 32, timeout = 30, host = "127.0.0.1" }
local i = 1
while arg[i] do
  local k, v = arg[i]:match("^%-%-([%w-]+)$"), arg[i + 1]
  if k == "close" then
    o.close = true
    i = i + 1
  elseif k then
    o[k:gsub("-", "_")] = tonumber(v) or v
    i = i + 2
  else
    error("unknown argument " .. arg[i])
  end
end
assert(o.port and o.path, "--port and --path are needed")

local results = {}        -- i -> status number or "noanswer"
local next_i, answered = 1, 0
local status_count, errors_count = {}, {}
local resent, noanswer, retry_after = 0, 0, 0
local hup_done = false

local function record(n, status, why)
  results[n] = status
  answered = answered + 1
  if status == "noanswer" then
    noanswer = noanswer + 1
    errors_count[why] = (errors_count[why] or 0) + 1
  else
    status_count[tostring(status)] = (status_count[tostring(status)] or 0) + 1
  end
  if o.hup_at and not hup_done and answered >= o.hup_at then
    hup_done = true
    os.execute("kill -HUP " .. tostring(o.hup_pid))
  end
end

-- ---- a client: a coroutine that yields ("r"|"w", sock) to wait -------------------

local function wait(kind, sock) coroutine.yield(kind, sock) end

local t0 = socket.gettime()

local function connect()
  local s = socket.tcp()
  s:settimeout(0)
  local ok, err = s:connect(o.host, o.port)
  if not ok and err == "timeout" then
    wait("w", s)
    ok, err = s:connect(o.host, o.port)
    if not ok and err == "already connected" then ok = true end
  end
  if not ok then
    s:close()
    return nil, "connect: " .. tostring(err)
  end
  return s
end

local function send_all(s, data)
  local pos = 1
  while pos <= #data do
    local last, err, partial = s:send(data, pos)
    if last then
      pos = last + 1
    elseif err == "timeout" then
      pos = (partial or pos - 1) + 1
      wait("w", s)
    else
      return nil, err
    end
  end
  return true
end

-- A reader over a non-blocking socket.
local function reader(s)
  local buf, got = "", 0
  local r = {}
  local function fill()
    local data, err, partial = s:receive(65536)
    data = data or partial
    if data and #data > 0 then
      buf = buf .. data
      got = got + #data
      return true
    end
    if err == "timeout" then
      wait("r", s)
      return true
    end
    return nil, err
  end
  function r.line()
    while true do
      local e = buf:find("\n", 1, true)
      if e then
        local line = buf:sub(1, e - 1):gsub("\r$", "")
        buf = buf:sub(e + 1)
        return line
      end
      local ok, err = fill()
      if not ok then return nil, err end
    end
  end
  function r.bytes(n)
    while #buf < n do
      local ok, err = fill()
      if not ok then return nil, err end
    end
    local out = buf:sub(1, n)
    buf = buf:sub(n + 1)
    return out
  end
  function r.got() return got end
  return r
end

-- One exchange: status, keep (connection reusable), Retry-After present;
-- or nil, why, nothing_read.
local function exchange(s, request)
  local ok, err = send_all(s, request)
  if not ok then return nil, "send: " .. tostring(err), true end
  local rd = reader(s)
  local line, lerr = rd.line()
  if not line then return nil, "read: " .. tostring(lerr), rd.got() == 0 end
  local status = tonumber(line:match("^HTTP/%d%.%d (%d%d%d)"))
  if not status then return nil, "not HTTP", false end
  local len, chunked, close, after = nil, false, false, false
  while true do
    local h, herr = rd.line()
    if not h then return nil, "headers: " .. tostring(herr), false end
    if h == "" then break end
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    name = name and name:lower()
    if name == "content-length" then len = tonumber(value)
    elseif name == "transfer-encoding" and value:lower():find("chunked") then chunked = true
    elseif name == "connection" and value:lower():find("close") then close = true
    elseif name == "retry-after" then after = true end
  end
  if chunked then
    while true do
      local size = rd.line()
      size = size and tonumber(size:match("^(%x+)"), 16)
      if not size then return nil, "bad chunk", false end
      if not rd.bytes(size + 2) then return nil, "chunk cut", false end
      if size == 0 then break end
    end
  elseif len then
    if len > 0 and not rd.bytes(len) then return nil, "body cut", false end
  else
    close = true
    while rd.bytes(1) do end
  end
  return status, not close, after
end

local function client()
  local s
  while next_i <= o.total do
    local n = next_i
    next_i = n + 1
    if o.rate then
      local at = t0 + (n - 1) / o.rate
      if socket.gettime() < at then coroutine.yield("t", at) end
    end
    local request = ("GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n"):format(
      o.path:gsub("{i}", tostring(n)), o.host, o.close and "Connection: close\r\n" or "")
    local tries = 0
    while true do
      tries = tries + 1
      local fresh = false
      if not s then
        local err
        s, err = connect()
        if not s then
          record(n, "noanswer", err)
          break
        end
        fresh = true
      end
      local status, keep, third = exchange(s, request)
      if status then
        if third and (status == 429 or status == 503) then retry_after = retry_after + 1 end
        record(n, status)
        if not keep then s:close() s = nil end
        break
      end
      s:close()
      s = nil
      if not fresh and third and tries < 3 then
        resent = resent + 1 -- an idle connection the server had closed
      else
        record(n, "noanswer", keep) -- keep: why
        break
      end
    end
  end
  if s then s:close() end
end

-- ---- the loop -------------------------------------------------------------------

t0 = socket.gettime()
local waiting = {} -- co -> {kind, sock, since} or {kind = "t", at}
local live = 0
for _ = 1, o.clients do
  local co = coroutine.create(client)
  live = live + 1
  waiting[co] = { kind = "go", since = t0 }
end

local function resume(co)
  local ok, kind, sock = coroutine.resume(co)
  if not ok then error(kind) end
  if coroutine.status(co) == "dead" then
    waiting[co] = nil
    live = live - 1
  elseif kind == "t" then
    waiting[co] = { kind = "t", at = sock }
  else
    waiting[co] = { kind = kind, sock = sock, since = socket.gettime() }
  end
end

while live > 0 do
  local rs, ws, by_sock = {}, {}, {}
  local ready = {}
  local now, next_at = socket.gettime(), math.huge
  for co, w in pairs(waiting) do
    if w.kind == "go" or (w.kind == "t" and w.at <= now) then
      ready[#ready + 1] = co
    elseif w.kind == "t" then
      next_at = math.min(next_at, w.at)
    elseif w.kind == "r" then
      rs[#rs + 1] = w.sock
      by_sock[w.sock] = co
    else
      ws[#ws + 1] = w.sock
      by_sock[w.sock] = co
    end
  end
  for _, co in ipairs(ready) do resume(co) end
  if #ready == 0 and #rs + #ws == 0 and next_at < math.huge then
    socket.sleep(math.max(0, next_at - socket.gettime()))
  elseif #rs + #ws > 0 then
    local r, w = socket.select(rs, ws, math.max(0, math.min(1, next_at - socket.gettime())))
    for _, sock in ipairs(r) do if by_sock[sock] then resume(by_sock[sock]) end end
    for _, sock in ipairs(w) do if by_sock[sock] then resume(by_sock[sock]) end end
    -- timeouts: a socket that waited too long is closed (its read then fails)
    local late = socket.gettime() - o.timeout
    for co, wt in pairs(waiting) do
      if wt.sock and wt.since < late then
        wt.sock:close()
        resume(co)
      end
    end
  end
end
local seconds = socket.gettime() - t0

if o.out then
  local f = assert(io.open(o.out, "w"))
  for n = 1, o.total do f:write(n, " ", tostring(results[n]), "\n") end
  f:close()
end

local function json_map(t)
  local parts = {}
  for k, v in pairs(t) do parts[#parts + 1] = ("%q:%d"):format(k, v) end
  return "{" .. table.concat(parts, ",") .. "}"
end

print(("{\"total\":%d,\"seconds\":%.4f,\"rate\":%.1f,\"status\":%s,\"noanswer\":%d,\"resent\":%d,"
  .. "\"retry_after\":%d,\"errors\":%s}"):format(o.total, seconds, o.total / seconds, json_map(status_count),
  noanswer, resent, retry_after, json_map(errors_count)))
