--- Firing postbacks: fire (one), fire_many (many at once), on the pump.
--
-- A target is a URL string (its {macros} rendered with `values`), a
-- template object, or a postback record ({type=, code=}: types 1 and 2 fire
-- an HTTP GET of the rendered code; type 3 is HTML meant for a browser and
-- is refused). Each fire ends in a result table:
--   {ok=, status=, body= (capped), attempts=, time=, url=, error=}
-- where error is set when ok is false.
local core = require "postback.core"
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
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), 4)
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
  o.render = { encode = o.encode or "url", missing = o.missing or "empty" }
  if type(okst) == "table" then
    local set = {}
    for _, s in ipairs(okst) do set[s] = true end
    o.ok_set = set
  end
  return o
end

local function is_template(v)
  return type(v) == "userdata" and getmetatable(v) == template_mt
end

--- Renders a target into the URL to GET: url, or nil, err.
-- cache (optional) maps code strings to parsed templates.
function M.render_target(target, values, o, cache)
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
  local ok, why = core.check_url(url)
  if not ok then
    return nil, errors.new("validation", { code = "invalid_url", field = "url",
      message = "postback URL " .. why, url = require("postback.client").redact_url(url) })
  end
  return url
end

--- The transport request for a rendered URL.
function M.request(url, o, headers)
  return {
    method = "GET", url = url, headers = headers or o.headers,
    timeout = o.timeout, connect_timeout = o.connect_timeout,
    max_body = o.max_body, follow = o.follow,
    insecure = o.insecure, ca_file = o.ca_file, user_agent = o.user_agent,
  }
end

local function status_ok(o, status)
  local okst = o.ok_status
  if okst == nil then return status >= 200 and status <= 299 end
  if o.ok_set then return o.ok_set[status] == true end
  if type(okst) == "function" then return okst(status) and true or false end
  return status == okst
end

--- Judges a finished attempt. Returns result, retry (boolean).
function M.judge(o, job, resp, err)
  local redact = require("postback.client").redact_url
  local r = { ok = false, attempts = job.attempts, url = redact(job.req.url),
              time = core.now() - job.started, index = job.index, item = job.item }
  if not resp then
    err.url, err.method, err.attempts = r.url, "GET", job.attempts
    r.error = err
    return r, err.retryable ~= false and (err.kind == "transport" or err.kind == "timeout")
  end
  r.status, r.body = resp.status, resp.body
  if status_ok(o, resp.status) then
    if o.ok_body and not resp.body:find(o.ok_body) then
      r.error = errors.new("http", { status = resp.status, url = r.url, method = "GET",
        attempts = job.attempts, retryable = false,
        message = "the receiver answered " .. resp.status .. " but its body does not match ok_body" })
      return r, false
    end
    r.ok = true
    return r, false
  end
  local retryable = retry.retryable("GET", resp.status, nil, false)
  r.error = errors.new("http", { status = resp.status, url = r.url, method = "GET",
    attempts = job.attempts, retryable = retryable,
    retry_after = resp.headers["retry-after"],
    message = ("the receiver answered HTTP %d"):format(resp.status) })
  return r, retryable
end

--- The delay before retrying job, or nil when it must not be retried again.
function M.retry_delay(o, job, r)
  local ra = r.error and retry.retry_after(r.error.retry_after)
  return retry.next_delay({ retries = o.retries, backoff_base = o.backoff_base,
    backoff_max = o.backoff_max, max_retry_time = o.max_retry_time }, job.attempts, job.started, ra)
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
  if o.on_result ~= nil and type(o.on_result) ~= "function" then
    argerror(2, "fire_many", "option on_result must be a function")
  end
  local on_result = o.on_result
  local results = (on_result == nil) and {} or nil
  local cache = setmetatable({}, { __mode = "v" })
  local count = 0

  local function deliver(r)
    local i = r.index
    r.index, r.item = nil, nil
    if results then results[i] = r end
    if on_result then on_result(r, i) end
  end

  local p
  local function finish(job, resp, err)
    local r, again = M.judge(o, job, resp, err)
    if again then
      local delay = M.retry_delay(o, job, r)
      if delay then return delay end
    end
    deliver(r)
  end

  -- Turns item i into a job, or delivers its error at once.
  local function make_job(item, i)
    local target, values, headers = item, nil, nil
    if type(item) == "table" and not is_template(item) and item.code == nil then
      target, values, headers = item.url, item.values, item.headers
    end
    local url, err = M.render_target(target, values, o, cache)
    if not url then
      deliver({ ok = false, attempts = 0, time = 0, error = err, index = i })
      return nil
    end
    return { req = M.request(url, o, headers), index = i }
  end

  local n = 0
  local next_item
  if it == "table" then
    local len = #items
    next_item = function()
      if n >= len then return nil end
      n = n + 1
      return items[n], n
    end
  else
    next_item = function()
      local item = items()
      if item == nil then return nil end
      n = n + 1
      return item, n
    end
  end
  local function source()
    while true do
      local item, i = next_item()
      if item == nil then return nil end
      count = i
      local job = make_job(item, i)
      if job then return job end
    end
  end

  p = pump.new { concurrency = o.concurrency, per_host = o.per_host, finish = finish, source = source }
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
  local url, err = M.render_target(target, values, o)
  if not url then return nil, err end
  local result
  local p = pump.new { concurrency = 1, finish = function(job, resp, terr)
    local r, again = M.judge(o, job, resp, terr)
    if again then
      local delay = M.retry_delay(o, job, r)
      if delay then return delay end
    end
    result = r
  end }
  p:push({ req = M.request(url, o) })
  local ok, perr = pcall(p.run, p)
  p:close()
  if not ok then error(perr, 0) end
  result.index, result.item = nil, nil
  if result.ok then return result end
  local e = result.error
  e.attempts, e.body, e.status = result.attempts, result.body, result.status
  return nil, e
end

return M
