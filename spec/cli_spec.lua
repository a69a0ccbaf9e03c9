-- bin/postback end to end, as real processes against the mock.
local mockproc = require "mockproc"
local testenv = require "testenv"
local cjson = require("cjson.safe")

local KEY = "cli-secret-KEY-0042"

describe("postback command line", function()
  local mock, tmp

  setup(function()
    mock = mockproc.start { network = "clinet", api_key = KEY }
    tmp = os.tmpname()
    os.remove(tmp)
    os.execute("mkdir -p " .. tmp)
  end)

  teardown(function()
    mock:stop()
    os.execute("rm -rf " .. tmp)
  end)

  before_each(function() mock:reset() end)

  local outputs = {} -- every output, searched for the key at the end

  -- Runs bin/postback with args; returns stdout, stderr, exit code.
  local function run(args, env)
    local out, err = tmp .. "/out", tmp .. "/err"
    local cmd = ("env LUA_PATH='%s' LUA_CPATH='%s' OFFERSLOOK_NETWORK=clinet OFFERSLOOK_API_KEY=%s OFFERSLOOK_BASE_URL=%s %s %s bin/postback %s >%s 2>%s </dev/null")
      :format(package.path, package.cpath, KEY, mock.url, env or "", testenv.lua, args, out, err)
    local ok, _, code = os.execute(cmd)
    if type(ok) == "number" then code = ok / 256 end -- Lua 5.1
    local function slurp(path)
      local f = io.open(path)
      local s = f:read("*a")
      f:close()
      return s
    end
    local o, e = slurp(out), slurp(err)
    outputs[#outputs + 1] = o
    outputs[#outputs + 1] = e
    return o, e, code
  end

  local function jsonl(text)
    local rows = {}
    for line in text:gmatch("[^\n]+") do
      local v = cjson.decode(line)
      assert.is_table(v, "not a JSON line: " .. line)
      rows[#rows + 1] = v
    end
    return rows
  end

  local code_url
  before_each(function() code_url = mock.url .. "/postback?c={click_id}" end)

  it("creates, gets, updates, sets the status and deletes", function()
    local out, err, rc = run(("create offer_id=1 affiliate_id=7 type=2 code='%s'"):format(code_url))
    assert.equal(0, rc, err)
    local pb = jsonl(out)[1]
    assert.equal(7, pb.affiliate_id)
    local id = ("%d"):format(pb.id)
    out, err, rc = run("get " .. id)
    assert.equal(0, rc, err)
    assert.equal(pb.id, jsonl(out)[1].id)
    out, err, rc = run("update " .. id .. " code='" .. code_url .. "&v=2'")
    assert.equal(0, rc, err)
    assert.matches("&v=2$", jsonl(out)[1].code)
    out, err, rc = run("status " .. id .. " rejected")
    assert.equal(0, rc, err)
    assert.equal("rejected", jsonl(out)[1].status)
    out, err, rc = run("delete " .. id)
    assert.equal(0, rc, err)
    assert.equal(pb.id, jsonl(out)[1].id)
    out, err, rc = run("get " .. id)
    assert.equal("", out)
    assert.equal(1, rc)
    assert.matches("404", err)
  end)

  it("refuses a type the offer does not allow, with exit status 1", function()
    local _, err, rc = run("create offer_id=2 affiliate_id=7 type=3 code='<img>'")
    assert.equal(1, rc)
    assert.matches("not allowed", err)
    assert.equal(0, mock:stats().postbacks)
  end)

  it("lists as JSONL when piped, with filters", function()
    mock:seed { count = 30, offer_id = 0, type = 2 }
    local out, err, rc = run("list --limit 50 --filter id:LESS_THAN=11 --sort=-id")
    assert.equal(0, rc, err)
    local rows = jsonl(out)
    assert.equal(10, #rows)
    assert.equal(10, rows[1].id)
    out, err, rc = run("list --all --filter affiliate_id=2")
    assert.equal(0, rc, err)
    for _, r in ipairs(jsonl(out)) do assert.equal(2, r.affiliate_id) end
  end)

  it("exports every postback as JSONL and imports idempotently", function()
    mock:seed { count = 25, offer_id = 0, type = 2 }
    local file = tmp .. "/export.jsonl"
    local _, err, rc = run("export " .. file)
    assert.equal(0, rc, err)
    local f = assert(io.open(file))
    local rows = jsonl(f:read("*a"))
    f:close()
    assert.equal(25, #rows)
    -- edit two records and add one without an id
    f = assert(io.open(file, "w"))
    for i, r in ipairs(rows) do
      if i <= 2 then r.code = r.code .. "&edited=1" end
      f:write(cjson.encode(r), "\n")
    end
    f:write(cjson.encode { offer_id = 3, affiliate_id = 99, event_id = 1, type = 2, code = code_url }, "\n")
    f:close()
    local out
    out, err, rc = run("import " .. file)
    assert.equal(0, rc, err)
    assert.same({ created = 1, updated = 2, unchanged = 23, failed = 0 }, jsonl(out)[1])
    out, err, rc = run("import " .. file)
    assert.equal(0, rc, err)
    assert.same({ created = 0, updated = 0, unchanged = 26, failed = 0 }, jsonl(out)[1])
    assert.equal(26, mock:stats().postbacks)
  end)

  it("migrates with a journal, and dry runs write nothing", function()
    mock:seed { count = 20, offer_id = 0, type = 2, code = "https://old.example/pb?c={click_id}" }
    local out, err, rc = run("migrate --replace-host old.example=new.example --dry-run")
    assert.equal(0, rc, err)
    assert.matches("old.example/pb%?c={click_id} %-> https://new.example", out)
    local writes = 0
    for _ in pairs(mock:stats().writes) do writes = writes + 1 end
    assert.equal(0, writes)
    out, err, rc = run("migrate --replace-host old.example=new.example --set-param src=ol --journal " .. tmp .. "/j")
    assert.equal(0, rc, err)
    assert.same({ scanned = 20, changed = 20, skipped = 0, failed = 0 }, jsonl(out)[1])
    out = run("list --all")
    for _, r in ipairs(jsonl(out)) do assert.equal("https://new.example/pb?c={click_id}&src=ol", r.code) end
  end)

  it("validates a JSONL file", function()
    local file = tmp .. "/v.jsonl"
    local f = assert(io.open(file, "w"))
    f:write(cjson.encode { offer_id = 1, affiliate_id = 1, type = 2, code = "https://a.example/{click_id}" }, "\n")
    f:write(cjson.encode { offer_id = 1, affiliate_id = 0, type = 2, code = "x" }, "\n")
    f:close()
    local out, _, rc = run("validate " .. file)
    assert.equal(1, rc)
    local problems = jsonl(out)
    assert.equal(2, #problems)
    assert.equal(2, problems[1].line)
    f = assert(io.open(file, "w"))
    f:write(cjson.encode { offer_id = 1, affiliate_id = 1, type = 2, code = "https://a.example/{click_id}" }, "\n")
    f:close()
    _, _, rc = run("validate " .. file)
    assert.equal(0, rc)
  end)

  it("renders and fires", function()
    local out, err, rc = run("render 'https://t.example/?c={click_id}&p={payout}' click_id='a b' payout=2.5")
    assert.equal(0, rc, err)
    assert.equal("https://t.example/?c=a%20b&p=2.5\n", out)
    out, err, rc = run("fire '" .. code_url .. "' click_id=cli-1")
    assert.equal(0, rc, err)
    assert.is_true(jsonl(out)[1].ok)
    assert.equal("c=cli-1", mock:received()[1].query)
  end)

  it("exits 2 with one line on stderr for usage errors, never a traceback", function()
    for _, args in ipairs { "", "bogus", "get", "get abc", "status 1 pending", "list --limit", "update 5",
                            "migrate", "import /nonexistent/file", "render" } do
      local out, err, rc = run(args)
      assert.equal(2, rc, "postback " .. args .. ": " .. err)
      assert.equal("", out)
      assert.equal(1, select(2, err:gsub("\n", "")), "postback " .. args .. ": " .. err)
      assert.is_nil(err:find("traceback", 1, true))
    end
    local _, err, rc = run("list", "OFFERSLOOK_API_KEY=")
    assert.equal(2, rc)
    assert.matches("API key", err)
  end)

  it("has --help for every command", function()
    for _, cmd in ipairs { "list", "get", "create", "update", "status", "delete", "export", "import",
                           "migrate", "validate", "render", "fire", "mock" } do
      local out, err, rc = run(cmd .. " --help")
      assert.equal(0, rc, err)
      assert.matches("^postback " .. cmd, out)
    end
    local out, _, rc = run("--help")
    assert.equal(0, rc)
    assert.matches("commands:", out)
  end)

  it("runs the sandbox", function()
    local p = assert(io.popen(("exec env LUA_PATH='%s' LUA_CPATH='%s' %s bin/postback mock --port 0 --network sb --api-key k")
      :format(package.path, package.cpath, testenv.lua)))
    local line = p:read("*l")
    local port = assert(tonumber(line:match("listening on http://127%.0%.0%.1:(%d+)")), line)
    local status, body = mockproc.http(port, "GET", "/v1/offers/1", nil,
      { Authorization = "Basic " .. require("mime").b64("sb:k") })
    assert.equal(200, status)
    assert.equal(1, cjson.decode(body).data.offer.conversion_protocol)
    mockproc.http(port, "POST", "/_mock/shutdown", "{}")
    p:close()
  end)

  it("never prints the API key", function()
    assert.is_true(#outputs > 20)
    for _, s in ipairs(outputs) do
      assert.is_nil(s:find(KEY, 1, true), "the key leaked: " .. s)
    end
    local p = assert(io.popen("grep -rl '" .. KEY .. "' " .. tmp .. " 2>/dev/null"))
    local files = p:read("*a")
    p:close()
    assert.equal("", files)
  end)
end)
