--- The Offerslook API client: the six affiliate_postbacks calls and offers.
--
--   local c = assert(postback.client{ network = "demo", api_key = "..." })
--   local pb, err = c:create{ offer_id = 1, affiliate_id = 7, type = 2,
--                             code = "https://t.example/pb?c={click_id}" }
--
-- Every call returns value or nil, err (see postback.errors); only `each`
-- raises, as iterators do. Records are validated and the type is checked
-- against the offer's conversion_protocol before anything is sent.
local core = require "postback.core"
local curl = require "postback.transport.curl"
local errors = require "postback.errors"
local executor = require "postback.executor"
local json = require "postback.json"
local retry = require "postback.retry"
local util = require "postback.util"

local M = {}
local Client = {}
Client.__index = Client
Client.__name = "postback.client"
M.Client = Client

-- API keys live here, not in the client table: nothing that prints or
-- walks a client can reach them.
local secrets = setmetatable({}, { __mode = "k" })

local DEFAULTS = {
  timeout = 30,
  connect_timeout = 10,
  retries = 3,
  backoff_base = 0.2,
  backoff_max = 30,
  max_retry_time = 120,
  retry_post = false,
  check_protocol = true,
  protocol_ttl = 300,
  max_body = 16 * 1024 * 1024,
}

local function num(min, max, above) return { kind = "number", min = min, max = max, above = above } end

--- The client's options: name -> check (see util.check_options).
M.OPTIONS = {
  network = { kind = "any" }, api_key = { kind = "any" }, base_url = { kind = "any" },
  timeout = num(nil, 1e6, 0), connect_timeout = num(nil, 1e6, 0),
  retries = { kind = "number", integer = true, min = 0, max = 100 },
  backoff_base = num(0, 1e6), backoff_max = num(0, 1e7), max_retry_time = num(0, 1e8),
  retry_schedule = { kind = retry.check_schedule },
  retry_post = { kind = "boolean" }, check_protocol = { kind = "boolean" },
  protocol_ttl = num(0, 1e9), rate_limit = num(nil, 1e6, 0),
  headers = { kind = "table" }, verify_tls = { kind = "boolean" }, ca_file = { kind = "string", no_crlf = true },
  insecure = { kind = "boolean" }, user_agent = { kind = "string", no_crlf = true },
  transport = { kind = "any" }, on_request = { kind = "function" },
  max_body = { kind = "number", integer = true, min = 1, max = 1073741824 },
  per_host = { kind = "number", integer = true, min = 1, max = 1e6 },
  proxy = { kind = "string", no_crlf = true },
}

local FIELDS = {
  id = true, offer_id = true, affiliate_id = true, event_id = true, code = true,
  status = true, type = true, create_time = true, update_time = true,
}
local OPERATORS = {
  EQUAL_TO = true, NOT_EQUAL_TO = true, LESS_THAN = true, LESS_THAN_OR_EQUAL_TO = true,
  GREATER_THAN = true, GREATER_THAN_OR_EQUAL_TO = true, CONTAINS = true,
  NOT_CONTAINS = true, NULL = true, NOT_NULL = true,
}
local CREATE_FIELDS = { "offer_id", "affiliate_id", "event_id", "type", "code" }
local UPDATE_FIELDS = { code = true, status = true, type = true }
local MAX_ID = 9007199254740991

local function invalid(message, field, code)
  local item = { field = field, code = code or "invalid", message = message }
  return errors.new("validation", { message = message, errors = { item } })
end

local function has_crlf(s)
  return s:find("[\r\n%z]") ~= nil
end

local redact_url = util.redact_url

