-- The API client against the mock Offerslook (a real HTTP server on loopback).
local postback = require "postback"
local mockproc = require "mockproc"

local KEY = "s3cr3t-KEY-do-not-print"
local under_valgrind = os.getenv("POSTBACK_UNDER_VALGRIND") ~= nil

local function mathtype(v)
  if math.type then return math.type(v) end
  return (type(v) == "number" and v == math.floor(v)) and "integer" or "float"
end

describe("client", function()
  local mock, c

  setup(function()
    mock = mockproc.start { network = "demo", api_key = KEY }
  end)

  teardown(function()
    if c then c:close() end
    mock:stop()
  end)

  before_each(function()
    mock:reset()
    c = assert(postback.client(mock:client_opts()))
  end)

  local function api_requests()
    local list = mock:requests()
    assert.is_table(list)
    return list
  end

  local function url_code(tag)
    return mock.url .. "/postback?click_id={click_id}&payout={payout}&t=" .. tag
  end

  describe("options", function()
    it("needs a network and an api key", function()
      local cl, err = postback.client { api_key = "k" }
      assert.is_nil(cl)
      assert.equal("validation", err.kind)
      cl, err = postback.client { network = "demo" }
      assert.is_nil(cl)
      assert.matches("api_key", err.message)
    end)

    it("raises for a non-table argument", function()
      assert.has_error(function() postback.client("demo") end)
    end)

    it("refuses plain http to a remote host, unless insecure", function()
      local cl, err = postback.client { network = "n", api_key = "k", base_url = "http://api.example.com" }
      assert.is_nil(cl)
      assert.matches("https", err.message)
      assert.truthy(postback.client { network = "n", api_key = "k", base_url = "http://api.example.com", insecure = true })
      assert.truthy(postback.client { network = "n", api_key = "k", base_url = "http://localhost:9" })
      assert.truthy(postback.client { network = "n", api_key = "k", base_url = "http://[::1]:9" })
      assert.truthy(postback.client { network = "n", api_key = "k", base_url = "http://127.0.0.2:9" })
    end)

    it("defaults the base URL to the network's API host", function()
      local cl = assert(postback.client { network = "acme", api_key = "k" })
      assert.equal("https://acme.api.offerslook.com", cl.base_url)
    end)

    it("refuses base URLs with credentials, other schemes, and bad headers", function()
      assert.is_nil(postback.client { network = "n", api_key = "k", base_url = "https://u:p@h.example" })
      assert.is_nil(postback.client { network = "n", api_key = "k", base_url = "ftp://h.example" })
      assert.is_nil(postback.client { network = "n", api_key = "k", headers = { ["X-A"] = "a\r\nX-B: b" } })
      assert.is_nil(postback.client { network = "n", api_key = "k", headers = { Authorization = "Basic x" } })
      assert.is_nil(postback.client { network = "n", api_key = "k", retries = -1 })
      assert.is_nil(postback.client { network = "n", api_key = "k", timeout = "x" })
    end)
  end)

  describe("the six calls", function()
    it("creates, with exactly the documented body, and returns the postback", function()
      local pb = assert(c:create { offer_id = 2, affiliate_id = 7, type = 2, code = url_code("a") })
      assert.equal("integer", mathtype(pb.id))
      assert.equal(2, pb.offer_id)
      assert.equal(7, pb.affiliate_id)
      assert.equal(1, pb.event_id)
      assert.equal(2, pb.type)
      local reqs = api_requests()
      local post = reqs[#reqs]
      assert.equal("POST", post.method)
      assert.equal("/v1/affiliate_postbacks", post.path)
      assert.equal("application/json", post.headers["content-type"])
      local body = require("cjson").decode(post.body)
      local keys = {}
      for k in pairs(body) do keys[#keys + 1] = k end
      table.sort(keys)
      assert.same({ "affiliate_id", "code", "offer_id", "type" }, keys)
      assert.is_true(post.auth_ok)
    end)

    it("sends event_id when given and drops read-only fields", function()
      local pb = assert(c:create { offer_id = 0, affiliate_id = 3, event_id = 4, type = 3,
                                   code = "<img src=\"" .. url_code("x") .. "\">", id = 99, status = "approved" })
      assert.equal(4, pb.event_id)
      local reqs = api_requests()
      local body = require("cjson").decode(reqs[#reqs].body)
      assert.is_nil(body.id)
      assert.is_nil(body.status)
    end)

    it("gets one postback", function()
      local made = assert(c:create { offer_id = 3, affiliate_id = 5, type = 1, code = url_code("g") })
      local pb = assert(c:get(made.id))
      assert.equal(made.id, pb.id)
      assert.equal(made.code, pb.code)
      local reqs = api_requests()
      assert.equal("GET", reqs[#reqs].method)
      assert.equal("/v1/affiliate_postbacks/" .. made.id, reqs[#reqs].path)
    end)

    it("updates with PUT and only the given fields", function()
      local made = assert(c:create { offer_id = 3, affiliate_id = 5, type = 1, code = url_code("u") })
      local pb = assert(c:update(made.id, { code = url_code("u2"), status = "rejected" }))
      assert.equal("rejected", pb.status)
      assert.matches("t=u2$", pb.code)
      local reqs = api_requests()
      local put = reqs[#reqs]
      assert.equal("PUT", put.method)
      assert.same({ code = url_code("u2"), status = "rejected" }, require("cjson").decode(put.body))
    end)

    it("refuses fields update cannot change, and empty updates, before sending", function()
      local before = #api_requests()
      local pb, err = c:update(5, { offer_id = 3 })
      assert.is_nil(pb)
      assert.equal("validation", err.kind)
      assert.matches("cannot be changed", err.message)
      pb, err = c:update(5, {})
      assert.is_nil(pb)
      assert.equal("validation", err.kind)
      assert.equal(before, #api_requests())
    end)

    it("sets the status with PATCH, in the query string, without a body", function()
      local made = assert(c:create { offer_id = 1, affiliate_id = 5, type = 1, code = url_code("s") })
      assert.equal("rejected", assert(c:set_status(made.id, "rejected")).status)
      assert.equal("approved", assert(c:set_status(made.id, "approved")).status)
      local reqs = api_requests()
      local patch = reqs[#reqs]
      assert.equal("PATCH", patch.method)
      assert.equal("/v1/affiliate_postbacks/" .. made.id, patch.path)
      assert.equal("status=approved", patch.query)
      assert.equal("", patch.body or "")
      local _, err = c:set_status(made.id, "pending")
      assert.equal("validation", err.kind)
      assert.equal(#reqs, #api_requests())
    end)

    it("deletes", function()
      local made = assert(c:create { offer_id = 1, affiliate_id = 5, type = 2, code = url_code("d") })
      local gone = assert(c:delete(made.id))
      assert.equal(made.id, gone.id)
      local pb, err = c:get(made.id)
      assert.is_nil(pb)
      assert.equal("api", err.kind)
      assert.equal(404, err.status)
    end)

    it("reads offers and their conversion_protocol", function()
      for id = 1, 6 do
        local offer = assert(c:offer(id))
        assert.equal((id - 1) % 3 + 1, offer.conversion_protocol)
        assert.equal("integer", mathtype(offer.conversion_protocol))
      end
      local o, err = c:offer(9999)
      assert.is_nil(o)
      assert.equal(404, err.status)
    end)
  end)

  describe("the conversion_protocol rule", function()
    it("refuses a type the offer does not allow without sending the create", function()
      for _, case in ipairs {
        { offer = 1, type = 3 }, { offer = 2, type = 1 }, { offer = 2, type = 3 },
      } do
        local before = #api_requests()
        local pb, err = c:create { offer_id = case.offer, affiliate_id = 1, type = case.type,
                                   code = case.type == 3 and "<img src=\"x\">" or url_code("p") }
        assert.is_nil(pb)
        assert.equal("validation", err.kind)
        assert.equal("type_not_allowed", err.errors[1].code)
        for i = before + 1, #api_requests() do
          assert.are_not.equal("POST", api_requests()[i].method)
        end
      end
    end)

    it("creates every allowed type on every protocol, and any type on a global postback", function()
      for offer = 0, 3 do
        local allowed = offer == 0 and { 1, 2, 3 } or assert(postback.allowed_types(offer))
        for _, ty in ipairs(allowed) do
          local code = ty == 3 and ("<img src=\"" .. url_code("m") .. "\">") or url_code("m")
          assert(c:create { offer_id = offer, affiliate_id = 2, type = ty, code = code })
        end
      end
    end)

    it("looks each offer up once (cached), and never for global postbacks", function()
      for _ = 1, 3 do assert(c:create { offer_id = 2, affiliate_id = 1, type = 2, code = url_code("c") }) end
      assert(c:create { offer_id = 0, affiliate_id = 1, type = 3, code = "<i>{click_id}</i>" })
      local offer_gets = 0
      for _, r in ipairs(api_requests()) do
        if r.path:find("^/v1/offers/") then
          offer_gets = offer_gets + 1
          assert.equal("/v1/offers/2", r.path)
        end
      end
      assert.equal(1, offer_gets)
    end)

    it("checks a type change against the postback's offer", function()
      local made = assert(c:create { offer_id = 1, affiliate_id = 1, type = 1, code = url_code("t") })
      assert.equal(2, assert(c:update(made.id, { type = 2 })).type)
      local pb, err = c:update(made.id, { type = 3, code = "<img src=\"x\">" })
      assert.is_nil(pb)
      assert.equal("type_not_allowed", err.errors[1].code)
    end)

    it("can be switched off (the server still decides)", function()
      local cl = assert(postback.client(mock:client_opts { check_protocol = false }))
      local pb, err = cl:create { offer_id = 2, affiliate_id = 1, type = 3, code = "<img src=\"x\">" }
      assert.is_nil(pb)
      assert.equal("api", err.kind)
      assert.equal(400, err.status)
      assert.is_string(err.message)
      cl:close()
    end)
  end)

  describe("lists", function()
    before_each(function()
      -- 25 postbacks across offers and affiliates
      for i = 1, 25 do
        local offer = i % 4
        local ty = offer == 2 and 2 or (i % 2) + 1
        assert(c:create { offer_id = offer, affiliate_id = (i % 3) + 1, event_id = (i % 2) + 1,
                          type = ty, code = url_code("l" .. i) })
      end
    end)

    it("encodes page, limit, sort and fields on the wire", function()
      local data = assert(c:list { page = 2, limit = 5, sort = "+id", fields = { "id", "code" } })
      local reqs = api_requests()
      assert.equal("offset=2&limit=5&sort=%2Bid&fields=id,code", reqs[#reqs].query)
      assert.equal(5, #data.rowset)
      assert.equal(2, data.offset)
      assert.equal(5, data.limit)
      assert.equal(25, data.totalRows)
      assert.equal(5, data.totalPages)
      assert.equal(6, data.rowset[1].id)
      assert.is_nil(data.rowset[1].offer_id)
      assert.equal("integer", mathtype(data.totalPages))
    end)

    it("sorts descending", function()
      local data = assert(c:list { sort = "-id", limit = 3 })
      assert.same({ 25, 24, 23 }, { data.rowset[1].id, data.rowset[2].id, data.rowset[3].id })
    end)

    it("encodes filters with brackets percent-encoded, a plain value meaning EQUAL_TO", function()
      local data = assert(c:list { filters = { affiliate_id = 2, id = { LESS_THAN = 10 } }, limit = 100 })
      local reqs = api_requests()
      assert.equal("limit=100&filters%5Baffiliate_id%5D%5BEQUAL_TO%5D=2&filters%5Bid%5D%5BLESS_THAN%5D=10",
        reqs[#reqs].query)
      for _, row in ipairs(data.rowset) do
        assert.equal(2, row.affiliate_id)
        assert.is_true(row.id < 10)
      end
      assert.is_true(#data.rowset > 0)
    end)

    it("applies every operator", function()
      local function ids(filters)
        local out = {}
        for row in c:each { filters = filters, limit = 7 } do out[#out + 1] = row.id end
        return out
      end
      local function count(f) return #ids(f) end
      assert.equal(1, count { id = { EQUAL_TO = 5 } })
      assert.equal(24, count { id = { NOT_EQUAL_TO = 5 } })
      assert.equal(4, count { id = { LESS_THAN = 5 } })
      assert.equal(5, count { id = { LESS_THAN_OR_EQUAL_TO = 5 } })
      assert.equal(20, count { id = { GREATER_THAN = 5 } })
      assert.equal(21, count { id = { GREATER_THAN_OR_EQUAL_TO = 5 } })
      assert.equal(1, count { code = { CONTAINS = "t=l17" } })
      assert.equal(24, count { code = { NOT_CONTAINS = "t=l17" } })
      assert.equal(0, count { event_id = { NULL = true } })
      assert.equal(25, count { event_id = { NOT_NULL = true } })
      assert.same({ 3, 7, 11, 15, 19, 23 }, ids { offer_id = 3 })
    end)

    it("streams every page with each", function()
      local seen, last = 0, 0
      for row in c:each { limit = 4 } do
        seen = seen + 1
        assert.is_true(row.id > last)
        last = row.id
      end
      assert.equal(25, seen)
      -- ceil(25 / 4) = 7 pages, and no request past the last one
      local pages = 0
      for _, r in ipairs(api_requests()) do
        if r.method == "GET" and r.path == "/v1/affiliate_postbacks" then pages = pages + 1 end
      end
      assert.equal(7, pages)
    end)

    it("refuses bad queries before sending", function()
      local before = #api_requests()
      for _, q in ipairs {
        { page = 0 }, { limit = 1001 }, { limit = 0 }, { sort = "name" }, { sort = "*id" },
        { fields = { "id", "nope" } }, { filters = { nope = 1 } }, { filters = { id = { LIKE = 1 } } },
        { filters = { id = { EQUAL_TO = {} } } }, { bogus = true },
      } do
        local data, err = c:list(q)
        assert.is_nil(data)
        assert.equal("validation", err.kind)
      end
      assert.equal(before, #api_requests())
      assert.has_error(function() c:each { limit = 5000 } end)
    end)
  end)

  describe("ids", function()
    it("must be positive integers before they become a path", function()
      local before = #api_requests()
      for _, bad in ipairs { 0, -1, 1.5, "8", "8/../9", 2 ^ 60, math.huge } do
        for _, call in ipairs { "get", "delete" } do
          local v, err = c[call](c, bad)
          assert.is_nil(v)
          assert.equal("validation", err.kind)
        end
      end
      assert.equal(before, #api_requests())
    end)

    it("accepts integral floats (as JSON decoders give) and writes them as integers", function()
      local made = assert(c:create { offer_id = 1.0, affiliate_id = 2.0, type = 2.0, code = url_code("f") })
      local pb = assert(c:get(made.id + 0.0))
      assert.equal(made.id, pb.id)
      local reqs = api_requests()
      assert.equal("/v1/affiliate_postbacks/" .. made.id, reqs[#reqs].path)
    end)
  end)

  describe("errors", function()
    it("are tables with a kind and a readable tostring", function()
      local _, err = c:get(424242)
      assert.equal("api", err.kind)
      assert.equal(404, err.status)
      assert.is_number(err.code)
      assert.are_not.equal(0, err.code)
      assert.equal("GET", err.method)
      assert.equal(mock.url .. "/v1/affiliate_postbacks/424242", err.url)
      assert.equal(postback.Error, getmetatable(err))
      assert.matches("^api error, HTTP 404", tostring(err))
    end)

    it("kind validation for bad records, with per-field errors", function()
      local pb, err = c:create { offer_id = -1, affiliate_id = 1, type = 9, code = "nope", affilate_id = 3 }
      assert.is_nil(pb)
      assert.equal("validation", err.kind)
      local codes = {}
      for _, e in ipairs(err.errors) do codes[#codes + 1] = e.field .. ":" .. e.code end
      assert.same({ "offer_id:range", "type:range", "code:invalid_url", "affilate_id:unknown_field" }, codes)
    end)

    it("kind transport when nothing listens", function()
      local port = require("nginxproc").free_port()
      local cl = assert(postback.client { network = "n", api_key = KEY, base_url = "http://127.0.0.1:" .. port,
                                          retries = 1, backoff_base = 0.01 })
      local pb, err = cl:get(1)
      assert.is_nil(pb)
      assert.equal("transport", err.kind)
      assert.equal(2, err.attempts)
      assert.is_false(err.sent)
      cl:close()
    end)

    it("kind timeout for a slow answer", function()
      mock:fault { fault = "slow", delay = 2, times = 5 }
      local cl = assert(postback.client(mock:client_opts { timeout = 0.3, retries = 1 }))
      local pb, err = cl:get(1)
      assert.is_nil(pb)
      assert.equal("timeout", err.kind)
      assert.equal(2, err.attempts)
      cl:close()
    end)

    it("kind decode for malformed JSON", function()
      mock:fault { fault = "malformed" }
      local pb, err = c:list {}
      assert.is_nil(pb)
      assert.equal("decode", err.kind)
    end)

    it("kind http for an HTML error page, retried as a 5xx", function()
      mock:fault { fault = "html", status = 502, times = 10 }
      local cl = assert(postback.client(mock:client_opts { retries = 2 }))
      local pb, err = cl:list {}
      assert.is_nil(pb)
      assert.equal("http", err.kind)
      assert.equal(502, err.status)
      assert.equal(3, err.attempts)
      cl:close()
    end)

    it("kind transport for an answer over the size cap", function()
      mock:fault { fault = "oversized", size = 2 * 1024 * 1024 }
      local cl = assert(postback.client(mock:client_opts { max_body = 1024 * 1024, retries = 0 }))
      local pb, err = cl:list {}
      assert.is_nil(pb)
      assert.equal("transport", err.kind)
      assert.equal("too_large", err.reason)
      cl:close()
    end)
  end)

  describe("retries", function()
    local function attempts_at_mock(method, path)
      local n = 0
      for _, r in ipairs(api_requests()) do
        if r.method == method and r.path == path then n = n + 1 end
      end
      return n
    end

    it("retry 5xx for GET and succeed within the budget", function()
      local made = assert(c:create { offer_id = 0, affiliate_id = 1, type = 2, code = url_code("r") })
      mock:control("DELETE", "/_mock/requests")
      mock:fault { fault = "status", status = 503, times = 2, method = "GET" }
      local pb = assert(c:get(made.id))
      assert.equal(made.id, pb.id)
      assert.equal(3, attempts_at_mock("GET", "/v1/affiliate_postbacks/" .. made.id))
    end)

    it("stop after retries + 1 attempts", function()
      mock:fault { fault = "status", status = 500, times = 20 }
      local cl = assert(postback.client(mock:client_opts { retries = 3 }))
      local _, err = cl:get(1)
      assert.equal(4, err.attempts)
      assert.equal(4, attempts_at_mock("GET", "/v1/affiliate_postbacks/1"))
      assert.is_true(err.retryable)
      cl:close()
    end)

    it("do not retry 4xx", function()
      local _, err = c:get(777)
      assert.equal(1, err.attempts)
      assert.equal(1, attempts_at_mock("GET", "/v1/affiliate_postbacks/777"))
    end)

    it("honour Retry-After in seconds", function()
      mock:fault { fault = "status", status = 429, retry_after = "1", times = 1 }
      local core = require "postback.core"
      local t0 = core.now()
      assert(c:list {})
      assert.is_true(core.now() - t0 >= 0.95)
      assert.equal(2, attempts_at_mock("GET", "/v1/affiliate_postbacks"))
    end)

    it("honour Retry-After as an HTTP date", function()
      local when = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 2)
      mock:fault { fault = "status", status = 503, retry_after = when, times = 1 }
      local core = require "postback.core"
      local t0 = core.now()
      assert(c:list {})
      assert.is_true(core.now() - t0 >= 0.9)
    end)

    it("give up when Retry-After is beyond the retry time budget", function()
      mock:fault { fault = "status", status = 429, retry_after = "3600", times = 1 }
      local _, err = c:list {}
      assert.equal(429, err.status)
      assert.equal(1, err.attempts)
    end)

    it("never re-send a POST that reached the server", function()
      mock:fault { fault = "status", status = 503, times = 5, method = "POST" }
      local pb, err = c:create { offer_id = 0, affiliate_id = 1, type = 2, code = url_code("p") }
      assert.is_nil(pb)
      assert.equal(1, err.attempts)
      assert.equal(1, attempts_at_mock("POST", "/v1/affiliate_postbacks"))
    end)

    it("never re-send a POST whose connection broke after sending (no duplicate)", function()
      mock:fault { fault = "reset_after", times = 1, method = "POST" }
      local pb, err = c:create { offer_id = 0, affiliate_id = 1, type = 2, code = url_code("p") }
      assert.is_nil(pb)
      assert.equal("transport", err.kind)
      assert.equal(1, err.attempts)
      assert.equal(1, mock:stats().postbacks)
    end)

    it("re-send a POST when the caller opts in", function()
      mock:fault { fault = "status", status = 503, times = 2, method = "POST" }
      local cl = assert(postback.client(mock:client_opts { retry_post = true }))
      assert(cl:create { offer_id = 0, affiliate_id = 1, type = 2, code = url_code("p") })
      assert.equal(3, attempts_at_mock("POST", "/v1/affiliate_postbacks"))
      cl:close()
    end)

    it("retry a GET whose connection was reset", function()
      mock:fault { fault = "reset_before", times = 1, method = "GET" }
      assert(c:list {})
    end)

    it("honour a rate limit", function()
      local cl = assert(postback.client(mock:client_opts { rate_limit = 10 }))
      local core = require "postback.core"
      local t0 = core.now()
      for _ = 1, 11 do assert(cl:list { limit = 1 }) end
      assert.is_true(core.now() - t0 >= 0.9)
      cl:close()
    end)
  end)

  describe("secrets", function()
    it("never show the API key in any string the library produces", function()
      local produced = {}
      local function keep(s) produced[#produced + 1] = tostring(s) end
      local cl = assert(postback.client(mock:client_opts { retries = 1,
        on_request = function(info) for k, v in pairs(info) do keep(k) keep(v) end end }))
      keep(cl)
      keep(postback.client)
      for k, v in pairs(cl) do keep(k) keep(v) end
      local _, e1 = cl:get(31337)
      mock:fault { fault = "status", status = 500, times = 5 }
      local _, e2 = cl:list {}
      local _, e3 = cl:create { offer_id = 2, affiliate_id = 1, type = 3, code = "<b>" }
      local port = require("nginxproc").free_port()
      local dead = assert(postback.client { network = "demo", api_key = KEY, base_url = "http://127.0.0.1:" .. port, retries = 0 })
      local _, e4 = dead:get(1)
      keep(dead)
      for _, e in ipairs { e1, e2, e3, e4 } do
        keep(e)
        for k, v in pairs(e) do keep(k) keep(v) end
      end
      assert.is_true(#produced > 20)
      for _, s in ipairs(produced) do
        assert.is_nil(s:find(KEY, 1, true), "API key leaked in: " .. s)
      end
      cl:close()
      dead:close()
    end)

    it("send the key only as HTTP Basic credentials", function()
      assert(c:list {})
      local reqs = api_requests()
      assert.is_true(reqs[#reqs].auth_ok)
      assert.is_nil(reqs[#reqs].query:find(KEY, 1, true))
      local bad = assert(postback.client(mock:client_opts { api_key = "wrong" }))
      local _, err = bad:list {}
      assert.equal(401, err.status)
      bad:close()
    end)

    it("send the extra headers on every call", function()
      local cl = assert(postback.client(mock:client_opts { headers = { ["X-Trace"] = "t-1" } }))
      assert(cl:list {})
      local reqs = api_requests()
      assert.equal("t-1", reqs[#reqs].headers["x-trace"])
      cl:close()
    end)
  end)

  describe("transports", function()
    it("accept any function(req) -> resp | nil, err", function()
      local seen
      local cl = assert(postback.client { network = "n", api_key = KEY, base_url = "https://api.example",
        transport = function(req)
          seen = req
          return { status = 200, headers = {}, body = '{"code":0,"message":"Success","data":{"affiliate_postback":{"id":8.0}}}' }
        end })
      local pb = assert(cl:get(8))
      assert.equal(8, pb.id)
      assert.equal("integer", mathtype(pb.id))
      assert.equal("GET", seen.method)
      assert.equal("https://api.example/v1/affiliate_postbacks/8", seen.url)
      assert.equal("n", seen.username)
    end)
  end)

  describe("batch", function()
    it("runs many calls at once with per-op results in order", function()
      local ops = {}
      for i = 1, 40 do
        ops[i] = { "create", { offer_id = 0, affiliate_id = i, type = 2, code = url_code("b" .. i) } }
      end
      ops[41] = { "get", 999999 }
      ops[42] = { "create", { offer_id = 2, affiliate_id = 1, type = 3, code = "<b>" } }
      ops[43] = { "frobnicate", 1 }
      local progress, totals = 0, {}
      local results = c:batch(ops, { concurrency = 8, on_progress = function(done, total)
        progress = done
        totals[total] = true -- asserted after: an error here would be caught
      end })
      assert.equal(43, #results)
      assert.equal(43, progress)
      assert.same({ [43] = true }, totals)
      for i = 1, 40 do
        assert.is_true(results[i].ok)
        assert.equal(i, results[i].value.affiliate_id)
      end
      assert.is_false(results[41].ok)
      assert.equal(404, results[41].error.status)
      assert.equal("validation", results[42].error.kind)
      assert.equal("validation", results[43].error.kind)
      assert.equal(40, mock:stats().postbacks)
    end)

    it("takes named ops too", function()
      local made = assert(c:create { offer_id = 0, affiliate_id = 1, type = 2, code = url_code("n") })
      local results = c:batch {
        { op = "get", id = made.id },
        { op = "update", id = made.id, fields = { code = url_code("n2") } },
        { op = "set_status", id = made.id, status = "rejected" },
        { op = "create", record = { offer_id = 0, affiliate_id = 2, type = 2, code = url_code("n3") } },
        { op = "delete", id = 424242 },
      }
      assert.is_true(results[1].ok)
      assert.matches("t=n2$", results[2].value.code)
      assert.equal("rejected", results[3].value.status)
      assert.equal(2, results[4].value.affiliate_id)
      assert.equal(404, results[5].error.status)
    end)

    it("retries each op by the client's rules", function()
      local made = assert(c:create { offer_id = 0, affiliate_id = 1, type = 2, code = url_code("x") })
      mock:fault { fault = "status", status = 503, times = 3, method = "GET" }
      local results = c:batch({ { "get", made.id }, { "get", made.id }, { "set_status", made.id, "rejected" } })
      for _, r in ipairs(results) do assert.is_true(r.ok) end
    end)
  end)

  describe("each over many rows", function()
    it("streams 100,000 rows in constant memory", function()
      local n = under_valgrind and 5000 or 100000
      mock:seed { count = n }
      collectgarbage()
      collectgarbage()
      local base = collectgarbage("count")
      local peak, seen, last = 0, 0, 0
      for row in c:each { limit = 1000 } do
        seen = seen + 1
        assert.is_true(row.id > last)
        last = row.id
        if seen % 5000 == 0 then
          local now = collectgarbage("count")
          if now - base > peak then peak = now - base end
        end
      end
      assert.equal(n, seen)
      -- a page of 1000 rows is ~0.5 MiB as Lua tables; allow a few in flight
      assert.is_true(peak < 16 * 1024, ("peak growth %.0f KiB"):format(peak))
    end)
  end)
end)
