-- The rockspec installs what the tree has: every Lua module and C source.
describe("rockspec", function()
  local text
  setup(function()
    local f = assert(io.open("postback-scm-1.rockspec"))
    text = f:read("*a")
    f:close()
  end)

  local function each_file(cmd)
    local p = assert(io.popen(cmd))
    local out = {}
    for line in p:lines() do out[#out + 1] = line end
    p:close()
    return out
  end

  it("lists every Lua module under lua/", function()
    local files = each_file("find lua -name '*.lua' | sort")
    assert.is_true(#files > 5)
    for _, path in ipairs(files) do
      local mod = path:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
      assert.truthy(text:find(('["%s"] = "%s"'):format(mod, path), 1, true), path .. " missing from the rockspec")
    end
  end)

  it("compiles every C source of core/", function()
    for _, path in ipairs(each_file("ls core/*.c")) do
      assert.truthy(text:find('"' .. path .. '"', 1, true), path .. " missing from the rockspec")
    end
  end)

  it("declares its dependencies", function()
    assert.truthy(text:find('"lua >= 5.1"', 1, true))
    assert.truthy(text:find('"lua-cjson"', 1, true))
    assert.truthy(text:find("CURL", 1, true))
    assert.truthy(text:find('IDN2 = { header = "idn2.h", library = "idn2" }', 1, true))
  end)
end)