--- Creates a client. See DESIGN "Public API" for the options.
-- @return client, or nil, err (kind "validation") for bad option values
function M.new(opts)
  if type(opts) ~= "table" then
    util.argerror(1, "client", "table expected, got " .. type(opts), 2)
  end
  local problem = util.check_options(opts, M.OPTIONS)
  if problem then
    local field = problem:match("^option ([%w_]+)") or problem:match("^unknown option ([%w_]+)")
    return nil, invalid(problem, field or "options", problem:find("^unknown") and "unknown_field" or "range")
  end
  local network, key = opts.network, opts.api_key
  if type(network) ~= "string" or network == "" or network:find("[^%w%-_.]") then
    return nil, invalid("option network must be the network name (letters, digits, - _ .)", "network", "required")
  end
  if type(key) ~= "string" or key == "" or has_crlf(key) then
    return nil, invalid("option api_key must be a non-empty string", "api_key", "required")
  end
  local base = opts.base_url or ("https://" .. network .. ".api.offerslook.com")
  if type(base) ~= "string" then
    return nil, invalid("option base_url must be a string", "base_url", "type")
  end
  base = base:gsub("/+$", "")
  local ok, why = core.check_url(base .. "/")
  if not ok then
    return nil, invalid("option base_url " .. why, "base_url", "invalid_url")
  end
  if base:find("^%a[%w+.-]*://[^/]*@") then
    return nil, invalid("option base_url must not carry credentials (use network and api_key)", "base_url", "invalid_url")
  end
  local https, loopback = core.url_info(base)
  if not https and not loopback and not opts.insecure then
    return nil, invalid("option base_url must be https:// (the API key would cross the network "
      .. "in clear text); use insecure = true to override", "base_url", "insecure")
  end

  local self = setmetatable({ network = network, base_url = base }, Client)
  for k, v in pairs(DEFAULTS) do self[k] = v end
  for _, k in ipairs { "timeout", "connect_timeout", "backoff_base", "backoff_max", "max_retry_time",
                       "protocol_ttl", "max_body", "retry_schedule", "retries" } do
    if opts[k] ~= nil then self[k] = opts[k] end
  end
  self.rate_limit = opts.rate_limit
  self.retry_post = opts.retry_post and true or false
  self.check_protocol = opts.check_protocol ~= false
  self.insecure = opts.insecure and true or false
  if opts.verify_tls == false then self.insecure = true end
  self.ca_file = opts.ca_file
  self.proxy = opts.proxy
  self.user_agent = opts.user_agent or ("postback/" .. util.VERSION)
  self.on_request = opts.on_request
  self.protocols = {} -- offer_id -> {cp, expires}

  local headers = {}
  for name, value in pairs(opts.headers or {}) do
    if type(name) ~= "string" or (type(value) ~= "string" and type(value) ~= "number") then
      return nil, invalid("option headers must map names to strings", "headers", "type")
    end
    if name:lower() == "authorization" then
      return nil, invalid("option headers must not set Authorization (use network and api_key)", "headers")
    end
    headers[name] = tostring(value)
  end
  local herr = util.check_headers(headers)
  if herr then return nil, invalid("option " .. herr.message, "headers") end
  self.headers = headers
  secrets[self] = { key, util.base64(network .. ":" .. key) }

  -- The executor every call of this client runs on (a call is a batch of one).
  local transport = opts.transport
  if transport ~= nil and type(transport) ~= "function"
     and not (type(transport) == "table" and (transport.request or transport.new or transport.submit)) then
    return nil, invalid("option transport must be a function(req) or a transport module", "transport", "type")
  end
  local mod = util.transport_module(transport)
  local t
  if mod == curl then
    t = curl.new { per_host = opts.per_host }
  else
    -- Any other transport runs one request at a time in the caller's
    -- coroutine (inside nginx: the request or timer handler that calls).
    if type(mod) == "table" and mod.new then mod = mod.new(opts) end
    t = executor.sync_transport(mod)
  end
  self.ex = executor.new {
    transport = t, concurrency = 1, policy = self, rate_limit = self.rate_limit,
    judge = function(job, resp, terr) return M.judge(self, job, resp, terr) end,
    deliver = function() end,
    on_attempt = function(job, _, err) M.report(self, job, err) end,
  }
  return self
end

function Client:__tostring()
  return ("postback.client (network %s, %s)"):format(self.network, self.base_url)
end

--- Releases the client's connections (also done by the garbage collector).
function Client:close()
  if self.ex then self.ex:close() end
end
Client.__close = Client.close

-- A positive integer id as a decimal string, or nil, err.
local function id_string(id, what)
  what = what or "id"
  local n = type(id) == "number" and json.tointeger(id)
  if not n or n < 1 or n > MAX_ID then
    return nil, invalid(("%s must be a positive integer, got %s"):format(what, type(id) == "string" and ("%q"):format(id) or tostring(id)), what, "range")
  end
  return ("%d"):format(n)
end
M.id_string = id_string

