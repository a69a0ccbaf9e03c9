-- Move every postback from one tracking domain to another.
--
--   OFFERSLOOK_NETWORK=... OFFERSLOOK_API_KEY=... [OFFERSLOOK_BASE_URL=...] \
--   lua5.4 examples/move_domain.lua OLD_HOST NEW_HOST [--apply]
--
-- Without --apply it prints what would change and writes nothing. With it,
-- the changes go through a journal (move_domain.journal): stop it at any
-- moment and run it again, nothing is applied twice.
-- Run from a checkout, the build beside examples/ (build/<abi>, from `make`)
-- comes first; an installed postback is found as usual.
do
  local root = ((arg and arg[0] or ""):match("^(.*)/[^/]*$") or ".") .. "/.."
  local abi = jit and "luajit" or _VERSION:match("%d+%.%d+")
  package.path = ("%s/build/%s/?.lua;%s/build/%s/?/init.lua;"):format(root, abi, root, abi) .. package.path
  package.cpath = ("%s/build/%s/?.so;"):format(root, abi) .. package.cpath
end
local postback = require "postback"

local old, new, apply = arg[1], arg[2], arg[3] == "--apply"
if not old or not new then
  io.stderr:write("usage: move_domain.lua OLD_HOST NEW_HOST [--apply]\n")
  os.exit(2)
end

local c = assert(postback.client {
  network = os.getenv("OFFERSLOOK_NETWORK"),
  api_key = os.getenv("OFFERSLOOK_API_KEY"),
  base_url = os.getenv("OFFERSLOOK_BASE_URL"),
})

local report = assert(postback.migrate {
  client = c,
  -- only the postbacks that mention the old host are read
  query = { filters = { code = { CONTAINS = old } }, limit = 1000 },
  transform = postback.transforms.replace_host(old, new),
  dry_run = not apply,
  journal = apply and "move_domain.journal" or nil,
  concurrency = 16,
})
print(("%d postbacks read, %d %s, %d unchanged, %d failed"):format(report.scanned, report.changed,
  apply and "moved" or "would move", report.skipped, report.failed))
for _, e in ipairs(report.errors) do print(("  postback %s: %s"):format(tostring(e.id), tostring(e.error))) end
if apply then os.remove("move_domain.journal") end
os.exit(report.failed == 0 and 0 or 1)
