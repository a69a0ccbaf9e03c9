-- The rockspecs install what the tree has: every Lua module and C source,
-- and declare what the installed commands need. postback-0.2.0-1 is the
-- build of postback-scm-1 for a released version.
local ROCKSPECS = { "postback-scm-1.rockspec", "postback-0.2.0-1.rockspec" }

local function read(path)
  local f = assert(io.open(path))
  local text = f:read("*a")
  f:close()
  return text
end

-- A rockspec's fields, as LuaRocks reads them: a Lua file run in an empty
-- environment.
local function load_rockspec(path)
  local env = {}
  local chunk
  if setfenv then
    chunk = assert(loadfile(path))
    setfenv(chunk, env)
  else
    chunk = assert(loadfile(path, "t", env))
  end
  chunk()
  return env
end

local function each_file(cmd)
  local p = assert(io.popen(cmd))
  local out = {}
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  return out
end

for _, name in ipairs(ROCKSPECS) do
  describe(name, function()
    local text, spec
    setup(function()
      text = read(name)
      spec = load_rockspec(name)
    end)

    it("lists every Lua module under lua/", function()
      local files = each_file("find lua -name '*.lua' | sort")
      assert.is_true(#files > 5)
      for _, path in ipairs(files) do
        local mod = path:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
        assert.truthy(text:find(('["%s"] = "%s"'):format(mod, path), 1, true), path .. " missing from " .. name)
        assert.equal(path, spec.build.modules[mod])
      end
    end)

    it("compiles every C source of core/", function()
      for _, path in ipairs(each_file("ls core/*.c")) do
        assert.truthy(text:find('"' .. path .. '"', 1, true), path .. " missing from " .. name)
      end
    end)

    it("declares its dependencies: lua-cjson, LuaSocket for postback mock, libcurl, libidn2", function()
      assert.same({ "lua >= 5.1", "lua-cjson", "luasocket" }, spec.dependencies)
      assert.truthy(spec.external_dependencies.CURL)
      assert.same({ header = "idn2.h", library = "idn2" }, spec.external_dependencies.IDN2)
      assert.equal("mock/offerslook.lua", spec.build.modules["postback.mock"])
      assert.equal("bin/postback", spec.build.install.bin.postback)
    end)
  end)
end

describe("postback-0.2.0-1.rockspec", function()
  it("is the build of the scm rockspec, for the version of postback._VERSION, from its tag", function()
    local scm, rel = load_rockspec("postback-scm-1.rockspec"), load_rockspec("postback-0.2.0-1.rockspec")
    assert.same(scm.build, rel.build)
    assert.same(scm.dependencies, rel.dependencies)
    assert.same(scm.external_dependencies, rel.external_dependencies)
    assert.same(scm.description, rel.description)
    assert.equal(scm.package, rel.package)
    assert.equal("0.2.0-1", rel.version)
    local version = read("lua/postback/util.lua"):match('\nM%.VERSION = "([%d.]+)"')
    assert.equal(rel.version:match("^(.*)%-%d+$"), version)
    assert.equal("v" .. version, rel.source.tag)
    assert.matches("^git%+https://", rel.source.url)
  end)
end)
