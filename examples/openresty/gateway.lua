-- The gateway's Lua: conversions in, postbacks out, and a small admin API.
-- Everything here runs on cosockets (postback picks its ngx transport
-- itself inside nginx), so a slow receiver never stalls the worker.
local postback = require "postback"
local cjson = require "cjson.safe"

local M = {}

local CACHE_TTL = 30 -- seconds a list of an offer's postbacks is kept
local cache = {}     -- offer_id -> {expires =, postbacks =}

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

local function error_reply(err)
  local status = err.kind == "validation" and 400 or (err.status and err.status >= 400 and err.status < 500 and err.status) or 502
  return reply(status, { error = { kind = err.kind, message = err.message, status = err.status, errors = err.errors } })
end

-- The approved postbacks of an offer plus the global ones, cached per worker.
local function postbacks_for(offer_id)
  local hit = cache[offer_id]
  if hit and hit.expires > ngx.now() then return hit.postbacks end
  local list = {}
  for _, id in ipairs { offer_id, 0 } do
    for pb in client():each { filters = { offer_id = id, status = "approved" }, limit = 1000 } do
      list[#list + 1] = pb
    end
  end
  cache[offer_id] = { expires = ngx.now() + CACHE_TTL, postbacks = list }
  return list
end

function M.conversion()
  local args = ngx.req.get_uri_args()
  local offer_id = tonumber(args.offer_id)
  if not offer_id or offer_id < 1 or not args.click_id then
    return reply(400, { error = "offer_id and click_id are required" })
  end
  local ok, pbs = pcall(postbacks_for, offer_id)
  if not ok then return error_reply(pbs) end
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
  -- Fire after answering: a timer runs on its own, with cosockets.
  if #items > 0 then
    local tok, terr = ngx.timer.at(0, function(premature)
      if premature then return end
      postback.fire_many(items, { concurrency = 8, retries = 2, backoff_base = 0.2, timeout = 10,
        on_result = function(r)
          if not r.ok then ngx.log(ngx.WARN, "postback failed: ", tostring(r.error)) end
        end })
    end)
    if not tok then return reply(503, { error = "cannot schedule: " .. tostring(terr) }) end
  end
  return reply(202, { queued = #items })
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
