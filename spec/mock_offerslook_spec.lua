-- The mock Offerslook itself: what the other specs rely on, and what users
-- of the sandbox see.
local mockproc = require "mockproc"
local testenv = require "testenv"
local socket = require "socket"
local cjson = require("cjson.safe")

local AUTH = { Authorization = "Basic " .. require("mime").b64("demo:demo-key") }

describe("mock Offerslook", function()
  local mock

  setup(function() mock = mockproc.start {} end)
  teardown(function() mock:stop() end)
  before_each(function() mock:reset() end)

  local function api(method, path, body)
    local status, text = mockproc.http(mock.port, method, path, body and cjson.encode(body), AUTH)
    return status, cjson.decode(text)
  end

  it("answers with the envelope, and 401 without the right credentials", function()
    local status, doc = api("GET", "/v1/offers/1")
    assert.equal(200, status)
    assert.equal(0, doc.code)
    assert.equal("Success", doc.message)
    local s2, t2 = mockproc.http(mock.port, "GET", "/v1/offers/1")
    assert.equal(401, s2)
    assert.are_not.equal(0, cjson.decode(t2).code)
  end)

  it("pages with a 1-based offset, an empty rowset past the end as []", function()
    mock:seed { count = 5 }
    local status, text = mockproc.http(mock.port, "GET", "/v1/affiliate_postbacks?offset=2&limit=2", nil, AUTH)
    assert.equal(200, status)
    local doc = cjson.decode(text)
    assert.equal(3, doc.data.rowset[1].id)
    assert.equal(3, doc.data.totalPages)
    status, text = mockproc.http(mock.port, "GET", "/v1/affiliate_postbacks?offset=9&limit=2", nil, AUTH)
    assert.equal(200, status)
    assert.matches('"rowset":%[%]', text)
    status = mockproc.http(mock.port, "GET", "/v1/affiliate_postbacks?limit=1001", nil, AUTH)
    assert.equal(400, status)
    status = mockproc.http(mock.port, "GET", "/v1/affiliate_postbacks?filters%5Bid%5D%5BLIKE%5D=1", nil, AUTH)
    assert.equal(400, status)
  end)

  it("applies faults asked for in a request header", function()
    local status = mockproc.http(mock.port, "GET", "/v1/offers/1", nil,
      { Authorization = AUTH.Authorization, ["X-Mock-Fault"] = "status", ["X-Mock-Status"] = "503" })
    assert.equal(503, status)
    assert.equal(200, (api("GET", "/v1/offers/1")))
  end)

  it("survives malformed HTTP", function()
    local c = assert(socket.connect("127.0.0.1", mock.port))
    c:settimeout(5)
    c:send("GARBAGE\r\n\r\n")
    local line = c:receive("*l")
    c:close()
    assert.matches("^HTTP/1%.1 400", line)
    assert.equal(200, (api("GET", "/v1/offers/2")))
  end)

  it("serves other connections while one waits on a slow fault", function()
    mock:fault { fault = "slow", delay = 1.5, match = "/postback/slow" }
    local slow = assert(socket.connect("127.0.0.1", mock.port))
    slow:send("GET /postback/slow HTTP/1.1\r\nHost: x\r\n\r\n")
    local t0 = socket.gettime()
    for _ = 1, 20 do assert.equal(200, (api("GET", "/v1/offers/3"))) end
    assert.is_true(socket.gettime() - t0 < 1.0)
    slow:settimeout(5)
    assert.matches("^HTTP/1%.1 200", slow:receive("*l"))
    slow:close()
  end)

  it("writes JSON with integers exact up to 2^53-1, on this interpreter too", function()
    local encode = dofile("mock/offerslook.lua").encode
    local decode = require("cjson.safe").new().decode
    math.randomseed(53)
    for _ = 1, testenv.slow and 500 or 5000 do
      local x = math.random(0, 2 ^ 26 - 1) * 2 ^ 27 + math.random(0, 2 ^ 27 - 1)
      if math.tointeger then x = math.tointeger(x) end
      local text = encode { affiliate_id = x, payout = x / 7 }
      assert.truthy(text:find('"affiliate_id":' .. ("%.0f"):format(x) .. "[,}]"), text)
      local back = decode(text)
      assert.are.equal(x, back.affiliate_id)
      assert.are.equal(x / 7, back.payout)
    end
    local bytes = {}
    for b = 0, 255 do bytes[#bytes + 1] = string.char(b) end
    local s = table.concat(bytes)
    assert.are.equal(s, decode(encode { s })[1])
    assert.are.equal("[1,2,3]", encode { 1, 2, 3 })
    assert.are.equal("{}", encode {})
    assert.are.same({ ["2"] = 1, ["5"] = 2 }, decode(encode { [2] = 1, [5] = 2 }))
    assert.has_error(function() encode { f = print } end, "cannot encode a function")

    -- the mock running under the interpreter of this suite
    local m = mockproc.start { lua = testenv.lua }
    local status, text = mockproc.http(m.port, "POST", "/v1/affiliate_postbacks",
      '{"offer_id":0,"affiliate_id":1234567890123456,"event_id":9007199254740991,"type":2,'
      .. '"code":"https://t.example/x"}', AUTH)
    m:stop()
    assert.equal(200, status, text)
    assert.truthy(text:find('"affiliate_id":1234567890123456[,}]'), text)
    assert.truthy(text:find('"event_id":9007199254740991[,}]'), text)
  end)

  it("keeps its state in a file across a restart", function()
    local file = os.tmpname()
    os.remove(file)
    local m = mockproc.start { state = file }
    local _, text = mockproc.http(m.port, "POST", "/v1/affiliate_postbacks",
      cjson.encode { offer_id = 1, affiliate_id = 2, type = 2, code = "https://t.example/x" }, AUTH)
    local id = cjson.decode(text).data.affiliate_postback.id
    m:stop()
    local m2 = mockproc.start { state = file }
    local status, text2 = mockproc.http(m2.port, "GET", ("/v1/affiliate_postbacks/%d"):format(id), nil, AUTH)
    m2:stop()
    os.remove(file)
    assert.equal(200, status)
    assert.equal("https://t.example/x", cjson.decode(text2).data.affiliate_postback.code)
  end)
end)
