-- A local Offerslook: the Network API's affiliate_postbacks calls, offers,
-- and a postback receiver, on loopback only. The offline sandbox of
-- postback (`make demo`, `postback mock`) and the server its specs test
-- against.
--
--   lua5.4 mock/offerslook.lua [--port 0] [--host 127.0.0.1] [--network demo]
--          [--api-key demo-key] [--state FILE] [--latency MS] [--quiet]
--
-- Prints "mock listening on http://127.0.0.1:PORT" once it listens.
--
-- The API (HTTP Basic auth: network name : API key), as offerslook-api.md
-- describes it: POST/GET/PUT/PATCH/DELETE /v1/affiliate_postbacks[/{id}],
-- lists with 1-based `offset` pages, `limit` 1..1000 (default 20), `sort`,
-- `fields` and `filters[field][OP]`, GET /v1/offers/{id} (offers 1..30 have
-- conversion_protocol 1, 2, 3, 1, ...), GET /v1/offers/{id}/offer_events/{e}.
-- Answers are {"code": 0, "message": "Success", "data": ...}; errors have a
-- non-zero code and a 4xx status.
--
-- Receiver: any request to /postback... or /r/... is recorded and answered
-- 200 "OK".
--
-- Control (no auth, plain JSON):
--   GET|DELETE /_mock/received   postbacks received (method, path, query, headers, body)
--   GET|DELETE /_mock/requests   API requests seen (auth_ok instead of the credentials)
--   GET /_mock/stats             {requests, received, postbacks, writes = {[id] = n}, by_method}
--   POST /_mock/reset            forget everything, default offers back
--   POST /_mock/seed             {count, offer_id?, affiliate_id?, type?, code?, status?}
--   POST /_mock/offers           {id, conversion_protocol} or an array of them
--   GET|POST|DELETE /_mock/faults  queue faults: {fault, match?, method?, times?, ...}
--   POST /_mock/shutdown
-- Faults (queued, or per request with an X-Mock-Fault header or, for the
-- receiver, a mock_fault query parameter): status (status, retry_after, body,
-- content_type), reset_before, reset_after, slow (delay), malformed,
-- truncated, oversized (size), content_type, html (status).
local socket = require "socket"
local cjson = require("cjson.safe").new() -- decoding only: see encode below

local M = {}

local tointeger = math.tointeger or function(x)
  if type(x) == "number" and x == math.floor(x) then return x end
end

local FIELDS = { "id", "offer_id", "affiliate_id", "event_id", "code", "status", "type", "create_time", "update_time" }
local FIELD_SET = {}
for _, f in ipairs(FIELDS) do FIELD_SET[f] = true end
local INT_FIELDS = { id = true, offer_id = true, affiliate_id = true, event_id = true, type = true,
                     create_time = true, update_time = true }
local OPS = { EQUAL_TO = true, NOT_EQUAL_TO = true, LESS_THAN = true, LESS_THAN_OR_EQUAL_TO = true,
              GREATER_THAN = true, GREATER_THAN_OR_EQUAL_TO = true, CONTAINS = true, NOT_CONTAINS = true,
              NULL = true, NOT_NULL = true }
local ALLOWED = { [1] = { [1] = true, [2] = true }, [2] = { [2] = true }, [3] = { [1] = true, [2] = true, [3] = true } }
local REASONS = { [200] = "OK", [201] = "Created", [204] = "No Content", [400] = "Bad Request",
                  [401] = "Unauthorized", [404] = "Not Found", [405] = "Method Not Allowed",
                  [429] = "Too Many Requests", [500] = "Internal Server Error", [502] = "Bad Gateway",
                  [503] = "Service Unavailable" }

-- ---- helpers ----------------------------------------------------------------

