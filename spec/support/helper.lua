-- Loaded by busted before the specs (see .busted): puts the build of the
-- running interpreter (build/5.4, build/luajit, ...) or $POSTBACK_BUILD
-- first on the module paths, so `make && busted` tests what was built.
local abi = jit and "luajit" or _VERSION:match("%d+%.%d+")
local dir = os.getenv("POSTBACK_BUILD") or ("build/" .. abi)
package.path = dir .. "/?.lua;" .. dir .. "/?/init.lua;spec/support/?.lua;" .. package.path
package.cpath = dir .. "/?.so;" .. package.cpath
