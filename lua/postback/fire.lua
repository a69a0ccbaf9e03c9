--- Firing postbacks: fire (one) and fire_many (many at once), on the executor.
--
-- A target is a URL string (its {macros} rendered with `values`), a
-- template object, or a postback record ({type=, code=}: types 1 and 2 fire
-- an HTTP GET of the rendered code; type 3 is HTML meant for a browser and
-- is refused). Each fire ends in a result table:
--   {ok=, status=, body= (capped), attempts=, time=, url=, error=}
-- where error is set when ok is false.
local core = require "postback.core"
local curl = require "postback.transport.curl"
local errors = require "postback.errors"
local executor = require "postback.executor"
local retry = require "postback.retry"
local util = require "postback.util"

local M = {}


M.DEFAULTS = {
  timeout = 10,
  connect_timeout = 5,
  retries = 2,
  backoff_base = 0.5,
  backoff_max = 30,
  max_retry_time = 300,
  concurrency = 16,
  max_body = 64 * 1024,
  max_url = 16384,
  follow = 0,
  user_agent = "postback/" .. util.VERSION,
}

local function positive(max) return { kind = "number", above = 0, max = max } end
local function int(min, max) return { kind = "number", integer = true, min = min, max = max } end

local function ok_status_check(name, v)
  local t = type(v)
  if t == "number" or t == "function" then return nil end
  if t == "table" then
    for _, s in ipairs(v) do
      if type(s) ~= "number" then return ("option %s must list status numbers"):format(name) end
    end
    return nil
  end
  return ("option %s must be a number, a list of numbers or a function"):format(name)
end

local function networks_check(name, v)
  if type(v) ~= "table" then return ("option %s must be a list of CIDRs"):format(name) end
  for _, c in ipairs(v) do
    if type(c) ~= "string" then return ("option %s must list CIDR strings"):format(name) end
  end
  local ok, why = core.netpolicy { allow_networks = v }
  if not ok then return ("option %s: %s"):format(name, tostring(why)) end
end

local function nameservers_check(name, v)
  if type(v) ~= "table" or #v == 0 then return ("option %s must be a list of addresses"):format(name) end
  for _, ns in ipairs(v) do
    if type(ns) ~= "string" or not ns:find("^[%x%.:%[%]]+$") then
      return ("option %s must list addresses such as \"192.0.2.53\" or \"[2001:db8::53]:53\""):format(name)
    end
  end
end

local BREAKER = {
  failures = int(1, 1e6), cooldown = positive(1e7), on_change = { kind = "function" },
}

local function breaker_check(name, v)
  if type(v) ~= "table" then return ("option %s must be a table {failures =, cooldown =}"):format(name) end
  local problem = util.check_options(v, BREAKER)
  if problem then return ("option %s: %s"):format(name, problem) end
end

--- The firing options: name -> check (see util.check_options).
M.OPTIONS = {
  timeout = positive(1e6),
  connect_timeout = positive(1e6),
  retries = int(0, 100),
  backoff_base = { kind = "number", min = 0, max = 1e6 },
  backoff_max = { kind = "number", min = 0, max = 1e7 },
  max_retry_time = { kind = "number", min = 0, max = 1e8 },
  retry_schedule = { kind = retry.check_schedule },
  concurrency = int(1, 100000),
  per_host = int(1, 1e6),
  per_host_rate = positive(1e6),
  breaker = { kind = breaker_check },
  max_body = int(1, 1073741824),
  max_url = int(16, 16777216),
  follow = int(0, 20),
  headers = { kind = "table" },
  encode = { kind = "string", values = { "url", "none" } },
  missing = { kind = "string", values = { "empty", "keep", "error" } },
  ok_status = { kind = ok_status_check },
  ok_body = { kind = "string" },
  on_result = { kind = "function" },
  on_error = { kind = "function" },
  insecure = { kind = "boolean" },
  ca_file = { kind = "string", no_crlf = true },
  user_agent = { kind = "string", no_crlf = true },
  proxy = { kind = "string", no_crlf = true },
  allow_private = { kind = "boolean" },
  allow_networks = { kind = networks_check },
  allow_userinfo = { kind = "boolean" },
  nameservers = { kind = nameservers_check },
  transport = { kind = "any" },
}

