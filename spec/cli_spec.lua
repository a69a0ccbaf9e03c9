-- bin/postback end to end, as real processes against the mock.
local mockproc = require "mockproc"
local testenv = require "testenv"
local cjson = require("cjson.safe")
local F = require "fixtures"

local KEY = "cli-secret-KEY-0042"

describe("postback command line", function()
  local mock, tmp

  setup(function()
    mock = mockproc.start { network = "clinet", api_key = KEY }
    tmp = F.tmpdir()
  end)

  teardown(function()
    mock:stop()
    os.execute("rm -rf " .. tmp)
  end)

  before_each(function() mock:reset() end)

  local outputs = {} -- every output, searched for the key at the end

  local function slurp(path)
    return F.readfile(path) or ""
  end

  local write, exit_code = F.writefile, F.exit_code

  -- The environment of every run: the module paths and the credentials.
  local function env_vars()
    return ("LUA_PATH='%s' LUA_CPATH='%s' OFFERSLOOK_NETWORK=clinet OFFERSLOOK_API_KEY=%s OFFERSLOOK_BASE_URL=%s")
      :format(package.path, package.cpath, KEY, mock.url)
  end

  -- Runs bin/postback with args; returns stdout, stderr, exit code.
  -- opts: env (more VAR=value), stdin (a file), lua (code run before the script).
  local function run(args, opts)
    opts = opts or {}
    local out, err = tmp .. "/out", tmp .. "/err"
    local pre = opts.lua and (" -e '" .. opts.lua .. "'") or ""
    local cmd = ("env %s %s %s%s bin/postback %s >%s 2>%s <%s")
      :format(env_vars(), opts.env or "", testenv.lua, pre, args, out, err, opts.stdin or "/dev/null")
    local code = exit_code(os.execute(cmd))
    local o, e = slurp(out), slurp(err)
    outputs[#outputs + 1] = o
    outputs[#outputs + 1] = e
    return o, e, code
  end

  -- Runs a shell script in which `P` is bin/postback; stdout, stderr, exit code.
  local function sh(script, shell)
    local file, out, err = tmp .. "/script.sh", tmp .. "/out", tmp .. "/err"
    write(file, ("P() { env %s %s bin/postback \"$@\"; }\n%s\n"):format(env_vars(), testenv.lua, script))
    local code = exit_code(os.execute(("%s %s >%s 2>%s </dev/null"):format(shell or "sh", file, out, err)))
    local o, e = slurp(out), slurp(err)
    outputs[#outputs + 1] = o
    outputs[#outputs + 1] = e
    return o, e, code
  end

  -- Runs bin/postback on a terminal (script(1) gives one to stdout and
  -- stderr, merged): output, stderr of script, exit code.
  local function tty(args, env)
    write(tmp .. "/pb.sh", ("exec env %s %s %s bin/postback \"$@\"\n"):format(env_vars(), env or "", testenv.lua))
    return sh(("script -qec 'sh %s/pb.sh %s' /dev/null"):format(tmp, args))
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

  local function lines_of(text)
    local n = 0
    for _ in text:gmatch("[^\n]+") do n = n + 1 end
    return n
  end

  -- the writes at the mock: total, the most of any one postback, how many were written
  local function writes()
    local by_id, total, max = mock:writes()
    local n = 0
    for _ in pairs(by_id) do n = n + 1 end
    return total, max, n
  end

  -- One usage line: exit 2, nothing on stdout, one line on stderr without a
  -- Lua file, line or traceback.
  local function assert_usage(args, out, err, rc, pattern)
    assert.equal(2, rc, "postback " .. args .. ": " .. err)
    assert.equal("", out, "postback " .. args)
    assert.equal(1, select(2, err:gsub("\n", "")), "postback " .. args .. ": " .. err)
    assert.matches("^postback: ", err)
    assert.is_nil(err:find("traceback", 1, true), err)
    assert.is_nil(err:find("lua:", 1, true), err)
    assert.is_nil(err:find("%.lua:%d"), err)
    if pattern then assert.matches(pattern, err, 1, true) end
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

  it("lists as JSONL when piped, with filters, sort and fields", function()
    mock:seed { count = 30, offer_id = 0, type = 2 }
    local out, err, rc = run("list --limit 50 --filter id:LESS_THAN=11 --sort=-id")
    assert.equal(0, rc, err)
    local rows = jsonl(out)
    assert.equal(10, #rows)
    assert.equal(10, rows[1].id)
    out, err, rc = run("list --all --filter affiliate_id=2")
    assert.equal(0, rc, err)
    for _, r in ipairs(jsonl(out)) do assert.equal(2, r.affiliate_id) end
    out, err, rc = run("list --limit 3 --fields id,code --filter code:contains=track")
    assert.equal(0, rc, err)
    rows = jsonl(out)
    assert.equal(3, #rows)
    assert.same({ "code", "id" }, (function()
      local keys = {}
      for k in pairs(rows[1]) do keys[#keys + 1] = k end
      table.sort(keys)
      return keys
    end)())
  end)

  it("takes global flags before or after the command", function()
    mock:seed { count = 3, offer_id = 0, type = 2 }
    local env = "OFFERSLOOK_NETWORK= OFFERSLOOK_API_KEY= OFFERSLOOK_BASE_URL="
    local creds = ("--network clinet --api-key %s --base-url %s"):format(KEY, mock.url)
    local out1, err, rc = run(creds .. " --json list", { env = env })
    assert.equal(0, rc, err)
    local out2
    out2, err, rc = run("list --json " .. creds, { env = env })
    assert.equal(0, rc, err)
    assert.equal(3, #jsonl(out1))
    assert.same(jsonl(out1), jsonl(out2))
    out1, err, rc = run("get 2 --json")
    assert.equal(0, rc, err)
    assert.equal(2, jsonl(out1)[1].id)
  end)

  it("prints the version", function()
    local version = require("postback")._VERSION
    for _, args in ipairs { "--version", "list --version", "--json --version" } do
      local out, err, rc = run(args)
      assert.equal(0, rc, err)
      assert.equal(version .. "\n", out)
      assert.matches("^postback %d+%.%d+%.%d+\n$", out)
    end
  end)

  it("exports every postback as JSONL and imports idempotently", function()
    mock:seed { count = 25, offer_id = 0, type = 2 }
    local file = tmp .. "/export.jsonl"
    local _, err, rc = run("export " .. file)
    assert.equal(0, rc, err)
    local rows = jsonl(slurp(file))
    assert.equal(25, #rows)
    -- edit two records and add one without an id
    local f = assert(io.open(file, "w"))
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

  it("export | validate - and export | import - exit 0, pending postbacks included", function()
    mock:seed { count = 12, offer_id = 0, type = 2 }
    mock:seed { count = 5, offer_id = 2, type = 2, status = "pending" }
    mock:seed { count = 4, offer_id = 3, type = 3, status = "rejected", code = '<img src="https://t.example/p">' }
    local out, err, rc = sh("P export | P validate -")
    assert.equal(0, rc, err)
    assert.equal("", out)
    out, err, rc = sh("{ P export; echo $? >" .. tmp .. "/rc1; } | P import -")
    assert.equal(0, rc, err)
    assert.equal("0\n", slurp(tmp .. "/rc1"))
    assert.same({ created = 0, updated = 0, unchanged = 21, failed = 0 }, jsonl(out)[1])
    assert.equal(0, (writes()))
    -- on a terminal-less run without --json the summary of validate is text
    out, err, rc = sh("P export >" .. tmp .. "/all.jsonl && P validate " .. tmp .. "/all.jsonl --offline")
    assert.equal(0, rc, err)
    assert.equal("", out) -- piped: JSON mode, no problems, nothing to say
  end)

  it("reads any readable path, pipes included, once: /dev/stdin and <(...)", function()
    mock:seed { count = 6, offer_id = 0, type = 2 }
    local file = tmp .. "/six.jsonl"
    local _, err, rc = run("export " .. file)
    assert.equal(0, rc, err)
    _, err, rc = run("validate /dev/stdin", { stdin = file })
    assert.equal(0, rc, err)
    _, err, rc = run("validate -", { stdin = file })
    assert.equal(0, rc, err)
    local out
    out, err, rc = sh("P validate <(cat " .. file .. ") && P import <(cat " .. file .. ")", "bash")
    assert.equal(0, rc, err)
    assert.same({ created = 0, updated = 0, unchanged = 6, failed = 0 }, jsonl(out)[1])
    out, err, rc = sh("cat " .. file .. " | P import /dev/stdin")
    assert.equal(0, rc, err)
    assert.same({ created = 0, updated = 0, unchanged = 6, failed = 0 }, jsonl(out)[1])
  end)

  it("takes a JSON array as well as JSONL", function()
    local file = tmp .. "/array.json"
    write(file, cjson.encode {
      { offer_id = 1, affiliate_id = 5, type = 2, code = "https://a.example/{click_id}" },
      { offer_id = 0, affiliate_id = 6, type = 1, code = "https://b.example/{click_id}" },
    })
    local _, err, rc = run("validate " .. file)
    assert.equal(0, rc, err)
    local out
    out, err, rc = run("import - ", { stdin = file })
    assert.equal(0, rc, err)
    assert.same({ created = 2, updated = 0, unchanged = 0, failed = 0 }, jsonl(out)[1])
    write(file, '[{"offer_id": 1, "affiliate_id": 5, "type": 2, "code": "https://a.example/"}, 7]')
    out, _, rc = run("validate " .. file)
    assert.equal(1, rc)
    local p = jsonl(out)
    assert.equal(1, #p)
    assert.equal(2, p[1].element)
  end)

  it("validates every line, with its number and the JSON parse error, and goes on", function()
    local file = tmp .. "/v.jsonl"
    write(file, table.concat({
      cjson.encode { offer_id = 1, affiliate_id = 1, type = 2, code = "https://a.example/{click_id}" },
      cjson.encode { offer_id = 1, affiliate_id = 0, type = 2, code = "x" },
      '{"offer_id": 1, "affiliate_id": ',
      "",
      "[1, 2]",
      cjson.encode { offer_id = 1, affilate_id = 4, type = 2, code = "https://a.example/" },
      cjson.encode { id = 9, offer_id = 0, affiliate_id = 1, type = 2, code = "https://a.example/", status = "pending",
                     create_time = 1700000000, update_time = 1700000000 },
      cjson.encode { offer_id = 0, affiliate_id = 1, type = 2, code = "https://a.example/", status = "pending" },
      cjson.encode { offer_id = 1, affiliate_id = 2, type = 2, code = "https://a.example/{click_id}" },
    }, "\n") .. "\n")
    local out, _, rc = run("validate " .. file)
    assert.equal(1, rc)
    local by_line = {}
    for _, p in ipairs(jsonl(out)) do
      by_line[p.line] = by_line[p.line] or {}
      table.insert(by_line[p.line], p)
    end
    assert.is_nil(by_line[1])
    assert.equal(2, #by_line[2]) -- affiliate_id and code
    assert.equal("json", by_line[3][1].code)
    assert.matches("^not JSON: ", by_line[3][1].message)
    assert.is_nil(by_line[4])
    assert.equal("not a JSON object", by_line[5][1].message)
    local unknown
    for _, p in ipairs(by_line[6]) do if p.code == "unknown_field" then unknown = p end end
    assert.equal(1, select(2, unknown.message:gsub("did you mean affiliate_id", "")), unknown.message)
    assert.is_nil(by_line[7]) -- an exported postback: pending is its state
    assert.equal("invalid_status", by_line[8][1].code) -- one to create: pending cannot be set
    assert.is_nil(by_line[9])
    -- on a terminal: FILE:LINE: field: message, then a summary
    local text
    text, _, rc = tty("validate --offline " .. file, "OFFERSLOOK_API_KEY=")
    assert.equal(1, rc)
    text = text:gsub("\r", "")
    assert.truthy(text:find(file .. ":2: affiliate_id: ", 1, true), text)
    assert.truthy(text:find(file .. ":3: not JSON: ", 1, true), text)
    assert.matches("\n8 records, 5 invalid\n$", "\n" .. text:match("[^\n]*\n$"))
  end)

  it("validate applies the conversion_protocol rule, offers looked up once; --offline skips it", function()
    local file = tmp .. "/cp.jsonl"
    local rows = {}
    for i = 1, 6 do
      -- offer 2 has conversion_protocol 2: type 3 is not allowed there
      rows[i] = cjson.encode { offer_id = 2, affiliate_id = i, type = i % 2 == 0 and 3 or 2, code = "https://a.example/" }
    end
    rows[7] = cjson.encode { offer_id = 99, affiliate_id = 1, type = 2, code = "https://a.example/" }
    write(file, table.concat(rows, "\n") .. "\n")
    mock:control("DELETE", "/_mock/requests")
    local out, err, rc = run("validate " .. file)
    assert.equal(1, rc, err)
    local bad = {}
    for _, p in ipairs(jsonl(out)) do bad[#bad + 1] = ("%d %s"):format(p.line, p.code) end
    assert.same({ "2 type_not_allowed", "4 type_not_allowed", "6 type_not_allowed", "7 offer" }, bad)
    local offers = {}
    for _, r in ipairs(mock:requests()) do
      if r.path:match("^/v1/offers/") then offers[r.path] = (offers[r.path] or 0) + 1 end
    end
    assert.same({ ["/v1/offers/2"] = 1, ["/v1/offers/99"] = 1 }, offers)
    out, err, rc = run("validate --offline " .. file, { env = "OFFERSLOOK_NETWORK= OFFERSLOOK_API_KEY=" })
    assert.equal(0, rc, err)
    assert.equal("", out)
    -- without --offline the look-ups need credentials
    out, err, rc = run("validate " .. file, { env = "OFFERSLOOK_API_KEY=" })
    assert_usage("validate", out, err, rc, "--offline")
  end)

  it("imports on batch with --concurrency: every record created or updated exactly once", function()
    mock:seed { count = 60, offer_id = 0, type = 2, code = "https://old.example/pb?c={click_id}" }
    local file = tmp .. "/many.jsonl"
    local _, err, rc = run("export " .. file)
    assert.equal(0, rc, err)
    local text = slurp(file):gsub("old%.example", "new.example")
    for i = 1, 20 do
      text = text .. cjson.encode { offer_id = 3, affiliate_id = 100 + i, type = 2, code = code_url } .. "\n"
    end
    write(file, text)
    local out
    out, err, rc = run("import --concurrency 8 " .. file)
    assert.equal(0, rc, err)
    assert.same({ created = 20, updated = 60, unchanged = 0, failed = 0 }, jsonl(out)[1])
    local total, max, n = writes()
    assert.equal(80, total)
    assert.equal(80, n)
    assert.equal(1, max)
    for _, r in ipairs(jsonl((run("list --all")))) do
      assert.is_nil(r.code:find("old.example", 1, true))
    end
    out, err, rc = run(file .. " import --concurrency=3", {}) -- FILE before the command is a command name
    assert_usage("FILE import", out, err, rc, "unknown command")
    out, err, rc = run("import --concurrency 3 " .. file)
    assert.equal(0, rc, err)
    assert.same({ created = 0, updated = 0, unchanged = 80, failed = 0 }, jsonl(out)[1])
    assert.equal(80, (writes()))
  end)

  it("imports lines in file order per postback, and sets the status of what it creates", function()
    mock:seed { count = 2, offer_id = 0, type = 2 }
    local file = tmp .. "/order.jsonl"
    write(file, table.concat({
      cjson.encode { id = 1, code = "https://a.example/1" },
      cjson.encode { id = 1, code = "https://a.example/2" },
      cjson.encode { offer_id = 4, affiliate_id = 50, type = 2, code = "https://a.example/n", status = "rejected" },
      -- an id the network does not have: matched by offer + affiliate + event + type
      cjson.encode { id = 777, offer_id = 4, affiliate_id = 50, event_id = 1, type = 2, code = "https://a.example/m" },
    }, "\n") .. "\n")
    local out, err, rc = run("import " .. file)
    assert.equal(0, rc, err)
    assert.same({ created = 1, updated = 3, unchanged = 0, failed = 0 }, jsonl(out)[1])
    out = run("get 1")
    assert.equal("https://a.example/2", jsonl(out)[1].code)
    out = run("list --filter affiliate_id=50")
    local rows = jsonl(out)
    assert.equal(1, #rows)
    assert.equal("rejected", rows[1].status)
    assert.equal("https://a.example/m", rows[1].code)
  end)

  it("import: a line with problems fails alone; a file with lines that are not JSON imports nothing", function()
    local file = tmp .. "/mixed.jsonl"
    write(file, table.concat({
      cjson.encode { offer_id = 1, affiliate_id = 5, type = 2, code = "https://a.example/" },
      cjson.encode { offer_id = 2, affiliate_id = 5, type = 3, code = "<img>" },
    }, "\n") .. "\n")
    local out, err, rc = run("import " .. file)
    assert.equal(1, rc)
    assert.same({ created = 1, updated = 0, unchanged = 0, failed = 1 }, jsonl(out)[1])
    assert.truthy(err:find(file .. ":2: ", 1, true), err)
    assert.equal(1, mock:stats().postbacks)
    write(file, cjson.encode { offer_id = 1, affiliate_id = 6, type = 2, code = "https://a.example/" } .. "\n{oops\n")
    out, err, rc = run("import " .. file)
    assert.equal(1, rc)
    assert.equal("", out)
    assert.truthy(err:find(file .. ":2: not JSON", 1, true), err)
    assert.matches("nothing imported", err)
    assert.equal(1, mock:stats().postbacks)
  end)

  it("migrates with a journal, and dry runs write nothing", function()
    mock:seed { count = 20, offer_id = 0, type = 2, code = "https://old.example/pb?c={click_id}" }
    local out, err, rc = run("migrate --replace-host old.example=new.example --dry-run")
    assert.equal(0, rc, err)
    assert.equal(20, #jsonl(out))
    assert.equal(0, (writes()))
    out, err, rc = run("migrate --replace-host old.example=new.example --set-param src=ol --journal " .. tmp .. "/j")
    assert.equal(0, rc, err)
    assert.same({ scanned = 20, changed = 20, skipped = 0, failed = 0 }, jsonl(out)[1])
    out = run("list --all")
    for _, r in ipairs(jsonl(out)) do assert.equal("https://new.example/pb?c={click_id}&src=ol", r.code) end
  end)

  it("migrate --dry-run piped is JSON lines, one per change, with the new values", function()
    mock:seed { count = 5, offer_id = 0, type = 2, code = "https://old.example/pb?c={click_id}", status = "approved" }
    mock:seed { count = 2, offer_id = 0, type = 2, code = "https://other.example/pb" }
    local out, err, rc = run("migrate --dry-run --replace-host old.example=new.example --set-status rejected")
    assert.equal(0, rc, err)
    local plan = jsonl(out)
    assert.equal(5 * 2 + 2, #plan)
    local fields = {}
    for _, p in ipairs(plan) do
      assert.is_number(p.id)
      fields[p.field] = (fields[p.field] or 0) + 1
      if p.field == "code" then
        assert.equal("https://old.example/pb?c={click_id}", p.old)
        assert.equal("https://new.example/pb?c={click_id}", p.new)
      else
        assert.equal("status", p.field)
        assert.equal("approved", p.old)
        assert.equal("rejected", p.new)
      end
    end
    assert.same({ code = 5, status = 7 }, fields)
    -- the summary goes to stderr and says what a dry run would do
    assert.matches("7 would change", err)
    assert.is_nil(err:find("%d+ changed"), err)
    assert.equal(0, (writes()))
  end)

  it("migrate applies its transforms in the order given", function()
    mock:seed { count = 1, offer_id = 0, type = 2, code = "https://t.example/pb?c={click_id}" }
    local out = run("migrate --dry-run --set-param a=1 --remove-param a --add-param b=2")
    assert.equal("https://t.example/pb?c={click_id}&b=2", jsonl(out)[1].new)
    out = run("migrate --dry-run --remove-param a --set-param a=1 --add-param b=2")
    assert.equal("https://t.example/pb?c={click_id}&a=1&b=2", jsonl(out)[1].new)
  end)

  it("shows progress: done/total, rate and ETA on a terminal", function()
    if testenv.slow then return pending("timing") end
    mock:seed { count = 120, offer_id = 0, type = 2, code = "https://old.example/pb?c={click_id}" }
    local file = tmp .. "/p.jsonl"
    local _, err, rc = run("export " .. file)
    assert.equal(0, rc, err)
    write(file, (slurp(file):gsub("old%.example", "new.example")))
    mock:fault { fault = "slow", delay = 0.02, times = 1000000, match = "/v1/affiliate_postbacks/" }
    local out
    out, err, rc = tty("import --concurrency 1 " .. file)
    mock:control("DELETE", "/_mock/faults")
    assert.equal(0, rc, err .. out)
    local etas = 0
    for done, total, rate, eta in out:gmatch("import: (%d+)/(%d+) %(%d+%%%), (%d+)/s, ETA (%d+)s") do
      done, total, rate, eta = tonumber(done), tonumber(total), tonumber(rate), tonumber(eta)
      assert.equal(120, total)
      assert.is_true(rate > 5 and rate < 500, out)
      assert.is_true(math.abs(eta - (total - done) / rate) <= 1.5, out)
      etas = etas + 1
    end
    assert.is_true(etas >= 3, out)
    assert.matches("import: 120/120 %(100%%%), in %d+s", out)
    assert.matches("0 created, 120 updated, 0 unchanged, 0 failed", out)
  end)

  it("shows progress with --progress when stderr is not a terminal", function()
    mock:seed { count = 30, offer_id = 0, type = 2, code = "https://old.example/pb?c={click_id}" }
    local _, err, rc = run("export --progress " .. tmp .. "/x.jsonl")
    assert.equal(0, rc, err)
    assert.matches("export: 30/30 %(100%%%), in %d+s", err)
    _, err, rc = run("migrate --progress --replace-host old.example=new.example")
    assert.equal(0, rc, err)
    assert.matches("migrate: 30/30 %(100%%%), in %d+s", err)
    _, err = run("list")
    assert.equal("", err)
  end)

  it("renders and fires", function()
    local out, err, rc = run("render 'https://t.example/?c={click_id}&p={payout}' click_id='a b' payout=2.5")
    assert.equal(0, rc, err)
    assert.equal("https://t.example/?c=a%20b&p=2.5\n", out)
    out, err, rc = run("fire '" .. code_url .. "' click_id=cli-1 --allow-private")
    assert.equal(0, rc, err)
    assert.is_true(jsonl(out)[1].ok)
    assert.equal("c=cli-1", mock:received()[1].query)
    out, err, rc = run("fire '" .. code_url .. "' click_id=cli-2 --allow-network 127.0.0.0/8 --allow-network ::1/128")
    assert.equal(0, rc, err)
    assert.is_true(jsonl(out)[1].ok)
    out, err, rc = run("render '{click_id}' --missing error")
    assert.equal(1, rc)
    assert.equal("", out)
    assert.equal(1, lines_of(err))
    assert.is_nil(err:find("%.lua:%d"), err)
    out, err, rc = run("fire 'ftp://x.example/'")
    assert.equal(1, rc)
    assert.equal("", out)
    assert.equal(1, lines_of(err), err)
    assert.is_nil(err:find("%.lua:%d"), err)
  end)

  it("exits 2 with one line on stderr for usage errors, never a Lua file or traceback", function()
    for _, case in ipairs {
      { "" }, { "bogus" }, { "lsit", "did you mean list?" }, { "get" }, { "get abc" }, { "get 1 2" },
      { "get 2 --jsno", "did you mean --json?" }, { "--bogus list", "unknown flag" },
      { "list --limit abc", "--limit" }, { "list --limit 0" }, { "list --limit 1001" }, { "list --limit" },
      { "list --page 0", "--page" }, { "list --page -1" }, { "list --all --page 2" },
      { "list --sort foo" }, { "list --sort -afiliate_id", "did you mean -affiliate_id?" },
      { "list --fields id,cod", "did you mean code?" },
      { "list --filter affilate_id=7", "did you mean affiliate_id?" }, { "list --filter code:CONTAIN=x", "CONTAINS" },
      { "list --filter affiliate_id=abc" }, { "list --filter status=aproved", "did you mean approved?" },
      { "list --json=yes" }, { "list extra" },
      { "status 2 pending" }, { "status 2" }, { "status 1 approved --dry-run", "unknown flag" },
      { "update 5" }, { "update 5 colour=red" }, { "update 5 status=pending" }, { "update 5 offer_id=3" },
      { "create affilate_id=7", "did you mean affiliate_id?" }, { "create offer_id=x" },
      { "migrate" }, { "migrate --replace-host", "--replace-host needs a value" }, { "migrate --replace-host old" },
      { "migrate --replace-host a=b --concurrency abc" }, { "migrate --replace-host a=b --concurrency 0" },
      { "migrate --set-type 4" }, { "migrate --set-status aproved", "did you mean approved?" },
      { "migrate --rename-macro aff_sub=afff_sub1", "did you mean aff_sub1?" },
      { "migrate --replace-host a=b --jounral j", "did you mean --journal?" },
      { "import" }, { "import /nonexistent/file", "cannot read /nonexistent/file" },
      { "import " .. tmp, "Is a directory" }, { "import - --concurrency abc" }, { "import - --concurrency 0" },
      { "validate" }, { "validate /nonexistent/file", "cannot read" },
      { "export /nonexistent/dir/x.jsonl", "cannot write /nonexistent/dir/x.jsonl" },
      { "migrate --replace-host a=b --journal /nonexistent/dir/j", "journal /nonexistent/dir/j" },
      { "render" }, { "render x --missing maybe", "--missing" }, { "render x --encode base64" }, { "render x y" },
      { "fire" }, { "fire http://x.example/ --retries many" }, { "fire http://x.example/ --timeout -1" },
      { "fire http://x.example/ --allow-network 10.0.0.0/33" }, { "fire http://x.example/ --allow-network banana" },
      { "fire http://x.example/ --allow-network 1:2/8", "--allow-network" },
      { "fire http://x.example/ --allow-network 1::2::3/64", "--allow-network" },
      { "fire http://x.example/ --allow-network 01.2.3.4/8", "--allow-network" },
      { "mock --prot 0", "did you mean --port?" }, { "mock --port 70000" }, { "mock --latency slow" },
      { "--network" },
    } do
      local out, err, rc = run(case[1])
      assert_usage(case[1], out, err, rc, case[2])
      assert.is_nil(err:find("transport", 1, true), err)
    end
    local out, err, rc = run("list", { env = "OFFERSLOOK_API_KEY=" })
    assert_usage("list", out, err, rc, "API key")
    assert.equal(0, mock:stats().requests)
  end)

  it("refuses a plain-http base URL unless --insecure, and says so", function()
    mock:seed { count = 2, offer_id = 0, type = 2 }
    -- 0.0.0.0 reaches the mock but is not loopback: http:// needs --insecure
    local remote = "OFFERSLOOK_BASE_URL=" .. mock.url:gsub("127%.0%.0%.1", "0.0.0.0")
    local out, err, rc = run("list", { env = remote })
    assert_usage("list", out, err, rc, "--insecure")
    assert.is_nil(err:find("insecure = true", 1, true), err)
    out, err, rc = run("list --insecure", { env = remote })
    assert.equal(0, rc, err)
    assert.equal(2, #jsonl(out))
  end)

  it("names the file and why when it cannot write an export", function()
    mock:seed { count = 3, offer_id = 0, type = 2 }
    local _, err, rc = run("export /dev/full")
    assert.equal(1, rc)
    assert.matches("^postback: cannot write /dev/full: ", err)
    assert.is_nil(err:find("transport", 1, true), err)
  end)

  it("hands worker and dlq to postback.queue_cli with their raw arguments", function()
    -- the module, as the queue branch provides it: here a stand-in
    local fake = 'package.preload["postback.queue_cli"] = function() return { '
      .. 'worker = function(a) io.write("worker:", table.concat(a, "|"), "\\n") return 3 end, '
      .. 'dlq = function(a) io.write("dlq:", table.concat(a, "|"), "\\n") return 0 end } end'
    local out, err, rc = run("worker --redis redis://127.0.0.1:1/0 --bogus x -- y", { lua = fake })
    assert.equal(3, rc, err)
    assert.equal("worker:--redis|redis://127.0.0.1:1/0|--bogus|x|--|y\n", out)
    out, err, rc = run("--json dlq list --help", { lua = fake })
    assert.equal(0, rc, err)
    assert.equal("dlq:list|--help\n", out)
    -- without the module: a usage error that says so
    local hide = 'local s = package.searchers or package.loaders; for i = 1, #s do local f = s[i]; '
      .. 's[i] = function(n, ...) if n == "postback.queue_cli" then return "\\n\\thidden" end return f(n, ...) end end'
    for _, cmd in ipairs { "worker --redis redis://127.0.0.1:1/0", "dlq list" } do
      out, err, rc = run(cmd, { lua = hide })
      assert_usage(cmd, out, err, rc, "queue module")
    end
    out = run("--help")
    assert.matches("\n  worker ", out)
    assert.matches("\n  dlq ", out)
  end)

  it("worker and dlq read their flags as every other command does", function()
    local url = "redis://127.0.0.1:1/0"
    -- (--claim-idle 1, a usage error checked later, keeps a value taken by
    -- mistake from starting a worker that would run until killed)
    for _, case in ipairs {
      { "worker --redis --stream s", "--redis needs a value" },
      { "dlq list --redis", "--redis needs a value" },
      { "worker --redis " .. url .. " -- extra", "worker takes no arguments, got extra" },
      { "dlq --redis " .. url .. " -- list --count", "dlq list takes no other arguments, got --count" },
      { "worker --redis " .. url .. " --concurrency 0x10 --claim-idle 1", "--concurrency takes an integer from 1 to 100000, got '0x10'" },
      { "worker --redis " .. url .. " --concurrency 1e999", "--concurrency takes an integer" },
      { "worker --redis " .. url .. " --concurrency 2.5", "--concurrency takes an integer" },
      { "worker --redis " .. url .. " --timeout 0.0001", "--timeout takes a number from 0.001 to 1000000, got '0.0001'" },
      { "worker --redis " .. url .. " --timeout 1" .. ("0"):rep(400), "--timeout takes a number" },
      { "worker --redis " .. url .. " --connect-timeout 0", "--connect-timeout takes a number" },
      { "worker --redis " .. url .. " --log-max -1", "--log-max takes an integer from 0" },
      { "worker --redis " .. url .. " --retries 1e1 --claim-idle 1", "--retries takes" },
      { "worker --redis " .. url .. " --retry-schedule 5,1e999 --claim-idle 1", "--retry-schedule" },
      { "worker --redis " .. url .. " --allow-network banana", "allow_networks" },
      { "dlq list --redis " .. url .. " --count 0", "--count takes an integer from 1" },
      { "dlq list --redis " .. url .. " --count 0x10", "--count takes an integer from 1" },
    } do
      local out, err, rc = run(case[1])
      assert_usage(case[1], out, err, rc, case[2])
    end
  end)

  it("prints errors raised by the command line itself without its file and line", function()
    local fake = 'package.preload["postback.queue_cli"] = function() return { '
      .. 'worker = function() error("the worker failed", 2) end } end'
    local out, err, rc = run("worker", { lua = fake })
    assert.equal(1, rc)
    assert.equal("", out)
    assert.equal("postback: the worker failed\n", err)
  end)

  it("has --help for every command", function()
    for _, cmd in ipairs { "list", "get", "create", "update", "status", "delete", "export", "import",
                           "migrate", "validate", "render", "fire", "mock" } do
      local out, err, rc = run(cmd .. " --help")
      assert.equal(0, rc, err)
      assert.matches("^postback " .. cmd, out)
      out, err, rc = run(cmd .. " -h")
      assert.equal(0, rc, err)
      assert.matches("^postback " .. cmd, out)
    end
    -- worker and dlq: their own help, --help before or after the name
    for _, cmd in ipairs { "worker --help", "--help worker", "-h worker", "dlq list -h", "--help dlq list" } do
      local out, err, rc = run(cmd)
      assert.equal(0, rc, err)
      assert.matches("^usage: postback " .. (cmd:find("dlq", 1, true) and "dlq" or "worker"), out)
    end
    local out, _, rc = run("--help")
    assert.equal(0, rc)
    assert.matches("commands:", out)
    out = run("validate --help")
    assert.matches("pending", out)
    assert.matches("--offline", out)
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
    assert.is_true(#outputs > 100)
    for _, s in ipairs(outputs) do
      assert.is_nil(s:find(KEY, 1, true), "the key leaked: " .. s)
    end
    local p = assert(io.popen("grep -rl '" .. KEY .. "' " .. tmp .. " 2>/dev/null | grep -v '\\.sh$'"))
    local files = p:read("*a")
    p:close()
    assert.equal("", files)
  end)
end)
