-- `luarocks make postback-redis-scm-1.rockspec` installs postback.redis next
-- to the base rock, and only that module links hiredis.
local F = require "fixtures"
local testenv = require "testenv"

local sh = F.sh
local has_luarocks = F.run("command -v luarocks >/dev/null 2>&1")
local LUA = (testenv.suite == "asan" or testenv.suite == "valgrind") and "lua5.4" or testenv.lua
local VER = LUA == "luajit" and "5.1" or LUA:match("(%d+%.%d+)$") or "5.4"
local CLEAN_ENV = "env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u LUA_INIT"
  .. " -u LUA_INIT_5_4 -u LD_PRELOAD -u ASAN_OPTIONS -u UBSAN_OPTIONS"

describe("luarocks make postback-redis", function()
  if not has_luarocks then
    pending("luarocks is not installed")
    return
  end
  if not F.run("test -f /usr/include/hiredis/hiredis.h") then
    pending("hiredis headers (libhiredis-dev) are not installed")
    return
  end

  local tmp
  after_each(function()
    if tmp and tmp:match("^/.+") and tmp ~= "/" then F.run("rm -rf " .. sh(tmp)) end
  end)

  it("installs postback.redis beside the base rock; the base does not link hiredis", function()
    local root = F.root()
    local p = assert(io.popen("mktemp -d"))
    tmp = p:read("*l")
    p:close()
    local src, tree, log = tmp .. "/src", tmp .. "/tree", tmp .. "/luarocks.log"
    assert.is_true(F.run("mkdir -p " .. sh(src)))
    local copy = {}
    for _, path in ipairs { "lua_postback.c", "binding", "core", "lua", "mock", "bin", "redis",
                            "postback-scm-1.rockspec", "postback-redis-scm-1.rockspec" } do
      copy[#copy + 1] = sh(root .. "/" .. path)
    end
    assert.is_true(F.run("cp -r " .. table.concat(copy, " ") .. " " .. sh(src .. "/")))
    F.run("find " .. sh(src) .. " -name '*.o' -exec rm -f {} + ")
    for _, rockspec in ipairs { "postback-scm-1.rockspec", "postback-redis-scm-1.rockspec" } do
      local ok = F.run("cd " .. sh(src) .. " && " .. CLEAN_ENV .. " luarocks --lua-version " .. VER .. " --tree "
        .. sh(tree) .. " make --deps-mode=none " .. rockspec .. " >" .. sh(log) .. " 2>&1")
      assert.is_true(ok, "luarocks make " .. rockspec .. " failed:\n" .. (F.readfile(log) or ""))
    end
    local lib = tree .. "/lib/lua/" .. VER .. "/postback/"
    local function links_hiredis(so)
      return F.run("ldd " .. sh(so) .. " | grep -q hiredis")
    end
    assert.is_true(links_hiredis(lib .. "redis.so"))
    assert.is_false(links_hiredis(lib .. "core.so"))

    local lpath = tree .. "/share/lua/" .. VER .. "/?.lua;" .. tree .. "/share/lua/" .. VER .. "/?/init.lua;;"
    local cpath = tree .. "/lib/lua/" .. VER .. "/?.so;;"
    local script = 'local r = require "postback.redis" print(r.HIREDIS_VERSION) '
      .. 'local q = assert(require("postback").queue { redis = "redis://127.0.0.1:1/0" }) '
      .. 'local id, err = q:push("https://t.example/pb") print(id, err.kind)'
    local out_file = tmp .. "/out.txt"
    local ok = F.run("cd " .. sh(tmp) .. " && " .. CLEAN_ENV .. " LUA_PATH=" .. sh(lpath) .. " LUA_CPATH="
      .. sh(cpath) .. " " .. LUA .. " -e " .. sh(script) .. " >" .. sh(out_file) .. " 2>&1")
    local out = F.readfile(out_file) or ""
    assert.is_true(ok, out)
    assert.matches("^hiredis %d+%.%d+%.%d+\nnil\ttransport\n$", out)
  end)
end)
