-- The key never leaves: an API server that echoes the request's
-- Authorization header (and the credentials it decodes from it) back in its
-- error message must not get the API key, nor its Base64 "Basic" form, into
-- err.message, tostring(err), any other field of an error, the on_request
-- info, a migrate report or journal, or the command line's output.
--
-- The servers are the hostile server's /echo-auth (400 with an API
-- envelope whose message is the echo) and /echo-auth-text (500, a text/plain
-- body with the echo), used as the client's base_url.
local hostile = require "hostile"
local postback = require "postback"
local testenv = require "testenv"

local NETWORK = "leakynet"
local KEY = "sekrit-API-key-7731"

local function base64(s)
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local quad = {}
    for j = 3, 0, -1 do
      local v = math.floor(n / 64 ^ j) % 64
      quad[#quad + 1] = chars:sub(v + 1, v + 1)
    end
    if not b then quad[3], quad[4] = "=", "=" elseif not c then quad[4] = "=" end
    out[#out + 1] = table.concat(quad)
  end
  return table.concat(out)
end

local BASIC = base64(NETWORK .. ":" .. KEY)

-- Every string reachable from v (keys, values, and tostring of tables with
-- a __tostring), each with where it was found.
local function strings(v, where, out, seen)
  out, seen = out or {}, seen or {}
  local t = type(v)
  if t == "string" then
    out[#out + 1] = { where, v }
  elseif t == "table" and not seen[v] then
    seen[v] = true
    local mt = getmetatable(v)
    if mt and mt.__tostring then out[#out + 1] = { "tostring(" .. where .. ")", tostring(v) } end
    for k, x in pairs(v) do
      strings(k, where .. " key", out, seen)
      strings(x, where .. "." .. tostring(k), out, seen)
    end
  elseif t ~= "nil" then
    out[#out + 1] = { where, tostring(v) }
  end
  return out
end

-- What must never be seen with a given network name: the key, its Basic
-- form, and any piece of them long enough to matter (a message cut short
-- must not keep half a key). The Basic form's first characters that encode
-- the network alone (and the colon after it) are no secret.
local function secrets_of(network)
  local basic = base64(network .. ":" .. KEY)
  local list = { { KEY, "the API key" }, { basic, "the Basic credentials" } }
  for i = 1, #KEY - 11 do list[#list + 1] = { KEY:sub(i, i + 11), "a piece of the API key" } end
  for i = math.floor((#network + 1) / 3) * 4 + 1, #basic - 15 do
    list[#list + 1] = { basic:sub(i, i + 15), "a piece of the Basic credentials" }
  end
  return list
end
local SECRETS = secrets_of(NETWORK)
assert(#SECRETS > 2 and SECRETS[2][1] == BASIC)

-- Asserts that no secret (of NETWORK, or of the list given) is in any string of v.
local function assert_clean(v, where, secrets)
  for _, s in ipairs(strings(v, where)) do
    local at, text = s[1], s[2]
    for _, secret in ipairs(secrets or SECRETS) do
      local i = text:find(secret[1], 1, true)
      if i then
        error(("%s leaks into %s: ...%s..."):format(secret[2], at, text:sub(math.max(1, i - 60), i + 60)), 2)
      end
    end
  end
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

describe("reliability: the API key never leaves, even when the server echoes it", function()
  local server, tmp

  setup(function()
    server = hostile.start()
    tmp = os.tmpname()
    os.remove(tmp)
    assert(os.execute("mkdir -p " .. tmp))
  end)

  teardown(function()
    if server then server:stop() end
    os.execute("rm -rf " .. tmp)
  end)

  it("the echo servers do echo the credentials (the test can fail)", function()
    local status, body = hostile.http(server.port, "GET", "/echo-auth/v1/offers/1")
    assert.equal(400, status)
    assert.truthy(body:find("Authorization", 1, true))
  end)

  for _, mode in ipairs { "echo-auth", "echo-auth-text" } do
    describe("/" .. mode .. ":", function()
      local c, infos

      before_each(function()
        infos = {}
        c = assert(postback.client { network = NETWORK, api_key = KEY, base_url = server.url .. "/" .. mode,
          timeout = 5, retries = 0, on_request = function(info) infos[#infos + 1] = info end })
      end)

      after_each(function() c:close() end)

      local CALLS = {
        get = function() return c:get(1) end,
        list = function() return c:list { limit = 5 } end,
        create = function()
          return c:create { offer_id = 1, affiliate_id = 7, type = 2, code = "https://t.example/pb?c={click_id}" }
        end,
        update = function() return c:update(1, { code = "https://t.example/pb?c={click_id}&u=1" }) end,
        set_status = function() return c:set_status(1, "approved") end,
        delete = function() return c:delete(1) end,
        offer = function() return c:offer(2) end,
      }
      for _, name in ipairs { "get", "list", "create", "update", "set_status", "delete", "offer" } do
        it(name .. ": neither err, tostring(err) nor on_request holds the key", function()
          local v, err = CALLS[name]()
          assert.is_nil(v)
          assert.is_table(err)
          assert.is_truthy(err.kind == "api" or err.kind == "http", "unexpected kind " .. tostring(err.kind))
          assert.is_true(#infos >= 1, "on_request was not called")
          assert_clean(err.message, "err.message")
          assert_clean(tostring(err), "tostring(err)")
          assert_clean(err, "err")
          assert_clean(infos, "on_request info")
        end)
      end

      it("each: the raised error does not hold the key", function()
        local ok, err = pcall(function() for _ in c:each { limit = 5 } do end end)
        assert.is_false(ok)
        assert_clean(err, "the error each raised")
        assert_clean(tostring(err), "tostring of the error each raised")
        assert_clean(infos, "on_request info")
      end)

      it("batch: no result holds the key", function()
        local rs = c:batch { { "get", 1 }, { "set_status", 2, "rejected" }, { "delete", 3 } }
        for i, r in ipairs(rs) do
          assert.is_false(r.ok)
          assert_clean(r, "batch result " .. i)
          assert_clean(tostring(r.error), "tostring of batch error " .. i)
        end
        assert_clean(infos, "on_request info")
      end)

      it("migrate: neither the report, its errors nor the journal hold the key", function()
        local journal = tmp .. "/" .. mode .. ".journal"
        os.remove(journal)
        local rows = {}
        for id = 1, 3 do
          rows[id] = { id = id, offer_id = 1, affiliate_id = 7, type = 2, status = "approved",
                       code = "https://old.example/pb?c={click_id}" }
        end
        local i = 0
        local report, err = postback.migrate {
          client = c, journal = journal,
          source = function() i = i + 1 return rows[i] end,
          transform = postback.transforms.replace_host("old.example", "new.example"),
        }
        assert_clean(report, "the migrate report")
        assert_clean(err, "the migrate error")
        if report then
          assert.equal(3, report.failed)
          for k, e in ipairs(report.errors) do assert_clean(tostring(e.error), "tostring of report error " .. k) end
        end
        local text = slurp(journal)
        assert.is_true(#text > 0, "no journal was written")
        assert_clean(text, "the journal file")
        assert_clean(infos, "on_request info")
      end)

      it("an error text cut short keeps no piece of the key, whatever the network name's length", function()
        -- The echo holds the Basic form, then network:key; with names of 30
        -- to 60 characters the cut of a long text falls across each of them.
        for k = 30, 60 do
          local network = ("n"):rep(k)
          local ck = assert(postback.client { network = network, api_key = KEY, timeout = 5, retries = 0,
                                              base_url = server.url .. "/" .. mode })
          local v, err = ck:get(1)
          ck:close()
          assert.is_nil(v)
          assert.is_table(err)
          local secrets = secrets_of(network)
          assert_clean(err.message, "err.message (network of " .. k .. ")", secrets)
          assert_clean(tostring(err), "tostring(err) (network of " .. k .. ")", secrets)
          assert_clean(err, "err (network of " .. k .. ")", secrets)
        end
      end)

      it("migrate from a query: the error does not hold the key", function()
        local ok, report, err = pcall(postback.migrate, {
          client = c, query = { limit = 5 },
          transform = postback.transforms.replace_host("old.example", "new.example"),
        })
        assert_clean(report, ok and "the migrate report" or "the error migrate raised")
        assert_clean(tostring(report), "tostring of what migrate returned")
        assert_clean(err, "the migrate error")
        assert_clean(tostring(err), "tostring of the migrate error")
        -- the query failed at the echo server: nil, err (the echo went into err)
        assert.is_true(ok, tostring(report))
        assert.is_nil(report)
        assert.is_table(err)
        assert.is_truthy(err.kind == "api" or err.kind == "http", "unexpected kind " .. tostring(err.kind))
      end)
    end)
  end

  describe("the command line", function()
    -- Runs bin/postback against the echo server; returns stdout .. stderr.
    local function run(mode, args, by_flag)
      local out, err = tmp .. "/cli.out", tmp .. "/cli.err"
      local creds = by_flag
        and ("--network %s --api-key %s --base-url %s/%s"):format(NETWORK, KEY, server.url, mode)
        or ""
      local cmd = ("env LUA_PATH='%s' LUA_CPATH='%s' OFFERSLOOK_NETWORK=%s OFFERSLOOK_API_KEY=%s "
        .. "OFFERSLOOK_BASE_URL=%s/%s timeout -k 2 30 %s bin/postback %s %s >%s 2>%s </dev/null")
        :format(package.path, package.cpath, NETWORK, KEY, server.url, mode, testenv.lua, creds, args, out, err)
      os.execute(cmd)
      return slurp(out), slurp(err)
    end

    local jsonl
    setup(function()
      jsonl = tmp .. "/import.jsonl"
      local f = assert(io.open(jsonl, "w"))
      for id = 1, 2 do
        f:write(('{"id":%d,"offer_id":1,"affiliate_id":7,"type":2,"status":"approved","code":"https://t.example/pb?c={click_id}"}\n')
          :format(id))
      end
      f:close()
    end)

    for _, mode in ipairs { "echo-auth", "echo-auth-text" } do
      for _, args in ipairs { "get 1", "list", "status 1 approved", "delete 1", "export",
                              "migrate --replace-host old.example=new.example --journal " .. tmp .. "/cli.journal",
                              "import " .. tmp .. "/import.jsonl" } do
        for _, by_flag in ipairs { false, true } do
          it(("postback %s against /%s (key %s): stdout and stderr are clean"):format(
              args:match("^%S+"), mode, by_flag and "as a flag" or "in the environment"), function()
            os.remove(tmp .. "/cli.journal")
            local out, err = run(mode, args, by_flag)
            assert.is_true(#err > 0, "nothing on stderr: the call did not fail?")
            assert_clean(err, "stderr")
            assert_clean(out, "stdout")
            assert_clean(slurp(tmp .. "/cli.journal"), "the migrate journal")
          end)
        end
      end
    end
  end)
end)
