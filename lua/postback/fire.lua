--- Firing postbacks: fire (one), fire_many (many at once), on the pump.
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
local pump = require "postback.pump"
local retry = require "postback.retry"

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
  follow = 0,
}

local template_mt = core.template_mt

local function argerror(n, fname, msg)
  errors.argerror(n, fname, msg, 4)
end

--- Reads and checks fire options (raising on wrong types), filled with defaults.
function M.options(opts, n, fname, base)
  base = base or M.DEFAULTS
  if opts ~= nil and type(opts) ~= "table" then argerror(n, fname, "table expected, got " .. type(opts)) end
  opts = opts or {}
  local o = {}
  for k, v in pairs(base) do o[k] = v end
  for k, v in pairs(opts) do o[k] = v end
  for _, k in ipairs { "timeout", "connect_timeout", "retries", "backoff_base", "backoff_max",
                       "max_retry_time", "concurrency", "max_body", "follow", "delay" } do
    local v = o[k]
    if v ~= nil and (type(v) ~= "number" or v ~= v or v < 0) then
      argerror(n, fname, "option " .. k .. " must be a non-negative number")
    end
  end
  if o.concurrency < 1 then argerror(n, fname, "option concurrency must be >= 1") end
  o.retries = math.floor(o.retries)
  local okst = o.ok_status
  if okst ~= nil and type(okst) ~= "number" and type(okst) ~= "table" and type(okst) ~= "function" then
    argerror(n, fname, "option ok_status must be a number, a list of numbers or a function")
  end
  if o.ok_body ~= nil and type(o.ok_body) ~= "string" then
    argerror(n, fname, "option ok_body must be a Lua pattern (string)")
  end
  if o.headers ~= nil and type(o.headers) ~= "table" then
    argerror(n, fname, "option headers must be a table")
  end
  if o.encode ~= nil and o.encode ~= "url" and o.encode ~= "none" then
    argerror(n, fname, "option encode must be \"url\" or \"none\"")
  end
  -- nil when default: rendering then reads no option table at all
  if (o.encode or "url") ~= "url" or (o.missing or "empty") ~= "empty" then
    o.render = { encode = o.encode or "url", missing = o.missing or "empty" }
  end
  if type(okst) == "table" then
    local set = {}
    for _, s in ipairs(okst) do set[s] = true end
    o.ok_set = set
  end
  return o
end

--- nil when every header is a valid name with a value free of CR, LF and
-- NUL, else a validation error (nothing is sent then).
function M.check_headers(headers)
  for name, value in pairs(headers or {}) do
    local line = type(name) == "number" and tostring(value) or (tostring(name) .. ": " .. tostring(value))
    local n = line:match("^([^:]*):")
    if not n or n == "" or n:find("[%c%s\"(),/:;<=>?@%[\\%]{}]") or line:find("[\r\n%z]") then
      return errors.new("validation", { code = "invalid", field = "headers",
        message = "header refused before sending: a \"Name: value\" line without CR, LF or NUL is expected" })
    end
  end
  return nil
end

local function is_template(v)
  return type(v) == "userdata" and getmetatable(v) == template_mt
end

--- Renders a target into the URL to GET: url, or nil, err.
-- cache (optional) maps code strings to parsed templates. The URL is checked
-- unless `unchecked` (the engine checks it again before sending anyway).
function M.render_target(target, values, o, cache, unchecked)
  local t = target
  if type(target) == "table" and not is_template(target) then
    local ty = target.type
    if ty == 3 then
      return nil, errors.new("validation", {
        code = "type_not_allowed", field = "type",
        message = "type 3 (HTML Pixel) is HTML for a browser page and cannot be fired; "
          .. "use postback.render(code, values) to put it in a page",
      })
    end
    if ty ~= nil and ty ~= 1 and ty ~= 2 then
      return nil, errors.new("validation", { code = "range", field = "type",
        message = "type must be 1 (Image Pixel) or 2 (Postback URL)" })
    end
    t = target.code or target.url
    if type(t) ~= "string" then
      return nil, errors.new("validation", { code = "required", field = "code",
        message = "the record has no code to fire" })
    end
  end
  local url, err
  if is_template(t) then
    url, err = t:render(values, o.render)
  elseif type(t) == "string" then
    if values == nil and not t:find("[{%%]") then
      url = t
    else
      local tpl = cache and cache[t]
      if not tpl then
        tpl = core.template(t)
        if cache then cache[t] = tpl end
      end
      url, err = tpl:render(values, o.render)
    end
  else
    return nil, errors.new("validation", { code = "type", field = "target",
      message = "a target is a URL string, a template or a postback record, got " .. type(t) })
  end
  if not url then return nil, err end
  if unchecked then return url end
  local ok, why = core.check_url(url)
  if not ok then
    return nil, errors.new("validation", { code = "invalid_url", field = "url",
      message = "postback URL " .. why, url = require("postback.client").redact_url(url) })
  end
  return url