--- Reads and checks fire options (raising "bad argument" for any problem),
-- filled with defaults. extra: more option checks (the dispatcher's).
function M.options(opts, n, fname, extra, defaults)
  if opts ~= nil and type(opts) ~= "table" then
    util.argerror(n, fname, "table expected, got " .. type(opts), 3)
  end
  local spec = M.OPTIONS
  if extra then
    spec = {}
    for k, v in pairs(M.OPTIONS) do spec[k] = v end
    for k, v in pairs(extra) do spec[k] = v end
  end
  local problem = util.check_options(opts, spec)
  if problem then util.argerror(n, fname, problem, 3) end
  local o = {}
  for k, v in pairs(defaults or M.DEFAULTS) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  -- headers that cannot be sent are an error the caller gets back
  o.header_error = util.check_headers(o.headers)
  -- nil when default: rendering then reads no option table at all
  if (o.encode or "url") ~= "url" or (o.missing or "empty") ~= "empty" then
    o.render = { encode = o.encode or "url", missing = o.missing or "empty" }
  end
  if type(o.ok_status) == "table" then
    local set = {}
    for _, s in ipairs(o.ok_status) do set[s] = true end
    o.ok_set = set
  end
  o.plain = o.ok_status == nil and o.ok_body == nil
  o.policy = { retries = o.retries, backoff_base = o.backoff_base, backoff_max = o.backoff_max,
               max_retry_time = o.max_retry_time, retry_schedule = o.retry_schedule }
  return o
end

local template_mt = core.template_mt

local function is_template(v)
  return type(v) == "userdata" and getmetatable(v) == template_mt
end

local function invalid(code, field, message, url)
  return errors.new("validation", { code = code, field = field, message = message, url = url,
                                    retryable = false })
end

--- Renders a target into the URL to GET: url, or nil, err. The URL is
-- checked (scheme, host, size) as the engine would.
function M.render_target(target, values, o)
  local t = target
  if type(target) == "table" and not is_template(target) then
    local ty = target.type
    if ty == 3 then
      return nil, invalid("type_not_allowed", "type",
        "type 3 (HTML Pixel) is HTML for a browser page and cannot be fired; "
          .. "use postback.render(code, values) to put it in a page")
    end
    if ty ~= nil and ty ~= 1 and ty ~= 2 then
      return nil, invalid("range", "type", "type must be 1 (Image Pixel) or 2 (Postback URL)")
    end
    t = target.code or target.url
    if type(t) ~= "string" and not is_template(t) then
      return nil, invalid("required", "code", "the record has no code to fire")
    end
  end
  if values ~= nil and type(values) ~= "table" then
    return nil, invalid("type", "values", "values must be a table, got " .. type(values))
  end
  local url, err
  if is_template(t) or type(t) == "string" then
    url, err = core.render(t, values, o.render)
  else
    return nil, invalid("type", "target",
      "a target is a URL string, a template or a postback record, got " .. type(t))
  end
  if not url then return nil, err end
  if #url > (o.max_url or M.DEFAULTS.max_url) then
    return nil, invalid("too_long", "url", ("postback URL is longer than max_url (%d bytes)"):format(
      o.max_url or M.DEFAULTS.max_url))
  end
  -- the URL as it is sent (punycode host, bytes >= 0x80 encoded), checked
  local ascii, why = core.url_to_ascii(url, o.allow_userinfo)
  if not ascii then
    return nil, invalid("invalid_url", "url", "postback " .. why, util.redact_url(url))
  end
  return ascii
end

--- The engine options of fire options: what every GET shares.
function M.profile(o)
  return {
    timeout = o.timeout, connect_timeout = o.connect_timeout, max_body = o.max_body,
    max_url = o.max_url, follow = o.follow, insecure = o.insecure, ca_file = o.ca_file,
    -- proxy = "env": the *_proxy environment, which the engine reads as
    -- libcurl does. A postback it names a proxy for goes through that proxy
    -- (which resolves names: only IP-literal hosts are checked); any other
    -- (no proxy for its scheme, its host in no_proxy) connects directly,
    -- every address checked.
    user_agent = o.user_agent, proxy = o.proxy ~= "env" and o.proxy or nil,
    proxy_from_env = o.proxy == "env" or nil, headers = o.headers,
    concurrency = o.concurrency,
    -- the destination policy: every address checked at connect time
    destinations = true, allow_private = o.allow_private, allow_networks = o.allow_networks,
    allow_userinfo = o.allow_userinfo,
    -- inside nginx, where postback resolves names itself (the C engine
    -- uses the system's resolver)
    nameservers = o.nameservers,
  }
end

--- A job for a rendered URL: url-only (the transport's profile) unless
-- this postback has headers of its own, merged over the profile's.
function M.job(url, o, headers)
  if headers == nil then return { url = url } end
  local merged = {}
  for k, v in pairs(o.headers or {}) do merged[k] = v end
  for k, v in pairs(headers) do merged[k] = v end
  local req = M.profile(o)
  req.concurrency, req.destinations, req.allow_private, req.allow_networks = nil, nil, nil, nil
  req.allow_userinfo, req.nameservers = nil, nil
  req.method, req.url, req.headers = "GET", url, merged
  return { req = req }
end

local function status_ok(o, status)
  local okst = o.ok_status
  if okst == nil then return status >= 200 and status <= 299 end
  if o.ok_set then return o.ok_set[status] == true end
  if type(okst) == "function" then return okst(status) and true or false end
  return status == okst
end

--- The judge of fire attempts for the executor: a result (ok = true), or
-- nil and an error (retryable for transport failures, 429 and 5xx).
function M.judge(o)
  return function(job, resp, terr)
    local url = util.redact_url(job.url or job.req.url)
    local now = core.now()
    if terr then
      terr.url, terr.method, terr.attempts = url, "GET", job.attempts
      return nil, terr
    end
    local status = resp.status
    if status_ok(o, status) then
      local body = resp.body or ""
      if o.ok_body and not body:find(o.ok_body) then
        return nil, errors.new("http", { status = status, body = body, url = url, method = "GET",
          attempts = job.attempts, retryable = false,
          message = "the receiver answered " .. status .. " but its body does not match ok_body" })
      end
      return { ok = true, status = status, body = body, attempts = job.attempts, url = url,
               time = job.attempts == 1 and resp.seconds or (now - job.started) }
    end
    local retryable = retry.retryable("GET", status, nil, false)
    return nil, errors.new("http", { status = status, body = resp.body, url = url, method = "GET",
      attempts = job.attempts, retryable = retryable,
      retry_after = retryable and retry.retry_after(curl.header(resp, "retry-after")) or nil,
      message = "the receiver refused the postback" })
  end
end

--- The result table of a job's final outcome.
function M.result(job, value, err)
  if value then return value end
  local started = job.started
  return { ok = false, status = err.status, body = err.body, attempts = job.attempts or 0,
           url = err.url or (job.url and util.redact_url(job.url)), error = err,
           time = started and (core.now() - started) or 0 }
end

--- A transport object for fire options (the libcurl engine, or the
-- cosocket transport inside nginx, or the given one).
function M.transport(o)
  local mod = util.transport_module(o.transport)
  if type(mod) == "table" and mod.new then return mod.new(M.profile(o)) end
  if type(mod) == "table" and mod.submit then return mod end
  return executor.sync_transport(mod, M.profile(o))
end

--- The executor of a run with fire options o on transport t: o's retry
-- policy, limits, breaker and callbacks, attempts judged by fire.judge(o),
-- outcomes to deliver(job, value, err); more: its other fields (sink,
-- fast_job, ...).
function M.executor(o, t, deliver, more)
  local cfg = {
    transport = t, concurrency = o.concurrency, policy = o.policy,
    per_host = o.per_host, per_host_rate = o.per_host_rate, breaker = o.breaker,
    judge = M.judge(o), deliver = deliver, on_attempt = M.attempt_reporter(o), on_error = o.on_error,
  }
  for k, v in pairs(more or {}) do cfg[k] = v end
  return executor.new(cfg)
end

--- Fires many postbacks at once.
-- items: an array, or an iterator function returning items; an item is a
-- URL string/template/record, or {url=, values=, headers=}.
-- opts: concurrency, per_host, retries, timeout, ..., on_result(result, i).
-- Returns the results in input order (array input, or iterator without
-- on_result), or the count of items when on_result streams them.
function M.fire_many(items, opts)
  local it = type(items)
  if it ~= "table" and it ~= "function" then
    util.argerror(1, "fire_many", "array or iterator expected, got " .. it, 2)
  end
  local o = M.options(opts, 2, "fire_many")
  if o.header_error then return nil, o.header_error end
  local on_result = o.on_result
  local results = (on_result == nil) and {} or nil
  local count = 0

  local function deliver(job, value, err)
    local r = M.result(job, value, err)
    local i = job.index
    if results then results[i] = r end
    if on_result then on_result(r, i) end
  end

  local ex = M.executor(o, M.transport(o), deliver,
    { sink = { plain = o.plain, results = results, on_result = on_result } })

  -- An item refused before sending: delivered protected, as every outcome.
  local function fail_item(i, err)
    local job = { index = i, attempts = 0 }
    ex:call("deliver", deliver, job, job, nil, err)
  end

  -- An item the fast path does not take: rendered here.
  local function slow_item(item, i)
    local target, values, headers = item, nil, nil
    if type(item) == "table" and not is_template(item) and item.code == nil and item.type == nil then
      target, values, headers = item.url, item.values, item.headers
    end
    local herr = util.check_headers(headers)
    if herr then return fail_item(i, herr) end
    local url, err = M.render_target(target, values, o)
    if not url then return fail_item(i, err) end
    local job = M.job(url, o, headers)
    job.index, job.tag = i, i
    return job
  end

  local ok, perr = pcall(function()
    if ex.fast then
      local fs = { items = items, next = 1, render = o.render, slow = slow_item, failed = fail_item }
      ex:set_feed(fs)
      ex:run()
      count = fs.next - 1
    else
      local len = it == "table" and #items or math.huge
      ex.source = function()
        while count < len do
          local item
          if it == "table" then item = items[count + 1] else item = items() end
          if item == nil then return nil end
          count = count + 1
          local job = slow_item(item, count)
          if job then return job end
        end
      end
      ex:run()
    end
  end)
  ex:close()
  if not ok then error(perr, 0) end
  if results then return results end
  return count
end

-- The options of one d:fire.
local DISPATCH_OPTIONS = {
  headers = M.OPTIONS.headers, delay = { kind = "number", min = 0, max = 1e7 },
  encode = M.OPTIONS.encode, missing = M.OPTIONS.missing,
}

--- The options a dispatcher takes besides the firing ones (the one inside
-- nginx adds grace and sync_interval).
M.DISPATCHER_OPTIONS = {
  delay = DISPATCH_OPTIONS.delay,
  spool = { kind = "string" },
  spool_options = { kind = "table" },
  on_attempt = { kind = "function" },
  max_queue = { kind = "number", integer = true, min = 1, max = 1e9 },
}

--- A dispatcher's defaults: the firing ones, no delay, and extra (the one
-- inside nginx adds its own).
function M.dispatcher_defaults(extra)
  local d = {}
  for k, v in pairs(M.DEFAULTS) do d[k] = v end
  d.delay = 0
  for k, v in pairs(extra or {}) do d[k] = v end
  return d
end

--- Checks the timeout argument of a dispatcher's d:poll or d:wait (fname),
-- raising "bad argument" as that method's own.
function M.check_timeout(timeout, fname)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
    util.argerror(1, fname, "non-negative number expected", 3)
  end
end

--- What a dispatcher's spool owes: `for id, rec in fire.owed(sp) do`. A
-- record that is not a postback of ours is discarded (moved to .corrupt,
-- reported).
function M.owed(sp)
  local next_record = sp:owed()
  return function()
    for id, rec in next_record do
      if type(rec) == "table" and type(rec.url) == "string" then return id, rec end
      sp:discard(id)
    end
  end
end

--- Checks the arguments of a dispatcher's d:fire(target, values, opts) (or
-- the target and values of fire), raising "bad argument" as that fire's own
-- (level: its caller).
function M.check_dispatch(target, values, opts)
  if target == nil then util.argerror(1, "fire", "URL, template or record expected, got nil", 3) end
  if values ~= nil and type(values) ~= "table" then
    util.argerror(2, "fire", "table expected, got " .. type(values), 3)
  end
  if opts ~= nil then
    if type(opts) ~= "table" then util.argerror(3, "fire", "table expected, got " .. type(opts), 3) end
    local problem = util.check_options(opts, DISPATCH_OPTIONS)
    if problem then util.argerror(3, "fire", problem, 3) end
  end
end

--- The render options of one d:fire: its encode and missing over the
-- dispatcher's.
function M.dispatch_render(o, opts)
  if not (opts and (opts.encode or opts.missing)) then return o.render end
  local base = o.render or {}
  return { encode = opts.encode or base.encode or "url", missing = opts.missing or base.missing or "empty" }
end

--- The URL one d:fire sends, its headers checked, rendered and checked
-- with the dispatcher's options o: url, or nil, err.
function M.dispatch_url(o, target, values, opts)
  local herr = util.check_headers(opts and opts.headers)
  if herr then return nil, herr end
  return M.render_target(target, values, { render = M.dispatch_render(o, opts), max_url = o.max_url,
                                           allow_userinfo = o.allow_userinfo })
end

--- The executor's on_attempt for a dispatcher's on_attempt(info) option.
function M.attempt_reporter(o)
  local on_attempt = o.on_attempt
  if not on_attempt then return nil end
  return function(job, value, err)
    local r = M.result(job, value, err)
    on_attempt { id = job.id, attempt = job.attempts, status = r.status, ok = r.ok,
                 time = r.time, error = r.error, url = r.url }
  end
end

--- A final failure that no later try can change (a 4xx, a refused or
-- blocked destination, an answer over the size cap): a spooled postback
-- with it is not kept for the next dispatcher.
function M.final_failure(r)
  local e = r.error
  return e ~= nil and e.retryable == false
end

--- Fires one postback: result (ok = true), or nil, err (err.attempts,
-- err.status and err.body tell what happened).
function M.fire(target, values, opts)
  M.check_dispatch(target, values)
  local o = M.options(opts, 3, "fire")
  if o.header_error then return nil, o.header_error end
  local url, err = M.render_target(target, values, o)
  if not url then return nil, err end
  o.concurrency = 1
  local ex = executor.new { transport = M.transport(o), concurrency = 1, policy = o.policy,
    judge = M.judge(o), deliver = function() end, on_error = o.on_error }
  local job = M.job(url, o)
  local ok, value, ferr = pcall(ex.run_job, ex, job)
  ex:close()
  if not ok then error(value, 0) end
  if value then return value end
  return nil, ferr
end

return M
