-- Integers of 15 and 16 digits, up to 2^53-1, end to end: bin/postback
-- create, get, export and import as real processes against the mock, the
-- digits compared in the raw request bodies the mock logged, in what it
-- stores and answers, in the export file and in the mock's state file.
local mockproc = require "mockproc"
local testenv = require "testenv"
local postback = require "postback"
local cjson = require("cjson.safe")
local mime = require "mime"
local F = require "fixtures"

local KEY = "exact-KEY-9007"
local MAX = "9007199254740991" -- 2^53 - 1

-- The three records: affiliate_id and event_id of 15, 16 digits and 2^53-1.
local RECORDS = {
  { affiliate_id = "123456789012345", event_id = "1234567890123456" },
  { affiliate_id = "1234567890123456", event_id = MAX },
  { affiliate_id = MAX, event_id = "123456789012345" },
}
-- The mock's ids start just below 2^53 - 1 (from its state file): the ids
-- are 16 digits too, and the record import re-creates gets 2^53 - 1 itself.
local FIRST_ID = "9007199254740988"
local IDS = { FIRST_ID, "9007199254740989", "9007199254740990" }

local function slurp(path)
  return assert(F.readfile(path))
end

local spit = F.writefile

-- Asserts that text holds "field":digits as a JSON member.
local function has_member(text, field, digits, what)
  local pat = '"' .. field .. '":' .. digits .. "[,}]"
  assert.truthy(text:find(pat), ("%s: no %s:%s in %s"):format(what or "text", field, digits, text))
end

-- Asserts that text has no number in exponent form.
local function no_exponent(text, what)
  assert.falsy(text:find("%d[eE][+-]?%d"), (what or "text") .. " has an exponent: " .. text)
end

