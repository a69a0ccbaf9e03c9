-- Every public function, method and option has an entry in the reference
-- (README.md), and the cookbook and changelog exist.
local postback = require "postback"

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("*a")
  f:close()
  return s
end

describe("documentation", function()
  local readme = read("README.md")

  local function documented(name)
    return readme:find("`" .. name, 1, true) ~= nil
  end

  it("covers every function and constant of the module", function()
    local names = {}
    for k in pairs(postback) do names[#names + 1] = k end
    for _, k in ipairs { "client", "fire", "fire_many", "dispatcher", "migrate", "transforms", "queue", "worker" } do
      names[#names + 1] = k -- loaded on first use
    end
    for _, k in ipairs(names) do
      if k ~= "Error" then
        assert.is_true(documented("postback." .. k) or documented(k .. "("), "README has no entry for postback." .. k)
      end
    end
  end)

  it("covers every method of templates, clients and dispatchers", function()
    local t = postback.template("x")
    for k in pairs(getmetatable(t).__index) do
      assert.is_true(documented("t:" .. k), "README has no entry for t:" .. k)
    end
    local c = assert(postback.client { network = "n", api_key = "k" })
    for k, v in pairs(getmetatable(c)) do
      if type(v) == "function" and not k:find("^__") and k ~= "build" and k ~= "interpret" and k ~= "call"
         and k ~= "protocol" then
        assert.is_true(documented("c:" .. k), "README has no entry for c:" .. k)
      end
    end
    local d = postback.dispatcher {}
    for k, v in pairs(getmetatable(d).__index) do
      if type(v) == "function" and not k:find("^__") and k ~= "finish" then
        assert.is_true(documented("d:" .. k), "README has no entry for d:" .. k)
      end
    end
    d:close()
  end)

  it("covers every method of queues and workers, and the queue's commands", function()
    if not pcall(require, "postback.redis") then
      return pending("postback.redis (hiredis) is not built")
    end
    local q = assert(postback.queue { redis = "redis://127.0.0.1:1/0" })
    for k, v in pairs(getmetatable(q).__index) do
      if type(v) == "function" and not k:find("^__") then
        assert.is_true(documented("q:" .. k), "README has no entry for q:" .. k)
      end
    end
    q:close()
    local w = assert(postback.worker { redis = "redis://127.0.0.1:1/0" })
    local internal = { connected = true, ensure_group = true, redis_error = true, known = true, outcome = true,
                       take = true, result = true, observe = true, finish = true, flush = true, read = true,
                       claim = true, claim_due = true, move = true, touch = true, refresh_stats = true, step = true,
                       listen = true, serve = true }
    for k, v in pairs(getmetatable(w).__index) do
      if type(v) == "function" and not k:find("^__") and not internal[k] then
        assert.is_true(documented("w:" .. k), "README has no entry for w:" .. k)
      end
    end
    w:close()
    for _, cmd in ipairs { "postback worker", "postback dlq list", "postback dlq replay", "postback dlq purge",
                           "--metrics", "svix-webhooks#2181", "svix-webhooks#1844", "lua-resty-redis" } do
      assert.truthy(readme:find(cmd, 1, true), "README does not mention " .. cmd)
    end
  end)

  it("covers every firing and dispatcher option, and every request option of transports", function()
    local core = require "postback.core"
    for _, k in ipairs(core.REQUEST_OPTIONS) do
      assert.truthy(readme:find("`" .. k .. "`", 1, true), "README has no entry for the request option " .. k)
    end
    for _, mod in ipairs { "postback.fire", "postback.dispatcher" } do
      for k in pairs(require(mod).OPTIONS) do
        assert.is_true(documented(k), "README has no entry for the option " .. k .. " (" .. mod .. ")")
      end
    end
  end)

  it("describes the destination policy: what is refused, the options, the error, the flags", function()
    local section = assert(readme:match("\n#### Destination policy\n(.-)\n##"), "no Destination policy section")
    for _, word in ipairs { "169.254.0.0/16", "100.64.0.0/10", "fc00::/7", "::ffff:0:0/96", "redirect",
                            "allow_private", "allow_networks", "allow_userinfo", "proxy", "blocked_address",
                            "--allow-private", "--allow-network" } do
      assert.truthy(section:find(word, 1, true), "the Destination policy section does not mention " .. word)
    end
  end)

  it("covers every ready transform and every command of the command line", function()
    for k in pairs(postback.transforms) do
      assert.is_true(documented(k), "README has no entry for transforms." .. k)
    end
    for _, cmd in ipairs { "list", "get", "create", "update", "status", "delete", "export", "import",
                           "migrate", "validate", "render", "fire", "mock" } do
      assert.truthy(readme:find(cmd, 1, true), "README does not mention postback " .. cmd)
    end
  end)

  it("has a cookbook and a changelog", function()
    local cookbook = read("doc/cookbook.md")
    for _, topic in ipairs { "migration", "OpenResty", "game server" } do
      assert.truthy(cookbook:lower():find(topic:lower(), 1, true), "cookbook lacks " .. topic)
    end
    assert.truthy(read("CHANGELOG.md"):find("0.1.0", 1, true))
  end)
end)
