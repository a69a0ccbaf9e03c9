-- `luarocks make` with the rockspec installs a module that loads and renders
-- in a fresh process of the interpreter under test (5.4, 5.3, 5.1 or LuaJIT)
-- that sees only the rock tree.
--
-- LuaRocks' builtin backend writes its .o files next to the sources, so the
-- build runs in a copy of the source tree in a temporary directory.
local F = require "fixtures"

local sh = F.sh

local has_luarocks = F.run("command -v luarocks >/dev/null 2>&1")
local testenv = require "testenv"
-- the interpreter under test and its LuaRocks version (LuaJIT builds for 5.1)
local LUA = (testenv.suite == "asan" or testenv.suite == "valgrind") and "lua5.4" or testenv.lua
local VER = LUA == "luajit" and "5.1" or LUA:match("(%d+%.%d+)$") or "5.4"
local has_lua54 = F.run("command -v " .. LUA .. " >/dev/null 2>&1")

-- Environment for child processes: none of the specs' module paths, and no
-- sanitizer preload (the ASan suite sets LD_PRELOAD for the Lua under test).
local CLEAN_ENV = "env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u LUA_INIT"
  .. " -u LUA_INIT_5_4 -u LD_PRELOAD -u ASAN_OPTIONS -u UBSAN_OPTIONS"

local function mktemp_dir()
  local p = assert(io.popen("mktemp -d 2>/dev/null || mktemp -d -t postback"))
  local dir = p:read("*l")
  p:close()
  assert(dir and dir:sub(1, 1) == "/", "mktemp -d failed")
  return dir
end

local function exists(path)
  return F.run("test -e " .. sh(path))
end