--- The request table for one call (used by the blocking path and by batch).
function Client:build(method, path, query, body)
  local url = self.base_url .. path .. (query and query ~= "" and ("?" .. query) or "")
  local headers = { Accept = "application/json" }
  for k, v in pairs(self.headers) do headers[k] = v end
  local text
  if body ~= nil then
    local err
    text, err = json.encode(body)
    if not text then return nil, invalid("cannot encode the request body: " .. tostring(err), "body") end
    headers["Content-Type"] = "application/json"
  end
  return {
    method = method,
    url = url,
    headers = headers,
    body = text,
    username = self.network,
    password = secrets[self][1],
    timeout = self.timeout,
    connect_timeout = self.connect_timeout,
    max_body = self.max_body,
    insecure = self.insecure,
    ca_file = self.ca_file,
    user_agent = self.user_agent,
    proxy = self.proxy ~= "env" and self.proxy or nil,
    proxy_from_env = self.proxy == "env" or nil,
    -- libcurl re-sends a request by itself when a reused connection closes
    -- before the answer; a POST must not be sent twice, and a DELETE's
    -- retry must be ours (to know that a 404 then means "already gone").
    fresh_connect = (method == "POST" and not self.retry_post) or method == "DELETE",
  }
end

-- The start of a body for an error message, scrubbed of the secrets first:
-- a cut must not leave part of one behind.
local function snippet(body, keys)
  body = util.scrub(body or "", keys)
  body = body:gsub("[%c]", " ")
  if #body > 200 then body = body:sub(1, 200) .. "..." end
  return body
end

--- Interprets a transport outcome: data, or nil, err (err.retryable set).
-- Server text that goes into an error is scrubbed of the API key and of
-- its Basic form: a server that echoes the request cannot leak them.
function Client:interpret(req, resp, err)
  local method, url = req.method, redact_url(req.url)
  local keys = secrets[self]
  if not resp then
    err.method, err.url = method, url
    err.message = util.scrub(err.message, keys)
    err.retryable = retry.retryable(method, nil, err, self.retry_post)
    return nil, err
  end
  local status, body = resp.status, resp.body or ""
  local ok_status = status >= 200 and status <= 299
  local retryable = retry.retryable(method, status, nil, self.retry_post)
  local retry_after = retryable and retry.retry_after(curl.header(resp, "retry-after")) or nil
  local doc, derr = json.decode(body)
  if type(doc) ~= "table" or (doc.code == nil and ok_status) then
    if ok_status then
      return nil, errors.new("decode", {
        message = util.scrub("the answer is not a JSON envelope: " .. (derr or snippet(body, keys)), keys),
        status = status, method = method, url = url, retryable = false,
      })
    end
    return nil, errors.new("http", {
      message = util.scrub(("HTTP %d: %s"):format(status, snippet(body, keys)), keys),
      status = status, method = method, url = url, retryable = retryable, retry_after = retry_after,
    })
  end
  local code = json.tointeger(doc.code) or doc.code
  if ok_status and code == 0 then
    local data = doc.data
    if data == json.null then data = nil end
    return data == nil and {} or data
  end
  local message = doc.message
  if type(message) ~= "string" then message = ok_status and "API error" or ("HTTP " .. status) end
  return nil, errors.new("api", {
    message = util.scrub(message, keys), status = status, code = code, method = method, url = url,
    retryable = retryable and not ok_status, retry_after = retry_after,
  })
end

--- The executor's judge of one attempt of a call.
function M.judge(self, job, resp, err)
  job.status = resp and resp.status or nil
  local data, ierr = self:interpret(job.req, resp, err)
  if data ~= nil then return data end
  ierr.attempts = job.attempts
  if job.req.method == "DELETE" and job.attempts > 1 and ierr.status == 404 then
    -- an earlier try deleted it and its answer was lost: done
    return {}
  end
  return nil, ierr
end