end

--- The engine profile of fire options: what every GET shares.
function M.profile(o)
  return {
    timeout = o.timeout, connect_timeout = o.connect_timeout, max_body = o.max_body,
    follow = o.follow, insecure = o.insecure, ca_file = o.ca_file, user_agent = o.user_agent,
    headers = o.headers,
  }
end

--- A pump job for a rendered URL: url-only (the profile's fast path) unless
-- this postback has headers of its own, which are merged over the profile's.
function M.job(url, o, headers)
  if headers == nil then return { url = url } end
  local merged = {}
  for k, v in pairs(o.headers or {}) do merged[k] = v end
  for k, v in pairs(headers) do merged[k] = v end
  local req = M.profile(o)
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

--- Judges a finished attempt (the values engine:next returns).
-- Returns result, retry (boolean).
function M.judge(o, job, status, body, raw, fail, message, seconds, sent)
  local url = job.url or job.req.url
  if url:find("@", 1, true) then url = require("postback.client").redact_url(url) end
  local attempts = job.attempts
  local r = { ok = false, attempts = attempts, url = url,
              time = attempts == 1 and seconds or (core.now() - job.started) }
  if fail then
    local err
    if fail == "refused" then
      err = errors.new("validation", { message = message, retryable = false, sent = false })
    else
      err = select(2, curl.result(status, body, raw, fail, message, seconds, sent))
    end
    err.url, err.method, err.attempts = url, "GET", job.attempts
    r.error = err
    return r, err.retryable and true or false
  end
  r.status, r.body = status, body
  if status_ok(o, status) then
    if o.ok_body and not body:find(o.ok_body) then
      r.error = errors.new("http", { status = status, url = url, method = "GET",
        attempts = job.attempts, retryable = false,
        message = "the receiver answered " .. status .. " but its body does not match ok_body" })
      return r, false
    end
    r.ok = true
    return r, false
  end
  local retryable = retry.retryable("GET", status, nil, false)
  r.error = errors.new("http", { status = status, url = url, method = "GET",
    attempts = job.attempts, retryable = retryable,
    retry_after = retryable and curl.header({ raw_headers = raw }, "retry-after") or nil,
    message = "the receiver refused the postback" })
  return r, retryable
end

--- The delay before retrying job, or nil when it must not be retried again.
function M.retry_delay(o, job, r)
  job.started = job.started or (core.now() - (r.time or 0))
  local ra = r.error and retry.retry_after(r.error.retry_after)
  return retry.next_delay({ retries = o.retries, backoff_base = o.backoff_base,
    backoff_max = o.backoff_max, max_retry_time = o.max_retry_time }, job.attempts, job.started, ra)
end

-- The cosocket transport when running inside OpenResty (or when asked for).
local function ngx_transport(o)
  local t = o.transport
  if type(t) == "table" and t.fire_many then return t end
  if t == nil and type(ngx) == "table" then
    local ok, ngxt = pcall(require, "postback.transport.ngx")
    if ok and ngxt.available() then return ngxt end
  end
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
    argerror(1, "fire_many", "array or iterator expected, got " .. it)
  end
  local o = M.options(opts, 2, "fire_many")
  local herr = M.check_headers(o.headers)
  if herr then return nil, herr end
  local via = ngx_transport(o)
  if via then return via.fire_many(items, opts) end
  if o.on_result ~= nil and type(o.on_result) ~= "function" then
    argerror(2, "fire_many", "option on_result must be a function")
  end
  local on_result = o.on_result
  local results = (on_result == nil) and {} or nil
  local cache = setmetatable({}, { __mode = "v" })
  local count = 0

  local function deliver(r)
    local i = r.index
    r.index = nil
    if results then results[i] = r end
    if on_result then on_result(r, i) end
  end

  local p
  local plain = o.ok_status == nil and o.ok_body == nil
  local function finish(job, status, body, raw, fail, message, seconds, sent)
    if plain and not fail and status >= 200 and status <= 299 and job.attempts == 1
       and not job.url:find("@", 1, true) then
      -- The common case, without the general judge: the job table
      -- becomes the result.
      local i = job.index
      job.index = nil
      job.ok, job.status, job.body, job.time = true, status, body, seconds
      if results then results[i] = job end
      if on_result then on_result(job, i) end
      return nil
    end
    local r, again = M.judge(o, job, status, body, raw, fail, message, seconds, sent)
    if again then
      local delay = M.retry_delay(o, job, r)
      if delay then return delay end
    end
    r.index = job.index
    deliver(r)
  end

  -- Turns item i into a job, or delivers its error at once.
  local render_opts = o.render
  local function make_job(item, i)
    if type(item) == "table" then
      -- The common shape {url = code, values = {...}}, rendered directly.
      local code, values = item.url, item.values
      if type(code) == "string" and item.headers == nil and item.code == nil and type(values) == "table" then
        local tpl = cache[code]
        if not tpl then
          tpl = core.template(code)
          cache[code] = tpl
        end
        local url, err = tpl:render(values, render_opts)
        if url then return { url = url, index = i } end
        deliver({ ok = false, attempts = 0, time = 0, error = err, index = i })
        return nil
      end
    end
    local target, values, headers = item, nil, nil
    if type(item) == "table" and not is_template(item) and item.code == nil then
      target, values, headers = item.url, item.values, item.headers
    end
    local url, err = M.render_target(target, values, o, cache, true)
    if not url then
      deliver({ ok = false, attempts = 0, time = 0, error = err, index = i })
      return nil
    end
    local job = M.job(url, o, headers)
    job.index = i
    return job
  end

  local len = it == "table" and #items or math.huge
  local function source()
    while count < len do
      local item
      if it == "table" then item = items[count + 1] else item = items() end
      if item == nil then return nil end
      count = count + 1
      local job = make_job(item, count)
      if job then return job end
    end
  end

  p = pump.new { concurrency = o.concurrency, per_host = o.per_host, finish = finish, source = source,
                 profile = M.profile(o) }
  local ok, perr = pcall(p.run, p)
  p:close()
  if not ok then error(perr, 0) end
  if results then return results end
  return count
end

--- Fires one postback: result (ok = true), or nil, err.
function M.fire(target, values, opts)
  if target == nil then argerror(1, "fire", "URL, template or record expected, got nil") end
  if values ~= nil and type(values) ~= "table" then argerror(2, "fire", "table expected, got " .. type(values)) end
  local o = M.options(opts, 3, "fire")
  o.concurrency = 1
  local herr = M.check_headers(o.headers)
  if herr then return nil, herr end
  local via = ngx_transport(o)
  if via then
    local r = via.fire_many({ { url = target, values = values } }, opts)[1]
    if r.ok then return r end
    local e = r.error
    e.attempts, e.body, e.status = r.attempts, r.body, r.status
    return nil, e
  end
  local url, err = M.render_target(target, values, o)
  if not url then return nil, err end
  local result
  local p = pump.new { concurrency = 1, profile = M.profile(o), finish = function(job, ...)
    local r, again = M.judge(o, job, ...)
    if again then
      local delay = M.retry_delay(o, job, r)
      if delay then return delay end
    end
    result = r
  end }
  p:push(M.job(url, o))
  local ok, perr = pcall(p.run, p)
  p:close()
  if not ok then error(perr, 0) end
  if result.ok then return result end
  local e = result.error
  e.attempts, e.body, e.status = result.attempts, result.body, result.status
  return nil, e
end

return M