describe("luarocks make", function()
  if not has_luarocks then
    pending("luarocks is not installed")
    return
  end

  local tmp

  after_each(function()
    if tmp and tmp:match("^/.+") and tmp ~= "/" then
      F.run("rm -rf " .. sh(tmp))
    end
    tmp = nil
  end)

  it("installs a tree from which a fresh " .. LUA .. " requires postback and renders", function()
    assert.is_true(has_lua54, LUA .. " is needed to run the installed module")
    local root = F.root()
    tmp = mktemp_dir()
    local src, tree = tmp .. "/src", tmp .. "/tree"
    assert.is_true(F.run("mkdir -p " .. sh(src)))

    -- the rockspec: postback-scm-1.rockspec at the top, or under rockspecs/
    local rockspec = "postback-scm-1.rockspec"
    assert.is_true(exists(root .. "/" .. rockspec) or exists(root .. "/rockspecs/" .. rockspec),
      "no " .. rockspec .. " in " .. root)

    local copy = { "lua_postback.c", "binding", "core", "lua", "mock" }
    for _, opt in ipairs({ "bin", "rockspecs" }) do
      if exists(root .. "/" .. opt) then copy[#copy + 1] = opt end
    end
    local cmd = {}
    for i, p in ipairs(copy) do cmd[i] = sh(root .. "/" .. p) end
    assert.is_true(F.run("cp -r " .. table.concat(cmd, " ") .. " " .. sh(src .. "/")))
    assert.is_true(F.run("cd " .. sh(root) .. " && cp *.rockspec " .. sh(src .. "/")
      .. " 2>/dev/null || true"))
    -- stale objects from a build in the source tree must not be reused
    F.run("find " .. sh(src) .. " -name '*.o' -exec rm -f {} + ")
    local spec_path = exists(src .. "/" .. rockspec) and rockspec or ("rockspecs/" .. rockspec)

    local log = tmp .. "/luarocks.log"
    local ok = F.run("cd " .. sh(src) .. " && " .. CLEAN_ENV .. " luarocks --lua-version " .. VER .. " --tree "
      .. sh(tree) .. " make --deps-mode=none " .. sh(spec_path) .. " >" .. sh(log) .. " 2>&1")
    assert.is_true(ok, "luarocks make failed:\n" .. (F.readfile(log) or "(no log)"))

    assert.is_true(exists(tree .. "/lib/lua/" .. VER .. "/postback/core.so"), F.readfile(log))
    -- the objects landed in the copy
    assert.is_true(exists(src .. "/lua_postback.o"), "expected the build to run in the copy")

    local lpath = tree .. "/share/lua/" .. VER .. "/?.lua;" .. tree .. "/share/lua/" .. VER .. "/?/init.lua;;"
    local cpath = tree .. "/lib/lua/" .. VER .. "/?.so;;"
    local script = table.concat({
      'local p = require "postback"',
      -- Lua 5.1 has no package.searchpath
      'local function find(name, path) for pat in path:gmatch("[^;]+") do'
        .. ' local f = pat:gsub("%?", (name:gsub("%.", "/"))) local h = io.open(f)'
        .. ' if h then h:close() return f end end end',
      'local core = find("postback.core", package.cpath)',
      'local mod = find("postback", package.path)',
      'print(mod)',
      'print(core)',
      'print(p._VERSION)',
      'print(p.render("https://t.example/p?c={click_id}&o={offer_id}&x={foo}",'
        .. ' {click_id = "a b&c", offer_id = 42}))',
      'local t = p.template("%7Bclick_id%7D/{payout}")',
      'print(t:render({click_id = 1.5, payout = true}))',
      'print(#p.MACROS, p.validate({offer_id = 1, affiliate_id = 1, type = 2,'
        .. ' code = "https://t.example/{click_id}"}))',
    }, "\n")
    local out_file = tmp .. "/out.txt"
    ok = F.run("cd " .. sh(tmp) .. " && " .. CLEAN_ENV .. " LUA_PATH=" .. sh(lpath)
      .. " LUA_CPATH=" .. sh(cpath) .. " " .. LUA .. " -e " .. sh(script) .. " >" .. sh(out_file)
      .. " 2>&1")
    local out = F.readfile(out_file) or ""
    assert.is_true(ok, "the installed module failed:\n" .. out)
    local lines = {}
    for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
    assert.are.equal(tree .. "/share/lua/" .. VER .. "/postback/init.lua", lines[1])
    assert.are.equal(tree .. "/lib/lua/" .. VER .. "/postback/core.so", lines[2])
    assert.truthy((lines[3] or ""):match("^postback %d+%.%d+%.%d+$"), lines[3])
    assert.are.equal("https://t.example/p?c=a%20b%26c&o=42&x={foo}", lines[4])
    assert.are.equal("1.5/true", lines[5])
    assert.are.equal("28\ttrue", lines[6])
    assert.are.equal(6, #lines, out)
  end)

  -- The versioned rockspec fetches its source from the repository's tag.
  -- Offline, git's url.<base>.insteadOf points that URL at a local
  -- repository holding this tree under the tag: the rockspec is used as
  -- it is committed.
  it("packs postback-0.2.0-1.rockspec into a source rock that builds and installs the command", function()
    local root = F.root()
    if not F.run("command -v git >/dev/null 2>&1 && git -C " .. sh(root) .. " rev-parse >/dev/null 2>&1") then
      return pending("needs git and a git checkout")
    end
    local rockspec = "postback-0.2.0-1.rockspec"
    local env = {}
    local chunk
    if setfenv then
      chunk = assert(loadfile(root .. "/" .. rockspec))
      setfenv(chunk, env)
    else
      chunk = assert(loadfile(root .. "/" .. rockspec, "t", env))
    end
    chunk()
    local url = env.source.url:gsub("^git%+", "")
    tmp = mktemp_dir()
    local repo, tree, log = tmp .. "/repo", tmp .. "/tree", tmp .. "/luarocks.log"
    local git = "git -c user.name=spec -c user.email=spec@localhost -c init.defaultBranch=main"
    -- this tree as it is (uncommitted changes included) in a repository tagged as the rockspec says
    assert.is_true(F.run("mkdir -p " .. sh(repo) .. " && cd " .. sh(root)
      .. " && git ls-files -co --exclude-standard | tar -cf - -T - | tar -C " .. sh(repo) .. " -xf -"))
    assert.is_true(F.run("cd " .. sh(repo) .. " && " .. git .. " init -q && " .. git .. " add -A && "
      .. git .. " commit -qm tree && " .. git .. " tag " .. sh(env.source.tag)))
    local f = assert(io.open(tmp .. "/gitconfig", "w"))
    f:write(('[url "file://%s"]\n\tinsteadOf = %s\n[advice]\n\tdetachedHead = false\n'):format(repo, url))
    f:close()
    local git_env = " GIT_CONFIG_GLOBAL=" .. sh(tmp .. "/gitconfig") .. " GIT_CONFIG_NOSYSTEM=1"

    local ok = F.run("cd " .. sh(tmp) .. " && " .. CLEAN_ENV .. git_env .. " luarocks --lua-version " .. VER
      .. " pack " .. sh(root .. "/" .. rockspec) .. " >" .. sh(log) .. " 2>&1")
    assert.is_true(ok, "luarocks pack failed:\n" .. (F.readfile(log) or "(no log)"))
    local rock = tmp .. "/postback-0.2.0-1.src.rock"
    assert.is_true(exists(rock), F.readfile(log))
    local p = assert(io.popen("unzip -Z1 " .. sh(rock)))
    local listing = p:read("*a")
    p:close()
    for _, file in ipairs { rockspec, "postback/bin/postback", "postback/lua_postback.c", "postback/core/engine.c",
                            "postback/lua/postback/init.lua", "postback/mock/offerslook.lua" } do
      assert.truthy(("\n" .. listing):find("\n" .. file .. "\n", 1, true),
        file .. " is not in the source rock:\n" .. listing)
    end

    -- the source rock builds without the network, and its command runs
    ok = F.run("cd " .. sh(tmp) .. " && " .. CLEAN_ENV .. " luarocks --lua-version " .. VER .. " --tree " .. sh(tree)
      .. " build --deps-mode=none " .. sh(rock) .. " >" .. sh(log) .. " 2>&1")
    assert.is_true(ok, "luarocks build failed:\n" .. (F.readfile(log) or "(no log)"))
    local out_file = tmp .. "/out.txt"
    ok = F.run("cd " .. sh(tmp) .. " && eval \"$(" .. CLEAN_ENV .. " luarocks --lua-version " .. VER .. " --tree "
      .. sh(tree) .. " path)\" && " .. sh(tree .. "/bin/postback") .. " --version >" .. sh(out_file) .. " 2>&1"
      .. " && " .. sh(tree .. "/bin/postback") .. " render 'https://t.example/?c={click_id}' click_id='a b' >>"
      .. sh(out_file) .. " 2>&1")
    local out = F.readfile(out_file) or ""
    assert.is_true(ok, "the installed command failed:\n" .. out)
    assert.equal("postback 0.2.0\nhttps://t.example/?c=a%20b\n", out)
  end)
end)
