-- The gateway's Lua: conversions in, postbacks out, and a small admin API.
--
-- Each worker has one postback dispatcher (made in init_worker): a bounded
-- queue drained by a fixed pool of light threads on cosockets, with its
-- spool in PREFIX/spool (or $POSTBACK_SPOOL). A conversion is answered 202
-- only once the dispatcher took every postback of it; when it cannot (its
-- queue is full, the worker is stopping, the API is out of reach) the
-- answer is 503 with Retry-After, and the sender tries again later.
local postback = require "postback"
local cjson = require "cjson.safe"
local semaphore = require "ngx.semaphore"

local M = {}

-- Sizing (per worker; see README "Using it in OpenResty"):
local CONCURRENCY = 64    -- postbacks in flight: connections in use
local PER_HOST = 32       -- of which to one receiver
local MAX_QUEUE = 20000   -- postbacks held (queued, in flight, waiting for a retry)
local GRACE = 5           -- seconds an exiting worker keeps sending
local RETRY_AFTER = 1     -- seconds, in 503 answers

local CACHE_TTL = 30 -- seconds a list of an offer's postbacks is kept
local cache = {}     -- offer_id -> {expires =, postbacks =}
local loading = {}   -- offer_id -> semaphore of the requests waiting for its list

local dispatcher -- this worker's

local function on_result(r)
  -- every postback that ends undelivered: after its retries, refused by
  -- the destination policy, or abandoned by an exiting worker
  if not r.ok then ngx.log(ngx.ERR, "postback failed: ", tostring(r.error)) end
end

-- POSTBACK_ALLOW_NETWORKS="10.1.0.0/16,192.0.2.0/24" (commas or spaces)
local function allowed_networks()
  local list = {}
  for cidr in (os.getenv("POSTBACK_ALLOW_NETWORKS") or ""):gmatch("[^%s,]+") do list[#list + 1] = cidr end
  return #list > 0 and list or nil
end

local function options(spool)
  return {
    concurrency = CONCURRENCY, per_host = PER_HOST, max_queue = MAX_QUEUE, grace = GRACE,
    retries = 3, backoff_base = 0.5, timeout = 10, spool = spool,
    -- the destination policy: private addresses are refused unless allowed
    allow_private = os.getenv("POSTBACK_ALLOW_PRIVATE") == "1",
    allow_networks = allowed_networks(),
    on_result = on_result,
  }
end

--- init_worker_by_lua: this worker's dispatcher.
function M.init_worker()
  local spool = os.getenv("POSTBACK_SPOOL") or (ngx.config.prefix() .. "spool")
  local ok, d, err = pcall(postback.dispatcher, options(spool))
  if ok and not d then
    -- still serving, but a reload or stop may now lose postbacks in flight
    ngx.log(ngx.ERR, "postback spool unusable, running without one: ", tostring(err))
    ok, d, err = pcall(postback.dispatcher, options(nil))
  end
  if not ok or not d then
    ngx.log(ngx.ERR, "no postback dispatcher: ", tostring(ok and err or d))
    return
  end
  dispatcher = d
end

local client_obj
local function client()
  if not client_obj then
    client_obj = assert(postback.client {
      network = os.getenv("OFFERSLOOK_NETWORK"),
      api_key = os.getenv("OFFERSLOOK_API_KEY"),
      base_url = os.getenv("OFFERSLOOK_BASE_URL"),
      timeout = 5,
    })
  end
  return client_obj
end

local function reply(status, value)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(value))
  return ngx.exit(status)
end

-- 503 with Retry-After: not taken, ask again later.
local function unavailable(why)
  ngx.header["Retry-After"] = RETRY_AFTER
  return reply(503, { error = why })
end

local function error_reply(err)
  local status = err.kind == "validation" and 400 or (err.status and err.status >= 400 and err.status < 500 and err.status) or 502
  return reply(status, { error = { kind = err.kind, message = err.message, status = err.status, errors = err.errors } })
end

