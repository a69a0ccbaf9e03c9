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
-- Requests: Content-Length, chunked and read-until-close bodies; one
-- deadline for the whole request (`timeout`: name resolution, connect, TLS,
-- send and every byte of the answer), so a receiver that drips its answer
-- cannot hold a request longer; a keep-alive pool (setkeepalive) with a
-- bound on the idle connections kept; TLS with certificate verification
-- (sslhandshake; give nginx `lua_ssl_trusted_certificate`); a response
-- size cap; the same request checks as the C engine (only http and https,
-- bounded sizes, no CR, LF or NUL).
--
-- Names are resolved here, not by nginx's `resolver`: /etc/hosts, then DNS
-- (nginx.dns.resolver, the nameservers option or those of /etc/resolv.conf,
-- answers cached for their TTL). A transport made for firing postbacks
-- (`destinations`, as fire options give) checks every address with the
-- destination policy (core.netpolicy) before it connects, connects to the
-- checked address and keeps the name for Host and TLS (SNI, certificate):
-- a refusal is an error with code "blocked_address" and nothing is sent.
local core = require "postback.core"
local errors = require "postback.errors"
local util = require "postback.util"
-- (loaded once: the refusal errors it shares, and the executor's hand-over)
local curl_transport = require "postback.transport.curl"
local executor = require "postback.executor"

local M = {}
M.__index = M

local DEFAULT_MAX_BODY = 16 * 1024 * 1024
local MAX_HEAD = 128 * 1024 -- status line and headers of an answer
local IDLE_S = 15
local READ_SIZE = 65536
-- The size of every pool postback makes in nginx. nginx fixes a pool's size
-- when it makes it, whoever asks first, so all ask the same; the limit per
-- destination (pool_size) is the transport's own.
local NGX_POOL_SIZE = 256

--- true when called where cosockets may yield (a request or timer handler).
M.available = util.in_nginx

local function parse_url(url)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil end
  scheme = scheme:lower()
  local authority, path = rest:match("^([^/?#]*)(.*)$")
  path = path:gsub("#.*$", "")
  if path == "" or path:sub(1, 1) == "?" then path = "/" .. path end
  local userinfo, hostport = authority:match("^(.*)@([^@]*)$")
  hostport = hostport or authority
  local host, port = hostport:match("^%[([^%]]+)%]:?(%d*)$")
  if not host then host, port = hostport:match("^([^:]+):?(%d*)$") end
  if not host then return nil end
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  return scheme, host:lower(), port, path, hostport, userinfo
end

local unescape = util.unescape

local function fail(kind, message, sent, reason)
  return nil, errors.new(kind, { message = message, sent = sent, reason = reason,
    retryable = kind ~= "validation" and reason ~= "too_large" and reason ~= "tls" })
end

-- ---- names -------------------------------------------------------------------

local RESOLV_CONF, HOSTS = "/etc/resolv.conf", "/etc/hosts"
local MAX_CACHE = 10000
local dns_cache, dns_cached = {}, 0 -- name -> {addrs, expires}: per worker
local system_ns, hosts             -- read once per worker

local function is_ipv4(s)
  return s:match("^%d+%.%d+%.%d+%.%d+$") ~= nil
end

local function is_ip(s)
  return is_ipv4(s) or s:find(":", 1, true) ~= nil
end

-- The nameservers of /etc/resolv.conf ({"ip", ...}), read once.
local function resolv_conf()
  if system_ns then return system_ns end
  system_ns = {}
  local f = io.open(RESOLV_CONF)
  if f then
    for line in f:lines() do
      local ip = line:match("^%s*nameserver%s+([%x%.:]+)")
      -- cosockets take an IPv6 address in brackets
      if ip and ip:find(":", 1, true) then ip = { "[" .. ip .. "]", 53 } end
      if ip then system_ns[#system_ns + 1] = ip end
    end
    f:close()
  end
  if #system_ns == 0 then system_ns = { "127.0.0.1" } end
  return system_ns
end

-- /etc/hosts (name -> {addresses}), read once; localhost is always there.
local function hosts_file()
  if hosts then return hosts end
  hosts = {}
  local f = io.open(HOSTS)
  if f then
    for line in f:lines() do
      line = line:gsub("#.*$", "")
      local ip, names = line:match("^%s*([%x%.:]+)%s+(.-)%s*$")
      if ip and not ip:find("%%") then
        for name in names:gmatch("%S+") do
          name = name:lower()
          local list = hosts[name] or {}
          list[#list + 1] = ip
          hosts[name] = list
        end
      end
    end
    f:close()
  end
  hosts.localhost = hosts.localhost or { "127.0.0.1", "::1" }
  return hosts
end

-- nameservers option: {"ip", "ip:port", "v6", "[v6]", "[v6]:port", {ip,
-- port}} -> the resolver's form ({ip, port}, IPv6 in brackets).
local function nameserver_list(list)
  local out = {}
  for i, ns in ipairs(list) do
    if type(ns) == "table" then
      out[i] = ns
    else
      local ip, port = ns:match("^(%[[^%]]+%]):?(%d*)$")
      if not ip then ip, port = ns:match("^([%d%.]+):?(%d*)$") end
      if not ip and ns:find(":", 1, true) then ip, port = "[" .. ns .. "]", "" end
      out[i] = { ip or ns, tonumber(port) or 53 }
    end
  end
  return out
end

local resolver_mod

-- Asks DNS for name's addresses of one type: list (possibly empty), ttl;
-- or nil, err.
local function query(r, name, qtype)
  local answers, err = r:query(name, { qtype = qtype })
  if not answers then return nil, err end
  if answers.errcode and answers.errcode ~= 3 then
    return nil, ("%s (DNS error %d)"):format(answers.errstr or "server failure", answers.errcode)
  end
  local list, ttl = {}, 300
  for _, a in ipairs(answers) do
    if a.type == qtype and a.address then
      list[#list + 1] = a.address
      if a.ttl and a.ttl < ttl then ttl = a.ttl end
    end
  end
  return list, ttl
end

--- The addresses of a host (an IP literal, a name of /etc/hosts or one
-- DNS knows): list, or nil and why. deadline: core.now() limit.
function M:resolve(host, deadline)
  if is_ip(host) then return { host } end
  local h = hosts_file()[host]
  if h then return h end
  if host == "localhost" or host:sub(-10) == ".localhost" then return hosts_file().localhost end
  local now = core.now()
  local hit = dns_cache[host]
  if hit and hit.expires > now then return hit.addrs end
  resolver_mod = resolver_mod or require "nginx.dns.resolver"
  local left = deadline - now
  if left <= 0 then return nil, "timeout" end
  local r, rerr = resolver_mod:new {
    nameservers = self.nameservers or resolv_conf(), retrans = 2,
    timeout = math.max(1, math.floor(math.min(left / 2, 2) * 1000)),
  }
  if not r then return nil, rerr end
  local list, ttl = query(r, host, resolver_mod.TYPE_A)
  local qerr = ttl
  if list and #list == 0 then
    local l6, t6 = query(r, host, resolver_mod.TYPE_AAAA)
    if l6 and #l6 > 0 then list, ttl = l6, t6 end
  end
  if not list then return nil, tostring(qerr) end
  if #list == 0 then return nil, "no such host" end
  if dns_cached >= MAX_CACHE then dns_cache, dns_cached = {}, 0 end
  if not dns_cache[host] then dns_cached = dns_cached + 1 end
  dns_cache[host] = { addrs = list, expires = now + math.min(math.max(ttl, 1), 300) }
  return list
end

-- ---- a transport object -----------------------------------------------------

--- A transport object. opts: the request options every GET of submit{url=}
-- shares (timeout, connect_timeout, max_body, max_url, insecure,
-- user_agent, headers), concurrency (light threads; default 16),
-- pool_size (idle keep-alive connections per destination; default
-- per_host or the concurrency, at most 256), max_idle (idle connections
-- it leaves in nginx's pools at most: past that it closes them after use;
-- default the concurrency), idle_timeout (seconds, default 15), nameservers (default: those of
-- /etc/resolv.conf), and for postbacks destinations = true with
-- allow_private and allow_networks (the destination policy), and
-- allow_userinfo (a URL's user:password@ is sent as Basic credentials, as
-- libcurl sends it; refused without). Its light
-- threads hold at most `concurrency` connections, and it leaves at most
-- max_idle idle: a worker's dispatcher never has more than the sum open.
function M.new(opts)
  opts = opts or {}
  local profile = {}
  for _, k in ipairs(core.REQUEST_OPTIONS) do profile[k] = opts[k] end
  profile.headers = opts.headers
  local policy
  if opts.destinations then
    local why
    policy, why = core.netpolicy { allow_private = opts.allow_private, allow_networks = opts.allow_networks }
    if not policy then util.argerror(1, "new", why, 2) end
  end
  local threads_max = opts.concurrency or 16
  return setmetatable({
    pool_size = math.min(opts.pool_size or opts.per_host or threads_max, NGX_POOL_SIZE),
    max_idle = opts.max_idle or threads_max,
    idle_s = opts.idle_timeout or IDLE_S,
    nameservers = opts.nameservers and nameserver_list(opts.nameservers),
    policy = policy, allow_userinfo = opts.allow_userinfo,
    profile = profile, threads_max = threads_max,
    queue = {}, qhead = 1, qtail = 0, done = {}, threads = {}, nidle = 0,
  }, M)
end

-- ---- the keep-alive budget ---------------------------------------------------
-- nginx keeps idle connections per pool name, each pool bounded but not
-- their sum. The worker notes each connection a transport puts in a pool
-- (charged to that transport until it is taken out again, by anyone, or
-- its idle time passes: an upper bound, nginx may close some sooner), and
-- a transport closes a connection instead of keeping one past its max_idle.

local idle_pools = {} -- pool name -> {{t = expiry, owner = transport}, ...}; per worker

local function idle_prune(now)
  for key, list in pairs(idle_pools) do
    local keep = {}
    for _, e in ipairs(list) do
      if e.t > now then keep[#keep + 1] = e else e.owner.nidle = e.owner.nidle - 1 end
    end
    idle_pools[key] = #keep > 0 and keep or nil
  end
end

-- A connection of pool key was taken from the pool.
local function idle_take(key)
  local list = idle_pools[key]
  if list then
    local e = table.remove(list)
    e.owner.nidle = e.owner.nidle - 1
    if #list == 0 then idle_pools[key] = nil end
  end
end

-- May self keep one more connection of pool key? (It is then charged.)
local function idle_keep(self, key)
  if not self.nidle then return true end -- the module itself: no budget
  if self.nidle >= self.max_idle then idle_prune(core.now()) end
  if self.nidle >= self.max_idle then return false end
  local list = idle_pools[key] or {}
  if #list >= self.pool_size then return false end -- nginx would drop the oldest
  list[#list + 1] = { t = core.now() + self.idle_s, owner = self }
  idle_pools[key] = list
  self.nidle = self.nidle + 1
  return true
end

-- ---- reading an answer before a deadline --------------------------------------
-- Every read asks for what the socket has (receiveany) with the time left
-- to the request's deadline, so the whole answer has one time limit however
-- slowly its bytes come.

local Reader = {}
Reader.__index = Reader

local function ms_left(deadline)
  local left = deadline - core.now()
  if left <= 0 then return nil end
  return math.max(1, math.floor(left * 1000))
end

-- What the socket has, at most max bytes, before the deadline; nil, err.
function Reader:recv(max)
  local ms = ms_left(self.deadline)
  if not ms then return nil, "timeout" end
  self.sock:settimeouts(ms, ms, ms)
  return self.sock:receiveany(max)
end

function Reader:fill()
  local data, err = self:recv(READ_SIZE)
  if not data then return nil, err end
  if self.pos > 1 then
    self.buf = self.buf:sub(self.pos) .. data
    self.pos = 1
  else
    self.buf = self.buf .. data
  end
  return true
end

-- One line without its CR LF (or LF); nil, err.
function Reader:line(max)
  local from = self.pos
  while true do
    local e = self.buf:find("\n", from, true)
    if e then
      local line = self.buf:sub(self.pos, e - 1)
      self.pos = e + 1
      if line:sub(-1) == "\r" then line = line:sub(1, -2) end
      return line
    end
    if #self.buf - self.pos + 1 > max then return nil, "too_large" end
    from = #self.buf + 1
    local ok, err = self:fill()
    if not ok then return nil, err end
    from = math.max(self.pos, from)
  end
end

-- What is buffered, taken out.
function Reader:take()
  local out = self.buf:sub(self.pos)
  self.buf, self.pos = "", 1
  return out
end

-- Exactly n bytes; nil, err. (Large reads gather their pieces in a list:
-- one copy in all.)
function Reader:bytes(n)
  local have = #self.buf - self.pos + 1
  if have >= n then
    local out = self.buf:sub(self.pos, self.pos + n - 1)
    self.pos = self.pos + n
    return out
  end
  local parts = { self:take() }
  while have < n do
    local data, err = self:recv(math.min(READ_SIZE, n - have))
    if not data then return nil, err end
    parts[#parts + 1] = data
    have = have + #data
  end
  return table.concat(parts)
end

-- Everything until the peer closes, at most max bytes; nil, err.
function Reader:rest(max)
  local parts = { self:take() }
  local have = #parts[1]
  while true do
    if have > max then return nil, "too_large" end
    local data, err = self:recv(READ_SIZE)
    if not data then
      if err == "closed" then return table.concat(parts) end
      return nil, err
    end
    parts[#parts + 1] = data
    have = have + #data
  end
end

-- Bytes read past the end of the answer.
function Reader:extra()
  return #self.buf - self.pos + 1
end

local function read_body(rd, headers, max)
  local te = headers["transfer-encoding"]
  if te and te:lower():find("chunked", 1, true) then
    local parts, total = {}, 0
    while true do
      local line, err = rd:line(4096)
      if not line then return nil, err end
      local size = tonumber(line:match("^%s*(%x+)"), 16)
      if not size then return nil, "bad chunk size" end
      if size == 0 then
        -- trailers, up to the blank line
        local n = 0
        repeat
          local t, terr = rd:line(MAX_HEAD)
          if not t then return nil, terr end
          n = n + #t
          if n > MAX_HEAD then return nil, "too_large" end
        until t == ""
        return table.concat(parts)
      end
      total = total + size
      if total > max then return nil, "too_large" end
      local data, derr = rd:bytes(size + 2)
      if not data then return nil, derr end
      parts[#parts + 1] = data:sub(1, size)
    end
  end
  local len = headers["content-length"]
  if len then
    len = tonumber(len:match("^%s*(%d+)%s*$"))
    if not len then return nil, "bad Content-Length" end
    if len > max then return nil, "too_large" end
    if len == 0 then return "" end
    return rd:bytes(len)
  end
  -- no length: read until the server closes
  return rd:rest(max), nil
end

local function timed_out(what, seconds, sent)
  return fail("timeout", ("%s: no complete answer within %g s"):format(what, seconds), sent, "timeout")
end

-- Connects sock to one of the addresses before the deadline: the pool name
-- (the address connected to, with the name TLS verified), or nil and the
-- error of the last attempt.
local function connect(sock, addrs, port, prefix, connect_s, deadline)
  local err
  for _, ip in ipairs(addrs) do
    local ms = ms_left(deadline)
    if not ms then return nil, "timeout" end
    ms = math.min(ms, math.max(1, math.floor(connect_s * 1000)))
    sock:settimeouts(ms, ms, ms)
    local pool = ("%s:%s:%d"):format(prefix, ip, port)
    local ok, cerr = sock:connect(ip:find(":", 1, true) and ("[" .. ip .. "]") or ip, port, { pool = pool })
    if ok then return pool end
    err = cerr
  end
  return nil, err
end

--- One request (see postback.transport.curl for the shapes): resp or nil, err.
function M:request(req)
  local method, url = req.method or "GET", req.url
  if not method:match("^%u+$") then return fail("validation", "invalid method", false) end
  local max_url = req.max_url or 16384
  local refuse = curl_transport.refused
  if type(url) ~= "string" then return nil, refuse(url, "no URL", "invalid_url") end
  if #url > max_url then
    return nil, refuse(url, ("URL longer than max_url (%d bytes)"):format(max_url), "too_long")
  end
  local ok, why = core.check_url(url, self.allow_userinfo)
  if not ok then return nil, refuse(url, "URL " .. why, "invalid_url") end
  local bad_headers = util.check_headers(req.headers)
  if bad_headers then return nil, bad_headers end
  local scheme, host, port, path, hostport, userinfo = parse_url(url)
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
  local cred
  if req.username then
    cred = req.username .. ":" .. (req.password or "")
  elseif userinfo then
    -- as libcurl reads it: percent-decoded, "user" alone is "user:"
    local user, password = userinfo:match("^([^:]*):?(.*)$")
    cred = unescape(user) .. ":" .. unescape(password)
  end
  if cred then
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

  -- one deadline for everything from here on
  local timeout = req.timeout or 30
  local deadline = core.now() + timeout
  local addrs, rerr = self:resolve(host, deadline)
  if not addrs then
    if rerr == "timeout" then return timed_out("resolving " .. host, timeout, false) end
    return fail("transport", ("cannot resolve %s: %s"):format(host, tostring(rerr)), false, "resolve")
  end
  if self.policy then
    local allowed, refused = {}, nil
    for _, ip in ipairs(addrs) do
      local pok, pwhy = self.policy:check(ip)
      if pok then allowed[#allowed + 1] = ip else refused = refused or pwhy end
    end
    if #allowed == 0 then return nil, curl_transport.blocked(url, refused) end
    addrs = allowed
  end

  local sock = ngx.socket.tcp()
  local pool, cerr = connect(sock, addrs, port, ("postback:%s:%s:%s"):format(scheme, req.insecure and "i" or "v", host),
    req.connect_timeout or math.min(timeout, 10), deadline)
  if not pool then
    if cerr == "timeout" then return timed_out("connect to " .. host, timeout, false) end
    return fail("transport", ("connect to %s:%d failed: %s"):format(host, port, tostring(cerr)), false, "connect")
  end
  local reused = sock:getreusedtimes() > 0
  if reused then idle_take(pool) end
  if scheme == "https" and not reused then
    local ms = ms_left(deadline)
    if not ms then
      sock:close()
      return timed_out("TLS with " .. host, timeout, false)
    end
    sock:settimeouts(ms, ms, ms)
    -- lua-resty-core 0.1.25 raises (an assertion) instead of returning an
    -- error for some failed verifications (a name the certificate lacks)
    local pok, hok, herr = pcall(sock.sslhandshake, sock, nil, host, not req.insecure)
    if not pok then hok, herr = nil, "certificate verification failed (" .. tostring(hok) .. ")" end
    if not hok then
      sock:close()
      if herr == "timeout" then return timed_out("TLS with " .. host, timeout, false) end
      return fail("transport", "TLS handshake with " .. host .. " failed: " .. tostring(herr), false, "tls")
    end
  end
  local ms = ms_left(deadline)
  if not ms then
    sock:close()
    return timed_out(method .. " " .. host, timeout, false)
  end
  sock:settimeouts(ms, ms, ms)
  local sent, serr = sock:send(body and (head .. body) or head)
  if not sent then
    sock:close()
    if serr == "timeout" then return timed_out(method .. " " .. host, timeout, true) end
    return fail("transport", "send failed: " .. tostring(serr), true, "transport")
  end

  local rd = setmetatable({ sock = sock, buf = "", pos = 1, deadline = deadline }, Reader)
  local status_line, lerr = rd:line(MAX_HEAD)
  if not status_line then
    sock:close()
    if lerr == "timeout" then return timed_out(method .. " " .. host, timeout, true) end
    if lerr == "too_large" then return fail("transport", "the answer's status line is too long", true, "too_large") end
    return fail("transport", "no answer: " .. tostring(lerr), true, "transport")
  end
  local status = tonumber(status_line:match("^HTTP/%d%.%d (%d%d%d)"))
  if not status then
    sock:close()
    return fail("transport", "not an HTTP answer", true, "transport")
  end
  local headers, head_bytes = {}, #status_line
  while true do
    local line, herr = rd:line(MAX_HEAD - head_bytes)
    if not line then
      sock:close()
      if herr == "timeout" then return timed_out(method .. " " .. host, timeout, true) end
      if herr == "too_large" then
        return fail("transport", ("the answer's headers are larger than %d bytes"):format(MAX_HEAD), true, "too_large")
      end
      return fail("transport", "headers cut short: " .. tostring(herr), true, "transport")
    end
    if line == "" then break end
    head_bytes = head_bytes + #line + 2
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then
      name = name:lower()
      headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
    end
  end

  local data, berr
  local bodiless = method == "HEAD" or status == 204 or status == 304 or (status >= 100 and status < 200)
  if bodiless then
    data = ""
  else
    data, berr = read_body(rd, headers, req.max_body or DEFAULT_MAX_BODY)
  end
  if not data then
    sock:close()
    if berr == "too_large" then
      return fail("transport", "answer larger than the response size cap", true, "too_large")
    end
    if berr == "timeout" then return timed_out(method .. " " .. host, timeout, true) end
    return fail("transport", "body cut short: " .. tostring(berr), true, "transport")
  end
  local conn = (headers["connection"] or ""):lower()
  if conn:find("close", 1, true) or rd:extra() > 0
     or not (bodiless or headers["content-length"] or headers["transfer-encoding"])
     or not idle_keep(self, pool) then
    sock:close()
  else
    sock:setkeepalive((self.idle_s or IDLE_S) * 1000, NGX_POOL_SIZE)
  end
  return { status = status, headers = headers, body = data }
end

-- ---- the executor's contract ------------------------------------------------

local semaphore

local function sema()
  semaphore = semaphore or require "ngx.semaphore"
  return semaphore.new(0)
end

local function ensure(self)
  if not self.events then
    self.events, self.work, self.nwaiting = sema(), sema(), 0
  end
end

-- The request of a url-only job: the profile with its URL.
function M:profile_request(url)
  local req = {}
  for k, v in pairs(self.profile) do req[k] = v end
  req.method, req.url = "GET", url
  return req
end

-- Waits on the events semaphore unless a wake came while nobody waited.
local function wait_events(self, timeout)
  if self.woken then
    self.woken = false
    return
  end
  if timeout > 0 then self.events:wait(timeout) end
  self.woken = false
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
      local t0 = core.now()
      local ok, resp, err = pcall(self.request, self, job.req or self:profile_request(job.url))
      if not ok then
        resp, err = nil, errors.new("transport", { message = "request raised: " .. tostring(resp) })
      end
      if resp then resp.seconds = core.now() - t0 end
      self.done[#self.done + 1] = { tag = job.tag, resp = resp, err = err }
      self:wake()
    else
      self.nwaiting = self.nwaiting + 1
      self.work:wait(1)
      self.nwaiting = self.nwaiting - 1
    end
  end
end

function M:submit(job)
  ensure(self)
  self.qtail = self.qtail + 1
  self.queue[self.qtail] = job
  if self.nwaiting > 0 then
    self.work:post(1)
  elseif #self.threads < self.threads_max then
    self.threads[#self.threads + 1] = ngx.thread.spawn(worker, self)
  end
  return true
end

function M:wait(timeout, sink)
  ensure(self)
  if #self.done == 0 and timeout and timeout > 0 then wait_events(self, timeout) end
  return executor.hand_over(self.done, sink)
end

function M.outcome(_, o)
  return o.resp, o.err
end

--- Wakes a wait or sleep (another coroutine queued work, or a light thread
-- finished one); a wake while nobody waits makes the next wait return at
-- once.
function M:wake()
  local ev = self.events
  if not ev then return end
  if ev:count() < 0 then ev:post(1) else self.woken = true end
end

--- Sleeps at most s seconds; a wake ends it sooner.
function M:sleep(s)
  ensure(self)
  if s > 0 then wait_events(self, s) end
end

--- Stops the light threads (only the coroutine that started them may:
-- the one that ran the executor); requests in flight are abandoned.
function M:close()
  if self.closed then return end
  self.closed = true
  for _, th in ipairs(self.threads) do ngx.thread.kill(th) end
  self.threads = {}
end

return M