-- Tells on_request about an attempt (its errors are the caller's: ignored).
function M.report(self, job, err)
  if not self.on_request then return end
  pcall(self.on_request, {
    method = job.req.method, url = redact_url(job.req.url), attempt = job.attempts,
    status = job.status, seconds = core.now() - (job.t0 or core.now()),
    error = err and tostring(err) or nil,
  })
end

--- Sends one call with the retry policy: data or nil, err.
function Client:call(method, path, query, body)
  local req, berr = self:build(method, path, query, body)
  if not req then return nil, berr end
  return self.ex:run_job { req = req }
end

local function postback_of(data)
  local pb = type(data) == "table" and data.affiliate_postback
  if type(pb) ~= "table" then return nil end
  return json.postback(pb)
end

local function need_postback(self, data, req_method, path)
  local pb = postback_of(data)
  if pb then return pb end
  return nil, errors.new("decode", {
    message = "the answer has no data.affiliate_postback",
    method = req_method, url = redact_url(self.base_url .. path),
  })
end

--- The offer's conversion_protocol (cached for protocol_ttl seconds).
function Client:protocol(offer_id)
  local cached = self.protocols[offer_id]
  if cached and cached[2] > core.now() then return cached[1] end
  local offer, err = self:offer(offer_id)
  if not offer then return nil, err end
  local cp = json.tointeger(tonumber(offer.conversion_protocol) or -1)
  if not cp or cp < 1 or cp > 3 then
    return nil, errors.new("decode", {
      message = ("offer %s has no readable conversion_protocol"):format(tostring(offer_id)),
    })
  end
  self.protocols[offer_id] = { cp, core.now() + self.protocol_ttl }
  return cp
end

--- GET /v1/offers/{id}: the offer (data.offer), or nil, err.
function Client:offer(id)
  local sid, err = id_string(id, "offer_id")
  if not sid then return nil, err end
  local data, cerr = self:call("GET", "/v1/offers/" .. sid)
  if not data then return nil, cerr end
  local offer = type(data.offer) == "table" and data.offer or data
  return json.integers(offer, { "id", "conversion_protocol" })
end

-- Validation with the offer's protocol; nil, err when something is wrong.
local function check_record(self, rec, partial, offer_id)
  local ok, list = core.validate(rec, partial)
  if not ok then return nil, errors.validation(list) end
  if rec.type ~= nil and self.check_protocol and offer_id and offer_id ~= 0 then
    local cp, err = self:protocol(offer_id)
    if not cp then return nil, err end
    ok, list = core.validate(rec, partial, cp)
    if not ok then return nil, errors.validation(list) end
  end
  return true
end

local function need_table(v, n, fname)
  if type(v) ~= "table" then util.argerror(n, fname, "table expected, got " .. type(v), 3) end
end

-- Each call is prepared first: checked, validated against the offer's
-- protocol, and described as {method, path, query, body, finish}. `finish`
-- turns the API's data into the value the call returns. The blocking
-- methods run a prepared call at once; batch runs many concurrently.
local prepare = {}

local function run(self, call, err)
  if not call then return nil, err end
  local data, cerr = self:call(call.method, call.path, call.query, call.body)
  if data == nil then return nil, cerr end
  return call.finish(data)
end

local function expect_postback(self, method, path)
  return function(data)
    return need_postback(self, data, method, path)
  end
end

function prepare.create(self, rec)
  need_table(rec, 1, "create")
  local ok, err = check_record(self, rec, false, json.tointeger(type(rec.offer_id) == "number" and rec.offer_id or -1))
  if not ok then return nil, err end
  local body = {}
  for _, k in ipairs(CREATE_FIELDS) do
    local v = rec[k]
    if type(v) == "number" then v = json.tointeger(v) or v end
    body[k] = v
  end
  local path = "/v1/affiliate_postbacks"
  return { method = "POST", path = path, body = body, finish = expect_postback(self, "POST", path) }
end

function prepare.get(self, id)
  local sid, err = id_string(id)
  if not sid then return nil, err end
  local path = "/v1/affiliate_postbacks/" .. sid
  return { method = "GET", path = path, finish = expect_postback(self, "GET", path) }
end

function prepare.update(self, id, fields)
  local sid, err = id_string(id)
  if not sid then return nil, err end
  need_table(fields, 2, "update")
  local body, n = {}, 0
  for k, v in pairs(fields) do
    if not UPDATE_FIELDS[k] then
      local what = FIELDS[k] and (tostring(k) .. " cannot be changed by update (PUT takes code, status and type)")
        or (tostring(k) .. " is not a postback field")
      return nil, invalid(what, tostring(k), "unknown_field")
    end
    if type(v) == "number" then v = json.tointeger(v) or v end
    body[k] = v
    n = n + 1
  end
  if n == 0 then return nil, invalid("update needs at least one of code, status, type", "fields", "required") end
  local offer_id
  if body.type ~= nil and self.check_protocol then
    -- The rule depends on the postback's offer: read it first.
    local current, gerr = self:get(id)
    if not current then return nil, gerr end
    offer_id = current.offer_id
  end
  local ok, verr = check_record(self, body, true, offer_id)
  if not ok then return nil, verr end
  local path = "/v1/affiliate_postbacks/" .. sid
  return { method = "PUT", path = path, body = body, finish = expect_postback(self, "PUT", path) }
end

function prepare.set_status(self, id, status)
  local sid, err = id_string(id)
  if not sid then return nil, err end
  if status ~= "approved" and status ~= "rejected" then
    return nil, invalid(('status must be "approved" or "rejected", got %s'):format(tostring(status)), "status", "invalid_status")
  end
  local path = "/v1/affiliate_postbacks/" .. sid
  return { method = "PATCH", path = path, query = "status=" .. status, finish = expect_postback(self, "PATCH", path) }
end

function prepare.delete(self, id)
  local sid, err = id_string(id)
  if not sid then return nil, err end
  return { method = "DELETE", path = "/v1/affiliate_postbacks/" .. sid,
           finish = function(data) return postback_of(data) or true end }
end

M.prepare = prepare

--- POST /v1/affiliate_postbacks: the created postback, or nil, err.
-- Sends offer_id, affiliate_id, event_id (when given), type and code; other
-- postback fields (id, status, times) are read-only and not sent.
function Client:create(rec) return run(self, prepare.create(self, rec)) end

--- GET /v1/affiliate_postbacks/{id}: the postback, or nil, err.
function Client:get(id) return run(self, prepare.get(self, id)) end

--- PUT /v1/affiliate_postbacks/{id} with any of code, status, type.
function Client:update(id, fields) return run(self, prepare.update(self, id, fields)) end

--- PATCH /v1/affiliate_postbacks/{id}?status=approved|rejected (no body).
function Client:set_status(id, status) return run(self, prepare.set_status(self, id, status)) end

--- DELETE /v1/affiliate_postbacks/{id}: the deleted postback when the API
-- returns it, else true.
function Client:delete(id) return run(self, prepare.delete(self, id)) end

-- An op's name and arguments: {name, a, b} or {op = name, id =, record =
-- | fields =, status =} (method = or call = also name it).
local function op_args(op)
  if type(op) ~= "table" then return nil end
  local name = op[1] or op.op or op.method or op.call
  if op[1] ~= nil then return name, op[2], op[3] end
  if name == "create" then return name, op.record or op.rec or op.fields or op.data end
  if name == "update" then return name, op.id, op.fields or op.record or op.changes or op.data end
  if name == "set_status" then return name, op.id, op.status end
  return name, op.id