local function fetch(offer_id)
  local list = {}
  for _, id in ipairs { offer_id, 0 } do
    for pb in client():each { filters = { offer_id = id, status = "approved" }, limit = 1000 } do
      list[#list + 1] = pb
    end
  end
  return list
end

-- The approved postbacks of an offer plus the global ones, cached per
-- worker; concurrent requests for the same offer wait for one lookup. An
-- API that fails leaves a stale list in use.
local function postbacks_for(offer_id)
  local hit = cache[offer_id]
  if hit and hit.expires > ngx.now() then return hit.postbacks end
  local waiting = loading[offer_id]
  if waiting then
    waiting:wait(10)
    hit = cache[offer_id]
    if hit then return hit.postbacks end
    error("the postbacks of this offer could not be read", 0)
  end
  local sema = semaphore.new(0)
  loading[offer_id] = sema
  local ok, list = pcall(fetch, offer_id)
  loading[offer_id] = nil
  if ok then cache[offer_id] = { expires = ngx.now() + CACHE_TTL, postbacks = list } end
  if sema:count() < 0 then sema:post(-sema:count()) end
  if ok then return list end
  if hit then return hit.postbacks end
  error(list, 0)
end

function M.conversion()
  local args = ngx.req.get_uri_args()
  local offer_id = tonumber(args.offer_id)
  if not offer_id or offer_id < 1 or not args.click_id then
    return reply(400, { error = "offer_id and click_id are required" })
  end
  local d = dispatcher
  if not d then return unavailable("postbacks cannot be sent now") end
  local ok, pbs = pcall(postbacks_for, offer_id)
  if not ok then
    ngx.log(ngx.ERR, "cannot read the postbacks of offer ", offer_id, ": ", tostring(pbs))
    return unavailable("the postbacks of this offer cannot be read now")
  end
  local items = {}
  for _, pb in ipairs(pbs) do
    if pb.type == postback.IMAGE_PIXEL or pb.type == postback.POSTBACK_URL then
      local values = {}
      for k, v in pairs(args) do
        if type(v) == "string" then values[k] = v end
      end
      values.offer_id, values.aff_id = offer_id, pb.affiliate_id
      items[#items + 1] = { url = pb.code, values = values }
    end
  end
  -- all of them or none: nothing else runs in this worker until we answer
  if d:pending() + #items > MAX_QUEUE then return unavailable("too many postbacks waiting") end
  local queued = 0
  for _, item in ipairs(items) do
    local id, err = d:fire(item.url, item.values)
    if id then
      queued = queued + 1
    elseif err.kind == "validation" then
      -- a postback that can never be sent (its URL): retrying cannot help
      ngx.log(ngx.ERR, "postback failed: ", tostring(err))
    else
      ngx.log(ngx.ERR, "postback not taken: ", tostring(err))
      return unavailable(err.message)
    end
  end
  return reply(202, { queued = queued })
end

--- The dispatcher's counters (d:stats()) as JSON.
function M.stats()
  if not dispatcher then return unavailable("no dispatcher") end
  return reply(200, dispatcher:stats())
end

function M.admin()
  local method = ngx.req.get_method()
  local id = tonumber(ngx.var.uri:match("^/admin/postbacks/(%d+)$"))
  local c = client()
  local res, err
  if not id and ngx.var.uri ~= "/admin/postbacks" then return reply(404, { error = "not found" }) end
  local body
  if method == "POST" or method == "PUT" then
    ngx.req.read_body()
    body = cjson.decode(ngx.req.get_body_data() or "")
    if type(body) ~= "table" then return reply(400, { error = "a JSON object is expected" }) end
  end
  if not id and method == "GET" then
    local args = ngx.req.get_uri_args()
    res, err = c:list { page = tonumber(args.page), limit = tonumber(args.limit) }
  elseif not id and method == "POST" then
    res, err = c:create(body)
  elseif id and method == "GET" then
    res, err = c:get(id)
  elseif id and method == "PUT" then
    res, err = c:update(id, body)
  elseif id and method == "PATCH" then
    res, err = c:set_status(id, ngx.req.get_uri_args().status)
  elseif id and method == "DELETE" then
    res, err = c:delete(id)
  else
    return reply(405, { error = "method not allowed" })
  end
  if res == nil then return error_reply(err) end
  cache = {} -- postbacks changed: forget the cached lists
  return reply(method == "POST" and 201 or 200, { data = res })
end

return M