local function b64decode(s)
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  s = s:gsub("[^%w%+/=]", "")
  return (s:gsub(".", function(x)
    if x == "=" then return "" end
    local r, f = "", (chars:find(x, 1, true) - 1)
    for i = 6, 1, -1 do r = r .. (f % 2 ^ i - f % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end):gsub("%d%d%d?%d?%d?%d?%d?%d?", function(x)
    if #x ~= 8 then return "" end
    local c = 0
    for i = 1, 8 do c = c + (x:sub(i, i) == "1" and 2 ^ (8 - i) or 0) end
    return string.char(c)
  end))
end

local function url_decode(s, plus)
  if plus then s = s:gsub("+", " ") end
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function parse_query(q)
  local out, order = {}, {}
  for pair in (q or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k, v = url_decode(k, true), url_decode(v, true)
    out[k] = v
    order[#order + 1] = k
  end
  return out, order
end

local function normalize(v)
  if type(v) == "table" then
    for k, x in pairs(v) do v[k] = normalize(x) end
  elseif type(v) == "number" then
    return tointeger(v) or v
  end
  return v
end

-- JSON out. lua-cjson 2.1 writes numbers with 14 significant digits
-- (123456789012345 -> 1.2345678901234e+14), which would change ids of 15 and
-- 16 digits: the mock writes its JSON itself. Integers (and integral floats up
-- to 2^53) in plain digits, other floats with 17 digits; arrays are tables
-- whose keys are exactly 1..n, anything else an object ({} when empty).
local math_type = math.type
local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
                  ["\r"] = "\\r", ["\t"] = "\\t" }
local function escape_char(c)
  return ESCAPES[c] or ("\\u%04x"):format(c:byte())
end

local function json_number(x)
  if math_type and math_type(x) == "integer" then return ("%d"):format(x) end
  if x ~= x or x == math.huge or x == -math.huge then error("cannot encode " .. tostring(x), 0) end
  if x == math.floor(x) and x >= -2 ^ 53 and x <= 2 ^ 53 then return ("%.0f"):format(x) end
  return (("%.17g"):format(x):gsub(",", "."))
end

local function json_string(s)
  if s:find('[%c"\\]') then s = s:gsub('[%c"\\]', escape_char) end
  return '"' .. s .. '"'
end

local function json_write(v, out, depth)
  local t = type(v)
  if v == nil or v == cjson.null then
    out[#out + 1] = "null"
  elseif t == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif t == "number" then
    out[#out + 1] = json_number(v)
  elseif t == "string" then
    out[#out + 1] = json_string(v)
  elseif t == "table" then
    if depth > 64 then error("cannot encode tables nested this deep", 0) end
    local n, max = 0, 0
    for k in pairs(v) do
      n = n + 1
      if max and type(k) == "number" and k >= 1 and k == math.floor(k) then
        if k > max then max = k end
      else
        max = nil
      end
    end
    if n == 0 then
      out[#out + 1] = "{}"
    elseif max == n then -- the keys are exactly 1..n
      out[#out + 1] = "["
      for i = 1, n do
        if i > 1 then out[#out + 1] = "," end
        json_write(v[i], out, depth + 1)
      end
      out[#out + 1] = "]"
    else
      out[#out + 1] = "{"
      local first = true
      for k, x in pairs(v) do
        if not first then out[#out + 1] = "," end
        first = false
        if type(k) == "number" then k = json_number(k) end
        if type(k) ~= "string" then error("cannot encode a " .. type(k) .. " key", 0) end
        out[#out + 1] = json_string(k)
        out[#out + 1] = ":"
        json_write(x, out, depth + 1)
      end
      out[#out + 1] = "}"
    end
  else
    error("cannot encode a " .. t, 0)
  end
end

local function encode(v)
  local out = {}
  json_write(v, out, 1)
  return table.concat(out)
end
M.encode = encode

-- ---- the server ----------------------------------------------------------------

local Server = {}
Server.__index = Server

function M.new(opts)
  opts = opts or {}
  local self = setmetatable({
    host = opts.host or "127.0.0.1",
    port = opts.port or 0,
    network = opts.network or "demo",
    api_key = opts.api_key or "demo-key",
    state_file = opts.state,
    latency = (opts.latency or 0) / 1000,
    quiet = opts.quiet,
    threads = {},   -- running coroutines: co -> {wait = "r"|"w"|"t", sock =, until_ =}
    stop = false,
  }, Server)
  self:reset()
  if self.state_file then self:load() end
  return self
end

function Server:reset()
  self.postbacks = {}  -- sorted by id
  self.by_id = {}
  self.next_id = 1
  self.offers = {}
  for id = 1, 30 do self.offers[id] = { id = id, name = "Offer " .. id, conversion_protocol = (id - 1) % 3 + 1 } end
  self.received = {}
  self.requests = {}
  self.faults = {}
  self.writes = {}
  self.stats = { requests = 0, received = 0, by_method = {} }
end

function Server:save()
  if not self.state_file then return end
  local tmp = self.state_file .. ".tmp"
  local f = io.open(tmp, "w")
  if not f then return end
  local offers = {}
  for _, o in pairs(self.offers) do offers[#offers + 1] = o end
  f:write(encode { next_id = self.next_id, postbacks = self.postbacks, offers = offers })
  f:close()
  os.rename(tmp, self.state_file)
end

function Server:load()
  local f = io.open(self.state_file, "r")
  if not f then return end
  local doc = cjson.decode(f:read("*a"))
  f:close()
  if type(doc) ~= "table" then return end
  normalize(doc)
  self.next_id = doc.next_id or 1
  for _, pb in ipairs(doc.postbacks or {}) do
    self.postbacks[#self.postbacks + 1] = pb
    self.by_id[pb.id] = pb
  end
  for _, o in ipairs(doc.offers or {}) do self.offers[o.id] = o end
end

-- ---- scheduler -----------------------------------------------------------------

local function wait(kind, sock, t)
  return coroutine.yield(kind, sock, t)
end

local Conn = {}
Conn.__index = Conn

function Conn:fill()
  local data, err, partial = self.sock:receive(65536)
  data = data or partial
  if data and #data > 0 then
    self.buf = self.buf .. data
    return true
  end
  if err == "closed" then return nil end
  wait("r", self.sock)
  return true
end

function Conn:line()
  while true do
    local s, e = self.buf:find("\r?\n")
    if s then
      local line = self.buf:sub(1, s - 1)
      self.buf = self.buf:sub(e + 1)
      return line
    end
    if #self.buf > 65536 then return nil end
    if not self:fill() then return nil end
  end
end

function Conn:bytes(n)
  while #self.buf < n do
    if not self:fill() then return nil end
  end
  local out = self.buf:sub(1, n)
  self.buf = self.buf:sub(n + 1)
  return out
end

function Conn:send(data)
  local i = 1
  while i <= #data do
    local last, err, partial = self.sock:send(data, i)
    if last then
      i = last + 1
    elseif err == "timeout" then
      i = (partial or i - 1) + 1
      wait("w", self.sock)
    else
      return nil
    end
  end
  return true
end

function Server:spawn(fn, ...)
  local co = coroutine.create(fn)
  self:resume(co, ...)
end

function Server:resume(co, ...)
  local ok, kind, sock, t = coroutine.resume(co, ...)
  if not ok then
    if not self.quiet then io.stderr:write("mock: ", tostring(kind), "\n") end
    self.threads[co] = nil
    return
  end
  if coroutine.status(co) == "dead" then
    self.threads[co] = nil
  else
    self.threads[co] = { wait = kind, sock = sock, until_ = t }
  end
end

function Server:sleep(seconds)
  if seconds > 0 then wait("t", nil, socket.gettime() + seconds) end
end

-- ---- HTTP ----------------------------------------------------------------------

local function response(status, body, headers, content_type)
  local lines = { ("HTTP/1.1 %d %s"):format(status, REASONS[status] or "Status"),
                  "Content-Type: " .. (content_type or "application/json"),
                  "Content-Length: " .. #body }
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. body
end

local function envelope(status, code, message, data)
  local doc = { code = code, message = message }
  if data == nil then doc.data = cjson.null else doc.data = data end
  return status, encode(doc)
end

local function api_error(status, message)
  return envelope(status, status, message)
end

local function ok(data)
  return envelope(200, 0, "Success", data)
end

-- Reads one request; nil when the connection is done.
function Server:read_request(c)
  local line = c:line()
  while line == "" do line = c:line() end
  if not line then return nil end
  local method, target, version = line:match("^(%u+) (%S+) HTTP/(%d%.%d)$")
  if not method then return false end
  local req = { method = method, target = target, version = version, headers = {} }
  req.path, req.query = target:match("^([^?]*)%??(.*)$")
  req.early = c.server:take_fault(req, true) -- a reset_before fault acts now
  if req.early and req.early.fault == "reset_before" then return req end
  while true do
    local h = c:line()
    if not h then return nil end
    if h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.-)%s*$")
    if not k then return false end
    req.headers[k:lower()] = v
  end
  local te = req.headers["transfer-encoding"]
  if te and te:lower():find("chunked") then
    local parts = {}
    while true do
      local size = tonumber((c:line() or ""):match("^(%x+)") or "", 16)
      if not size then return false end
      if size == 0 then
        repeat local t = c:line() until t == "" or t == nil
        break
      end
      parts[#parts + 1] = c:bytes(size)
      c:line()
    end
    req.body = table.concat(parts)
  else
    local len = tonumber(req.headers["content-length"] or "0")
    if not len or len < 0 then return false end
    req.body = len > 0 and c:bytes(len) or ""
    if req.body == nil then return nil end
  end
  return req
end

-- The first queued fault that matches req (taking one of its `times`), or
-- the one asked for in the request itself.
function Server:take_fault(req, early)
  for i, f in ipairs(self.faults) do
    local path = req.path .. (req.query ~= "" and ("?" .. req.query) or "")
    if (not f.method or f.method == req.method) and (not f.match or path:find(f.match, 1, true))
       and not req.path:find("^/_mock/") then
      if early and f.fault ~= "reset_before" then return nil end
      f.times = (f.times or 1) - 1
      if f.times <= 0 then table.remove(self.faults, i) end
      return f
    end
  end
  return nil
end

local function header_fault(req)
  local kind = req.headers["x-mock-fault"]
  local q = parse_query(req.query)
  if not kind and (req.path:find("^/postback") or req.path:find("^/r/")) then
    if q.mock_fault then
      return { fault = q.mock_fault, status = tonumber(q.mock_status), delay = tonumber(q.mock_delay),
               size = tonumber(q.mock_size), retry_after = q.mock_retry_after }
    end
  end
  if not kind then return nil end
  return { fault = kind, status = tonumber(req.headers["x-mock-status"]),
           retry_after = req.headers["x-mock-retry-after"], delay = tonumber(req.headers["x-mock-delay"]),
           size = tonumber(req.headers["x-mock-size"]) }
end

-- ---- the API ---------------------------------------------------------------------

local function check_int(rec, field, min, errs, required)
  local v = rec[field]
  if v == nil then
    if required then errs[#errs + 1] = field .. " is required" end
    return
  end
  if type(v) ~= "number" or not tointeger(v) then
    errs[#errs + 1] = field .. " must be an integer"
  elseif v < min then
    errs[#errs + 1] = field .. " must be >= " .. min
  end
end

function Server:check_type(offer_id, ty, code, errs)
  if ty and tointeger(ty) and (ty < 1 or ty > 3) then errs[#errs + 1] = "type must be 1, 2 or 3" return end
  if code ~= nil then
    if type(code) ~= "string" or not code:find("%S") then
      errs[#errs + 1] = "code must be a non-empty string"
    elseif #code > 4096 then
      errs[#errs + 1] = "code is longer than 4096 bytes"
    elseif (ty == 1 or ty == 2) and not code:lower():find("^https?://") then
      errs[#errs + 1] = "code must be URL format"
    end
  end
  if offer_id and offer_id ~= 0 and ty then
    local offer = self.offers[offer_id]
    if not offer then
      errs[#errs + 1] = "offer " .. offer_id .. " does not exist"
    elseif not ALLOWED[offer.conversion_protocol][ty] then
      errs[#errs + 1] = ("type %d is not allowed for offer %d (conversion_protocol %d)"):format(ty, offer_id, offer.conversion_protocol)
    end
  end
end

function Server:insert(pb)
  self.postbacks[#self.postbacks + 1] = pb
  self.by_id[pb.id] = pb
end

function Server:write(id)
  local k = tostring(id)
  self.writes[k] = (self.writes[k] or 0) + 1
  self.dirty = true
end

local function copy(pb, fields)
  local out = {}
  for _, f in ipairs(fields or FIELDS) do out[f] = pb[f] end
  return out
end

local function compare(a, op, b)
  if op == "EQUAL_TO" then return a == b
  elseif op == "NOT_EQUAL_TO" then return a ~= b
  elseif op == "CONTAINS" then return tostring(a):find(tostring(b), 1, true) ~= nil
  elseif op == "NOT_CONTAINS" then return tostring(a):find(tostring(b), 1, true) == nil
  elseif op == "NULL" then return a == nil
  elseif op == "NOT_NULL" then return a ~= nil end
  if type(a) ~= type(b) then return false end
  if op == "LESS_THAN" then return a < b
  elseif op == "LESS_THAN_OR_EQUAL_TO" then return a <= b
  elseif op == "GREATER_THAN" then return a > b
  elseif op == "GREATER_THAN_OR_EQUAL_TO" then return a >= b end
  return false
end

function Server:list(req)
  local q, order = parse_query(req.query)
  local page = tonumber(q.offset or "1")
  local limit = tonumber(q.limit or "20")
  if not page or page < 1 or page ~= math.floor(page) then return api_error(400, "offset must be a page number >= 1") end
  if not limit or limit < 1 or limit > 1000 or limit ~= math.floor(limit) then
    return api_error(400, "limit must be between 1 and 1000")
  end
  local filters = {}
  for _, k in ipairs(order) do
    local field, op = k:match("^filters%[([%w_]+)%]%[([%u_]+)%]$")
    if k:find("^filters") then
      if not field or not FIELD_SET[field] then return api_error(400, "bad filter " .. k) end
      if not OPS[op] then return api_error(400, "unknown filter operator " .. tostring(op)) end
      local v = q[k]
      if INT_FIELDS[field] then v = tonumber(v) or v end
      filters[#filters + 1] = { field, op, v }
    elseif k ~= "offset" and k ~= "limit" and k ~= "sort" and k ~= "fields" then
      return api_error(400, "unknown parameter " .. k)
    end
  end
  local fields
  if q.fields then
    fields = {}
    for f in q.fields:gmatch("[^,]+") do
      if not FIELD_SET[f] then return api_error(400, "unknown field " .. f) end
      fields[#fields + 1] = f
    end
  end
  local rows = self.postbacks
  if #filters > 0 then
    local out = {}
    for _, pb in ipairs(rows) do
      local keep = true
      for _, flt in ipairs(filters) do
        if not compare(pb[flt[1]], flt[2], flt[3]) then keep = false break end
      end
      if keep then out[#out + 1] = pb end
    end
    rows = out
  end
  if q.sort then
    local sign, field = q.sort:match("^([%+%- ]?)([%w_]+)$")
    if not field or not FIELD_SET[field] then return api_error(400, "bad sort " .. q.sort) end
    local desc = sign == "-"
    if rows == self.postbacks then
      local out = {}
      for i, pb in ipairs(rows) do out[i] = pb end
      rows = out
    end
    table.sort(rows, function(a, b)
      local x, y = a[field], b[field]
      if x == y then return a.id < b.id end
      if desc then return x > y end
      return x < y
    end)
  end
  local total = #rows
  local first = (page - 1) * limit + 1
  local rowset = {}
  for i = first, math.min(total, first + limit - 1) do rowset[#rowset + 1] = copy(rows[i], fields) end
  local pages = math.floor((total + limit - 1) / limit)
  -- rowset is always an array on the wire, even when empty
  local meta = encode { totalPages = pages, totalRows = total, offset = page, limit = limit }
  local rows_json = #rowset == 0 and "[]" or encode(rowset)
  return 200, '{"code":0,"message":"Success","data":{"rowset":' .. rows_json .. "," .. meta:sub(2) .. "}"
end

function Server:api(req)
  local path, method = req.path, req.method
  local id_s = path:match("^/v1/affiliate_postbacks/([^/]+)$")
  if path == "/v1/affiliate_postbacks" then
    if method == "GET" then return self:list(req) end
    if method ~= "POST" then return api_error(405, "method not allowed") end
    local rec = cjson.decode(req.body or "")
    if type(rec) ~= "table" then return api_error(400, "the body must be a JSON object") end
    normalize(rec)
    local errs = {}
    for k in pairs(rec) do
      if k ~= "offer_id" and k ~= "affiliate_id" and k ~= "event_id" and k ~= "type" and k ~= "code" then
        errs[#errs + 1] = "unknown field " .. tostring(k)
      end
    end
    check_int(rec, "offer_id", 0, errs, true)
    check_int(rec, "affiliate_id", 1, errs, true)
    check_int(rec, "event_id", 1, errs, false)
    check_int(rec, "type", 1, errs, true)
    if rec.code == nil then errs[#errs + 1] = "code is required" end
    if #errs == 0 then self:check_type(rec.offer_id, rec.type, rec.code, errs) end
    if #errs > 0 then return api_error(400, table.concat(errs, "; ")) end
    local now = os.time()
    local pb = { id = self.next_id, offer_id = rec.offer_id, affiliate_id = rec.affiliate_id,
                 event_id = rec.event_id or 1, code = rec.code, status = "approved", type = rec.type,
                 create_time = now, update_time = now }
    self.next_id = self.next_id + 1
    self:insert(pb)
    self:write(pb.id)
    return ok { affiliate_postback = copy(pb) }
  end
  if id_s then
    local id = tonumber(id_s)
    if not id or not tointeger(id) then return api_error(400, "bad id " .. id_s) end
    local pb = self.by_id[id]
    if not pb then return api_error(404, "affiliate postback " .. id_s .. " not found") end
    if method == "GET" then return ok { affiliate_postback = copy(pb) } end
    if method == "PUT" then
      local rec = cjson.decode(req.body or "")
      if type(rec) ~= "table" then return api_error(400, "the body must be a JSON object") end
      normalize(rec)
      local errs = {}
      for k in pairs(rec) do
        if k ~= "code" and k ~= "status" and k ~= "type" then errs[#errs + 1] = "field " .. tostring(k) .. " cannot be updated" end
      end
      if rec.status ~= nil and rec.status ~= "approved" and rec.status ~= "rejected" then
        errs[#errs + 1] = "status must be approved or rejected"
      end
      check_int(rec, "type", 1, errs, false)
      if #errs == 0 then
        local ty = rec.type or pb.type
        self:check_type(rec.type and pb.offer_id or nil, ty, rec.code or (rec.type and pb.code) or nil, errs)
      end
      if #errs > 0 then return api_error(400, table.concat(errs, "; ")) end
      for k, v in pairs(rec) do pb[k] = v end
      pb.update_time = os.time()
      self:write(pb.id)
      return ok { affiliate_postback = copy(pb) }
    end
    if method == "PATCH" then
      if req.body and req.body ~= "" then return api_error(400, "PATCH takes no body") end
      local status = parse_query(req.query).status
      if status ~= "approved" and status ~= "rejected" then return api_error(400, "status must be approved or rejected") end
      pb.status = status
      pb.update_time = os.time()
      self:write(pb.id)
      return ok { affiliate_postback = copy(pb) }
    end
    if method == "DELETE" then
      self.by_id[id] = nil
      for i, x in ipairs(self.postbacks) do
        if x.id == id then table.remove(self.postbacks, i) break end
      end
      self:write(id)
      return ok { affiliate_postback = copy(pb) }
    end
    return api_error(405, "method not allowed")
  end
  local offer_s, event_s = path:match("^/v1/offers/(%d+)/offer_events/(%d+)$")
  if offer_s and method == "GET" then
    local offer = self.offers[tonumber(offer_s)]
    if not offer then return api_error(404, "offer " .. offer_s .. " not found") end
    return ok { offer_event = { id = tonumber(event_s), offer_id = offer.id, conversion_protocol = offer.conversion_protocol } }
  end
  offer_s = path:match("^/v1/offers/(%d+)$")
  if offer_s and method == "GET" then
    local offer = self.offers[tonumber(offer_s)]
    if not offer then return api_error(404, "offer " .. offer_s .. " not found") end
    return ok { offer = offer }
  end
  return api_error(404, "no such endpoint")
end

-- ---- control -----------------------------------------------------------------------

function Server:control(req)
  local path, method = req.path, req.method
  local body = cjson.decode(req.body ~= "" and req.body or "null")
  if body ~= nil then normalize(body) end
  local function json(v) return 200, encode(v) end
  if path == "/_mock/received" then
    if method == "DELETE" then
      local n = #self.received
      self.received = {}
      return json { cleared = n }
    end
    return 200, #self.received == 0 and "[]" or encode(self.received)
  elseif path == "/_mock/requests" then
    if method == "DELETE" then
      local n = #self.requests
      self.requests = {}
      return json { cleared = n }
    end
    return 200, #self.requests == 0 and "[]" or encode(self.requests)
  elseif path == "/_mock/stats" then
    return 200, encode { requests = self.stats.requests, received = self.stats.received,
                         postbacks = #self.postbacks, writes = self.writes, by_method = self.stats.by_method }
  elseif path == "/_mock/reset" then
    self:reset()
    self.dirty = true
    return json { ok = true }
  elseif path == "/_mock/seed" and method == "POST" then
    body = type(body) == "table" and body or {}
    local n = body.count or 0
    local first = self.next_id
    local now = os.time()
    for i = 1, n do
      local id = self.next_id
      self.next_id = id + 1
      local offer_id = body.offer_id or (i % 31)
      local ty = body.type
      if not ty then
        local cp = offer_id == 0 and 3 or (self.offers[offer_id] and self.offers[offer_id].conversion_protocol or 2)
        ty = cp == 2 and 2 or (i % 2 + 1)
      end
      self:insert { id = id, offer_id = offer_id, affiliate_id = body.affiliate_id or (i % 50 + 1), event_id = 1,
                    code = body.code or ("https://track.example.com/pb?click_id={click_id}&payout={payout}&n=" .. id),
                    status = body.status or "approved", type = ty, create_time = now, update_time = now }
    end
    self.dirty = true
    return json { created = n, first_id = first, last_id = self.next_id - 1 }
  elseif path == "/_mock/offers" and method == "POST" then
    local list = type(body) == "table" and (body[1] and body or { body }) or {}
    for _, o in ipairs(list) do
      self.offers[o.id] = { id = o.id, name = "Offer " .. o.id, conversion_protocol = o.conversion_protocol }
    end
    self.dirty = true
    return json { ok = true, offers = #list }
  elseif path == "/_mock/faults" then
    if method == "DELETE" then
      self.faults = {}
      return json { ok = true }
    elseif method == "POST" then
      local list = type(body) == "table" and (body[1] and body or { body }) or {}
      for _, f in ipairs(list) do self.faults[#self.faults + 1] = f end
      return json { queued = #self.faults }
    end
    return 200, #self.faults == 0 and "[]" or encode(self.faults)
  elseif path == "/_mock/shutdown" then
    self.stop = true
    return json { ok = true }
  end
  return 404, encode { error = "no such control endpoint" }
end

-- ---- one request ---------------------------------------------------------------------

function Server:authorized(req)
  local auth = req.headers["authorization"] or ""
  local b64 = auth:match("^Basic%s+(%S+)$")
  if not b64 then return false end
  return b64decode(b64) == self.network .. ":" .. self.api_key
end

-- Returns the raw response text, or a fault action.
function Server:handle(req)
  local path = req.path
  if path:find("^/_mock/") then
    local status, body = self:control(req)
    return response(status, body)
  end
  local fault = req.early or header_fault(req) or self:take_fault(req)
  local is_api = path:find("^/v1/") ~= nil
  local is_receiver = path:find("^/postback") ~= nil or path:find("^/r/") ~= nil
  -- API requests are logged on arrival, whatever happens to them next
  local entry
  if is_api then
    self.stats.requests = self.stats.requests + 1
    self.stats.by_method[req.method] = (self.stats.by_method[req.method] or 0) + 1
    local headers = {}
    for k, v in pairs(req.headers) do if k ~= "authorization" then headers[k] = v end end
    entry = { method = req.method, path = path, query = req.query, headers = headers,
              body = req.body, auth_ok = self:authorized(req), fault = fault and fault.fault or nil }
    self.requests[#self.requests + 1] = entry
  end
  if fault and fault.fault == "reset_before" then return nil, "reset" end
  if fault and fault.fault == "slow" then self:sleep(tonumber(fault.delay) or 1) end
  if is_api and self.latency > 0 then self:sleep(self.latency) end

  local status, body, content_type, extra = 404, encode { error = "not found" }, nil, {}
  if is_receiver then
    self.stats.received = self.stats.received + 1
    self.received[#self.received + 1] = { method = req.method, path = path, query = req.query,
                                          headers = req.headers, body = req.body, time = socket.gettime() }
    status, body, content_type = 200, "OK", "text/plain"
  elseif is_api then
    local auth_ok = entry.auth_ok
    local applies = not fault or fault.fault == "slow" or fault.fault == "reset_after"
      or fault.fault == "truncated" or fault.fault == "content_type" or fault.fault == "oversized"
    if not auth_ok then
      status, body = api_error(401, "Unauthorized")
    elseif applies and fault and fault.fault == "oversized" then
      status, body = ok { pad = ("x"):rep(math.max(0, (tonumber(fault.size) or 8 * 1024 * 1024) - 60)) }
    elseif applies then
      local okc, s, b = pcall(self.api, self, req)
      if okc then status, body = s, b else status, body = envelope(500, 500, "mock error: " .. tostring(s)) end
    end
    entry.status = status
  end
  if fault then
    local kind = fault.fault
    if kind == "status" then
      status = tonumber(fault.status) or 503
      body = fault.body or select(2, envelope(status, status, "injected"))
      content_type = fault.content_type
      if fault.retry_after ~= nil then extra["Retry-After"] = tostring(fault.retry_after) end
    elseif kind == "html" then
      status = tonumber(fault.status) or 502
      body, content_type = "<html><body>Bad Gateway</body></html>", "text/html"
    elseif kind == "malformed" then
      status, body, content_type = 200, '{"code": 0, "data": {', "application/json"
    elseif kind == "content_type" then
      content_type = fault.content_type or "text/html"
    elseif kind == "oversized" and is_receiver then
      body = ("x"):rep(tonumber(fault.size) or 8 * 1024 * 1024)
    elseif kind == "reset_after" then
      return nil, "reset"
    elseif kind == "truncated" then
      local full = response(status, body, extra, content_type)
      return full:sub(1, #full - math.floor(#body / 2)), "close"
    end
  end
  if self.state_file and self.dirty then
    self.dirty = false
    self:save()
  end
  return response(status, body, extra, content_type)
end

function Server:serve(sock)
  sock:settimeout(0)
  sock:setoption("tcp-nodelay", true)
  local c = setmetatable({ sock = sock, buf = "", server = self }, Conn)
  while not self.stop do
    local req = self:read_request(c)
    if req == false then
      c:send(response(400, encode { error = "bad request" }))
      break
    end
    if not req then break end
    local out, action = self:handle(req)
    if action == "reset" then break end
    if not c:send(out) then break end
    if action == "close" then break end
    local conn = (req.headers["connection"] or ""):lower()
    if conn == "close" or (req.version == "1.0" and conn ~= "keep-alive") then break end
  end
  sock:close()
end

function Server:start()
  if self.host ~= "127.0.0.1" and self.host ~= "localhost" and self.host ~= "::1" then
    error("the mock only listens on loopback", 0)
  end
  local srv = assert(socket.bind(self.host, self.port, 512))
  srv:settimeout(0)
  self.listener = srv
  local _, port = srv:getsockname()
  self.port = tonumber(port)
  return self.port
end

-- One turn of the scheduler: waits at most `timeout` seconds.
function Server:step(timeout)
  local recvt, sendt = { self.listener }, {}
  local now = socket.gettime()
  local next_wake = now + (timeout or 1)
  local by_sock = {}
  for co, w in pairs(self.threads) do
    if w.wait == "r" then
      recvt[#recvt + 1] = w.sock
      by_sock[w.sock] = co
    elseif w.wait == "w" then
      sendt[#sendt + 1] = w.sock
      by_sock[w.sock] = co
    elseif w.wait == "t" and w.until_ < next_wake then
      next_wake = w.until_
    end
  end
  local readable, writable = socket.select(recvt, sendt, math.max(0, next_wake - now))
  for _, s in ipairs(readable or {}) do
    if s == self.listener then
      for _ = 1, 64 do
        local client = self.listener:accept()
        if not client then break end
        self:spawn(function() self:serve(client) end)
      end
    elseif by_sock[s] then
      local co = by_sock[s]
      by_sock[s] = nil
      self:resume(co)
    end
  end
  for _, s in ipairs(writable or {}) do
    local co = by_sock[s]
    if co then
      by_sock[s] = nil
      self:resume(co)
    end
  end
  now = socket.gettime()
  for co, w in pairs(self.threads) do
    if w.wait == "t" and w.until_ <= now then self:resume(co) end
  end
end

function Server:run()
  while not self.stop do self:step(1) end
  if self.state_file then self:save() end
  self.listener:close()
end

--- Command line entry: main(argv) -> exit status.
function M.main(argv)
  local opts, i = {}, 1
  while i <= #argv do
    local a, v = argv[i], argv[i + 1]
    if a == "--port" then opts.port = tonumber(v) i = i + 1
    elseif a == "--host" then opts.host = v i = i + 1
    elseif a == "--network" then opts.network = v i = i + 1
    elseif a == "--api-key" then opts.api_key = v i = i + 1
    elseif a == "--state" then opts.state = v i = i + 1
    elseif a == "--latency" then opts.latency = tonumber(v) i = i + 1
    elseif a == "--quiet" then opts.quiet = true
    else
      io.stderr:write("mock: unknown option ", tostring(a), "\n")
      return 2
    end
    i = i + 1
  end
  local server = M.new(opts)
  local started, port = pcall(server.start, server)
  if not started then
    io.stderr:write("mock: ", tostring(port), "\n")
    return 2
  end
  io.stdout:write(("mock listening on http://%s:%d\n"):format(server.host == "localhost" and "127.0.0.1" or server.host, port))
  io.stdout:flush()
  server:run()
  return 0
end

-- Run as a script (not when loaded as a module).
if arg and arg[0] and arg[0]:find("offerslook%.lua$") and not package.loaded["postback.mock"] then
  os.exit(M.main(arg))
end

return M