end

--- Many API calls at once. ops is an array of {name, args...} with name one
-- of create, get, update, set_status, delete, e.g. {"update", 7, {code = c}},
-- or of named ops: {op = "update", id = 7, fields = {code = c}}.
-- opts: concurrency (default 8), on_progress(done, total, result, index).
-- Returns an array of results in op order: {ok = true, value = v} or
-- {ok = false, error = err}. Each op runs exactly as the single call does:
-- the same request, retry policy, rate limit and rules (a POST is never
-- sent twice; a DELETE retried after a lost answer that finds the postback
-- gone has succeeded).
function Client:batch(ops, opts)
  need_table(ops, 1, "batch")
  if opts ~= nil then need_table(opts, 2, "batch") end
  opts = opts or {}
  local problem = util.check_options(opts, {
    concurrency = { kind = "number", integer = true, min = 1, max = 100000 },
    on_progress = { kind = "function" },
  })
  if problem then util.argerror(2, "batch", problem, 2) end
  local concurrency = opts.concurrency or 8
  local on_progress = opts.on_progress
  local total, done, results = #ops, 0, {}
  local function complete(i, value, err)
    results[i] = value ~= nil and { ok = true, value = value } or { ok = false, error = err }
    done = done + 1
    if on_progress then
      self.ex:call("on_progress", on_progress, { id = i }, done, total, results[i], i)
    end
  end

  -- Prepare every op (local checks, protocol look-ups) before sending any.
  local calls = {}
  for i = 1, total do
    local name, a, b = op_args(ops[i])
    local fn = prepare[name]
    if not fn then
      complete(i, nil, invalid(("op %d: expected {name, args...} or {op = name, ...} with name one of "
        .. "create, get, update, set_status, delete"):format(i), "op", "invalid"))
    else
      local ok, call, err = pcall(fn, self, a, b)
      if not ok then
        complete(i, nil, invalid(("op %d: %s"):format(i, tostring(call)), "op", "invalid"))
      elseif call then
        calls[#calls + 1] = { i, call }
      else
        complete(i, nil, err)
      end
    end
  end

  local ex = self.ex
  local saved = ex.concurrency
  ex.concurrency = concurrency
  for _, c in ipairs(calls) do
    local i, call = c[1], c[2]
    local req, berr = self:build(call.method, call.path, call.query, call.body)
    if req then
      ex:push { req = req, on_done = function(_, data, err)
        if data ~= nil then complete(i, call.finish(data)) else complete(i, nil, err) end
      end }
    else
      complete(i, nil, berr)
    end
  end
  local ok, perr = pcall(ex.run, ex)
  ex.concurrency = saved
  if not ok then error(perr, 0) end
  return results
end

local function scalar(v, what)
  local t = type(v)
  if t == "number" then
    local i = json.tointeger(v)
    if i then return ("%d"):format(i) end
    if v ~= v or v == math.huge or v == -math.huge then return nil end
    return ("%.14g"):format(v)
  elseif t == "string" then
    return v
  elseif t == "boolean" then
    return v and "1" or "0"
  end
  return nil, what
end

--- Encodes a list query for the wire: query string or nil, err.
-- query = {page=, limit=, sort=, fields={...}, filters={field = value | {OP = value}}}
function M.encode_query(query)
  local enc = core.encode
  local parts = {}
  for k in pairs(query) do
    if k ~= "page" and k ~= "limit" and k ~= "sort" and k ~= "fields" and k ~= "filters" then
      return nil, invalid("unknown list option " .. tostring(k), tostring(k), "unknown_field")
    end
  end
  if query.page ~= nil then
    local p = type(query.page) == "number" and json.tointeger(query.page)
    if not p or p < 1 then return nil, invalid("page must be an integer >= 1", "page", "range") end
    parts[#parts + 1] = "offset=" .. p
  end
  if query.limit ~= nil then
    local l = type(query.limit) == "number" and json.tointeger(query.limit)
    if not l or l < 1 or l > 1000 then return nil, invalid("limit must be an integer from 1 to 1000", "limit", "range") end
    parts[#parts + 1] = "limit=" .. l
  end
  if query.sort ~= nil then
    local sign, field = tostring(query.sort):match("^([+-]?)([%w_]+)$")
    if type(query.sort) ~= "string" or not field or not FIELDS[field] then
      return nil, invalid("sort must be +field or -field with a postback field, got " .. tostring(query.sort), "sort", "invalid")
    end
    parts[#parts + 1] = "sort=" .. enc((sign == "" and "+" or sign) .. field)
  end
  if query.fields ~= nil then
    if type(query.fields) ~= "table" or #query.fields == 0 then
      return nil, invalid("fields must be a non-empty array of field names", "fields", "type")
    end
    for _, f in ipairs(query.fields) do
      if not FIELDS[f] then return nil, invalid("fields: unknown field " .. tostring(f), "fields", "unknown_field") end
    end
    -- a comma list, as documented (the names are checked identifiers)
    parts[#parts + 1] = "fields=" .. table.concat(query.fields, ",")
  end
  if query.filters ~= nil then
    if type(query.filters) ~= "table" then return nil, invalid("filters must be a table", "filters", "type") end
    local names = {}
    for field in pairs(query.filters) do
      if type(field) ~= "string" or not FIELDS[field] then
        return nil, invalid("filters: " .. tostring(field) .. " is not a filterable field", "filters", "unknown_field")
      end
      names[#names + 1] = field
    end
    table.sort(names)
    for _, field in ipairs(names) do
      local spec = query.filters[field]
      if type(spec) ~= "table" then spec = { EQUAL_TO = spec } end
      local ops = {}
      for op in pairs(spec) do
        if not OPERATORS[op] then
          return nil, invalid(("filters: unknown operator %s for %s"):format(tostring(op), field), "filters", "invalid")
        end
        ops[#ops + 1] = op
      end
      table.sort(ops)
      for _, op in ipairs(ops) do
        local v = scalar(spec[op])
        if not v then
          return nil, invalid(("filters: value for %s %s must be a string, number or boolean"):format(field, op), "filters", "type")
        end
        parts[#parts + 1] = enc("filters[" .. field .. "][" .. op .. "]") .. "=" .. enc(v)
      end
    end
  end
  return table.concat(parts, "&")
end

--- GET /v1/affiliate_postbacks: the API's data table
-- ({rowset, totalPages, totalRows, offset, limit}), or nil, err.
function Client:list(query)
  if query ~= nil then need_table(query, 1, "list") end
  local qs, err = M.encode_query(query or {})
  if not qs then return nil, err end
  local data, cerr = self:call("GET", "/v1/affiliate_postbacks", qs)
  if not data then return nil, cerr end
  json.integers(data, { "totalPages", "totalRows", "offset", "limit" })
  local rows = data.rowset
  if rows == nil or rows == json.null then
    rows = {}
    data.rowset = rows
  end
  if type(rows) ~= "table" or (next(rows) ~= nil and rows[1] == nil) then
    return nil, errors.new("decode", { message = "data.rowset is not an array", method = "GET", retryable = false })
  end
  for _, row in ipairs(rows) do
    if type(row) ~= "table" then
      return nil, errors.new("decode", { message = "data.rowset holds a row that is not an object",
        method = "GET", retryable = false })
    end
    json.postback(row)
  end
  return data
end

local function decode_error(message)
  return errors.new("decode", { message = message, method = "GET", retryable = false })
end

-- A page count the server gave: a non-negative integer, else nil.
local function page_count(v)
  local n = type(v) == "number" and json.tointeger(v)
  if not n or n < 0 then return nil end
  return n
end

--- Iterates every postback matching query (constant memory). Raises the
-- error (an error table) when a page cannot be read.
-- Paging is by key: sorted by id ascending, each page asks for
-- filters[id][GREATER_THAN] = the last id seen (with the caller's filters),
-- so records that leave or enter the filter, are deleted or created while
-- the iteration runs are never skipped or repeated. A query with another
-- sort, or a page, is read by offset pages, which are not stable when the
-- result set changes.
function Client:each(query)
  if query ~= nil then need_table(query, 1, "each") end
  local q = {}
  for k, v in pairs(query or {}) do q[k] = v end
  q.limit = q.limit or 100
  local keyed = q.page == nil and (q.sort == nil or q.sort == "id" or q.sort == "+id")
  if keyed then q.sort = "+id" else q.page = q.page or 1 end
  local _, qerr = M.encode_query(q)
  if qerr then error(qerr, 2) end

  local caller_filters = q.filters or {}
  local floor -- the caller's own id > bound, if any
  local idf = caller_filters.id
  if type(idf) == "table" then floor = idf.GREATER_THAN end

  local rows, i, last_id, last_page, done = {}, 0, nil, nil, false
  local read, budget = 0, nil -- rows read; at most what matched at the start plus a page
  local function fetch()
    if keyed then
      local filters = {}
      for k, v in pairs(caller_filters) do filters[k] = v end
      if last_id then
        local spec = {}
        if type(idf) == "table" then for k, v in pairs(idf) do spec[k] = v end
        elseif idf ~= nil then spec.EQUAL_TO = idf end
        spec.GREATER_THAN = (floor and floor > last_id) and floor or last_id
        filters.id = spec
      end
      q.filters = next(filters) and filters or nil
    end
    local data, err = self:list(q)
    if not data then error(err, 3) end
    rows, i = data.rowset, 0
    local pages = page_count(data.totalPages)
    if pages == nil then
      error(decode_error("the API's totalPages is not a non-negative integer: " .. tostring(data.totalPages)), 3)
    end
    local total = page_count(data.totalRows)
    -- A server whose counts do not add up cannot make this run forever:
    -- at most what matched at the start, plus one page, is read.
    if budget == nil then budget = (total or pages * q.limit) + q.limit end
    read = read + #rows
    if read >= budget then done = true end
    if keyed then
      local prev = last_id
      for _, row in ipairs(rows) do
        local id = type(row) == "table" and json.tointeger(row.id)
        if not id or (prev and id <= prev) then
          error(decode_error("the API returned postbacks out of id order for a keyed page "
            .. "(filters[id][GREATER_THAN] was not applied)"), 3)
        end
        prev = id
      end
      if #rows == 0 or (total and #rows >= total) then done = true end
      if prev then last_id = prev end
    else
      local bound = total and (math.floor(total / q.limit) + 1) or pages
      last_page = math.min(pages, bound)
      if #rows == 0 or q.page >= last_page then done = true end
      q.page = q.page + 1
    end
  end
  return function()
    i = i + 1
    if rows[i] == nil then
      if done then return nil end
      fetch()
      i = 1
      if rows[1] == nil then return nil end
    end
    return rows[i]
  end
end

return M
