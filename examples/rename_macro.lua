-- Rename a macro in every postback: e.g. the undocumented {aff_sub} that
-- some trackers use, to Offerslook's {aff_sub1}.
--
--   OFFERSLOOK_NETWORK=... OFFERSLOOK_API_KEY=... [OFFERSLOOK_BASE_URL=...] \
--   lua5.4 examples/rename_macro.lua aff_sub aff_sub1 [--apply]
-- Run from a checkout, the build beside examples/ (build/<abi>, from `make`)
-- comes first; an installed postback is found as usual.
do
  local root = ((arg and arg[0] or ""):match("^(.*)/[^/]*$") or ".") .. "/.."
  local abi = jit and "luajit" or _VERSION:match("%d+%.%d+")
  package.path = ("%s/build/%s/?.lua;%s/build/%s/?/init.lua;"):format(root, abi, root, abi) .. package.path
  package.cpath = ("%s/build/%s/?.so;"):format(root, abi) .. package.cpath
end
local postback = require "postback"

local from, to, apply = arg[1], arg[2], arg[3] == "--apply"
if not (from and to and from:match("^[%w_]+$") and to:match("^[%w_]+$")) then
  io.stderr:write("usage: rename_macro.lua OLD_MACRO NEW_MACRO [--apply]\n")
  os.exit(2)
end

local c = assert(postback.client {
  network = os.getenv("OFFERSLOOK_NETWORK"),
  api_key = os.getenv("OFFERSLOOK_API_KEY"),
  base_url = os.getenv("OFFERSLOOK_BASE_URL"),
})

local report = assert(postback.migrate {
  client = c,
  query = { filters = { code = { CONTAINS = from } }, limit = 1000 },
  transform = postback.transforms.rename_macro(from, to),
  dry_run = not apply,
  concurrency = 16,
})
print(("%d postbacks read, %d %s"):format(report.scanned, report.changed, apply and "renamed" or "would be renamed"))
os.exit(report.failed == 0 and 0 or 1)