describe("integers up to 2^53-1, end to end", function()
  local mock, tmp, state

  -- Runs bin/postback with args; returns stdout, stderr, exit code.
  local function run(args)
    local out, err = tmp .. "/out", tmp .. "/err"
    local cmd = ("env LUA_PATH='%s' LUA_CPATH='%s' OFFERSLOOK_NETWORK=exact OFFERSLOOK_API_KEY=%s OFFERSLOOK_BASE_URL=%s %s bin/postback --json %s >%s 2>%s </dev/null")
      :format(package.path, package.cpath, KEY, mock.url, testenv.lua, args, out, err)
    local ok, _, code = os.execute(cmd)
    if type(ok) == "number" then code = ok / 256 end -- Lua 5.1
    return slurp(out), slurp(err), code
  end

  -- GET path on the mock's API: the raw answer body.
  local function api_get(path)
    local auth = "Basic " .. (mime.b64("exact:" .. KEY))
    local status, body = mockproc.http(mock.port, "GET", path, nil, { Authorization = auth })
    assert.are.equal(200, status, body)
    return body
  end

  -- The API requests the mock logged (raw bodies), of one method.
  local function requests(method)
    local out = {}
    for _, r in ipairs(mock:requests()) do
      if r.method == method then out[#out + 1] = r end
    end
    return out
  end

  setup(function()
    tmp = F.tmpdir()
    state = tmp .. "/mock-state.json"
    spit(state, '{"next_id":' .. FIRST_ID .. ',"postbacks":[],"offers":[]}')
    mock = mockproc.start { network = "exact", api_key = KEY, state = state }
  end)

  teardown(function()
    if mock then mock:stop() end
    os.execute("rm -rf " .. tmp)
  end)

  it("go through create, get, export and import with every digit, at the server", function()
    local code_url = mock.url .. "/postback?c={click_id}"

    -- create: the request bodies and the answers carry the digits
    for i, r in ipairs(RECORDS) do
      local out, err, rc = run(("create offer_id=0 affiliate_id=%s event_id=%s type=2 code='%s'")
        :format(r.affiliate_id, r.event_id, code_url))
      assert.are.equal(0, rc, err)
      has_member(out, "id", IDS[i], "create output")
      has_member(out, "affiliate_id", r.affiliate_id, "create output")
      has_member(out, "event_id", r.event_id, "create output")
      no_exponent(out, "create output")
    end
    local posts = requests("POST")
    assert.are.equal(3, #posts)
    for i, r in ipairs(RECORDS) do
      has_member(posts[i].body, "affiliate_id", r.affiliate_id, "POST body")
      has_member(posts[i].body, "event_id", r.event_id, "POST body")
      no_exponent(posts[i].body, "POST body")
    end

    -- get: by a 16-digit id, through the CLI and straight from the mock
    for i, r in ipairs(RECORDS) do
      local out, err, rc = run("get " .. IDS[i])
      assert.are.equal(0, rc, err)
      has_member(out, "id", IDS[i], "get output")
      has_member(out, "affiliate_id", r.affiliate_id, "get output")
      has_member(out, "event_id", r.event_id, "get output")
      local raw = api_get("/v1/affiliate_postbacks/" .. IDS[i])
      has_member(raw, "affiliate_id", r.affiliate_id, "stored")
      has_member(raw, "event_id", r.event_id, "stored")
    end
    local gets = requests("GET")
    assert.truthy(gets[1].path:find("/" .. IDS[1] .. "$"), gets[1].path)

    -- export: every digit in the file, no exponent
    local file = tmp .. "/export.jsonl"
    local _, err, rc = run("export " .. file)
    assert.are.equal(0, rc, err)
    local text = slurp(file)
    no_exponent(text, "export file")
    local lines = {}
    for line in text:gmatch("[^\n]+") do lines[#lines + 1] = line end
    assert.are.equal(3, #lines)
    for i, r in ipairs(RECORDS) do
      has_member(lines[i], "id", IDS[i], "export line")
      has_member(lines[i], "affiliate_id", r.affiliate_id, "export line")
      has_member(lines[i], "event_id", r.event_id, "export line")
    end

    -- import: the first record edited (a PUT by its 16-digit id), the second
    -- deleted at the server (created again), the third as it was
    lines[1] = lines[1]:gsub('"code":"([^"]*)"', '"code":"%1&edited=1"')
    spit(file, table.concat(lines, "\n") .. "\n")
    _, err, rc = run("delete " .. IDS[2])
    assert.are.equal(0, rc, err)
    mock:control("DELETE", "/_mock/requests")
    local out
    out, err, rc = run("import " .. file)
    assert.are.equal(0, rc, err)
    assert.are.same({ created = 1, updated = 1, unchanged = 1, failed = 0 }, cjson.decode(out))
    local puts = requests("PUT")
    assert.are.equal(1, #puts)
    assert.are.equal("/v1/affiliate_postbacks/" .. IDS[1], puts[1].path)
    posts = requests("POST")
    assert.are.equal(1, #posts)
    has_member(posts[1].body, "affiliate_id", RECORDS[2].affiliate_id, "import POST body")
    has_member(posts[1].body, "event_id", RECORDS[2].event_id, "import POST body")
    no_exponent(posts[1].body, "import POST body")

    -- at the server: the re-created record has id 2^53 - 1 and every digit
    local raw = api_get("/v1/affiliate_postbacks/" .. MAX)
    has_member(raw, "id", MAX, "re-created")
    has_member(raw, "affiliate_id", RECORDS[2].affiliate_id, "re-created")
    has_member(raw, "event_id", RECORDS[2].event_id, "re-created")
    raw = api_get("/v1/affiliate_postbacks/" .. IDS[1])
    assert.truthy(raw:find("edited=1", 1, true))
    has_member(raw, "affiliate_id", RECORDS[1].affiliate_id, "updated")
    local listed = api_get("/v1/affiliate_postbacks?limit=10&filters%5Baffiliate_id%5D%5BEQUAL_TO%5D=" .. MAX)
    has_member(listed, "id", IDS[3], "filtered list")
    assert.are.equal(3, mock:stats().postbacks)

    -- the mock's state file keeps the digits across a restart
    mock:stop()
    local saved = slurp(state)
    no_exponent(saved, "state file")
    has_member(saved, "id", MAX, "state file")
    has_member(saved, "event_id", "1234567890123456", "state file")
    mock = mockproc.start { network = "exact", api_key = KEY, state = state }
    raw = api_get("/v1/affiliate_postbacks/" .. MAX)
    has_member(raw, "affiliate_id", RECORDS[2].affiliate_id, "after a restart")
    has_member(raw, "event_id", RECORDS[2].event_id, "after a restart")
  end)

  it("refuses 2^53 before sending, naming the bound", function()
    mock:control("DELETE", "/_mock/requests")
    local out, err, rc = run(("create offer_id=0 affiliate_id=9007199254740992 type=2 code='%s/postback'")
      :format(mock.url))
    assert.are.equal(1, rc)
    assert.are.equal("", out)
    assert.truthy(err:find("affiliate_id must be an integer from 1 to 9007199254740991", 1, true), err)
    assert.are.equal(0, #requests("POST"))
  end)

  it("page by key and go through a migration's journal with every digit", function()
    -- the records the first test left: IDS[1], IDS[3] and MAX
    local c = assert(postback.client(mock:client_opts()))
    local journal = tmp .. "/migrate.journal"
    local function migrate()
      return assert(postback.migrate { client = c, journal = journal, query = { limit = 1 },
        transform = function(pb) return { code = pb.code .. "&j=1" } end })
    end
    mock:control("DELETE", "/_mock/requests")
    local report = migrate()
    assert.are.same({ 3, 3, 0 }, { report.scanned, report.changed, report.failed })
    local want = { IDS[1], IDS[3], MAX }
    -- one record a page: each page after the last id seen, every digit (the
    -- page after IDS[3] says it holds the last match: no page after MAX)
    local floors = {}
    for _, r in ipairs(requests("GET")) do
      local q = r.query or ""
      local floor = q:match("filters%%5Bid%%5D%%5BGREATER_THAN%%5D=(%d+)")
        or q:match("filters%[id%]%[GREATER_THAN%]=(%d+)")
      if floor then floors[#floors + 1] = floor end
    end
    assert.are.same({ IDS[1], IDS[3] }, floors)
    local puts = requests("PUT")
    assert.are.equal(3, #puts)
    local put_paths = {}
    for i, put in ipairs(puts) do put_paths[i] = put.path end
    table.sort(put_paths) -- sent concurrently: in any order
    for i, id in ipairs(want) do assert.are.equal("/v1/affiliate_postbacks/" .. id, put_paths[i]) end
    local text = slurp(journal)
    no_exponent((text:gsub("%f[^\n%z]%x%x%x%x%x%x%x%x ", "")), "journal") -- past each line's checksum
    for _, id in ipairs(want) do assert.truthy(text:find(id, 1, true), "journal lacks " .. id) end
    -- the rerun finds each id in the journal: nothing sent again
    mock:control("DELETE", "/_mock/requests")
    report = migrate()
    assert.are.same({ 3, 0, 3 }, { report.scanned, report.changed, report.skipped })
    assert.are.equal(0, #requests("PUT"))
    for _, id in ipairs(want) do
      local raw = api_get("/v1/affiliate_postbacks/" .. id)
      assert.truthy(raw:find("&j=1\"", 1, true) and not raw:find("&j=1&j=1", 1, true), raw)
    end
  end)

  it("come back as the same numbers through the client", function()
    mock:reset() -- ids from 1 again
    local c = assert(postback.client(mock:client_opts()))
    local big = 1234567890123456
    local pb = assert(c:create { offer_id = 0, affiliate_id = big, event_id = 9007199254740991, type = 2,
                                 code = mock.url .. "/postback?a={aff_id}" })
    local got = assert(c:get(pb.id))
    assert.are.equal(big, got.affiliate_id)
    assert.are.equal(9007199254740991, got.event_id)
    if math.type then
      assert.are.equal("integer", math.type(got.affiliate_id))
      assert.are.equal("integer", math.type(got.id))
    end
    assert.are.equal(("%d"):format(big), ("%d"):format(got.affiliate_id))
  end)
end)
