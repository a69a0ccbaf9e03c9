-- A tour of postback against an Offerslook network (by default the local
-- mock that `make demo` starts): create postbacks of every type across
-- offers of every conversion_protocol, see the one the rule rejects, list
-- with filters and paging, update, approve, reject, delete, then render a
-- postback for a conversion and fire it at the receiver.
--
--   OFFERSLOOK_NETWORK=demo OFFERSLOOK_API_KEY=demo-key \
--   OFFERSLOOK_BASE_URL=http://127.0.0.1:PORT POSTBACK_RECEIVER=http://127.0.0.1:PORT \
--   POSTBACK_ALLOW_PRIVATE=1 lua5.4 examples/quickstart.lua
--
-- Fires to loopback and private addresses are refused unless allowed:
-- POSTBACK_ALLOW_PRIVATE=1 (what `make demo` sets, for the mock's receiver
-- on 127.0.0.1) passes allow_private = true to fire.
-- Run from a checkout, the build beside examples/ (build/<abi>, from `make`)
-- comes first; an installed postback is found as usual.
do
  local root = ((arg and arg[0] or ""):match("^(.*)/[^/]*$") or ".") .. "/.."
  local abi = jit and "luajit" or _VERSION:match("%d+%.%d+")
  package.path = ("%s/build/%s/?.lua;%s/build/%s/?/init.lua;"):format(root, abi, root, abi) .. package.path
  package.cpath = ("%s/build/%s/?.so;"):format(root, abi) .. package.cpath
end
local postback = require "postback"

local network = os.getenv("OFFERSLOOK_NETWORK") or "demo"
local receiver = os.getenv("POSTBACK_RECEIVER") or os.getenv("OFFERSLOOK_BASE_URL")
local allow_private = os.getenv("POSTBACK_ALLOW_PRIVATE") == "1"
local c = assert(postback.client {
  network = network,
  api_key = assert(os.getenv("OFFERSLOOK_API_KEY"), "set OFFERSLOOK_API_KEY"),
  base_url = os.getenv("OFFERSLOOK_BASE_URL"),
})
print(("%s, client: %s"):format(postback._VERSION, tostring(c)))

local TYPES = { [1] = "Image Pixel", [2] = "Postback URL", [3] = "HTML Pixel" }
local AFFILIATE = 7
local summary = { created = 0, rejected = 0 }

local function code_for(ty, tag)
  local url = receiver .. "/postback?click_id={click_id}&payout={payout}&tag=" .. tag
  if ty == 3 then return ('<img src="%s" width="1" height="1">'):format(url) end
  return url
end

-- 1. Every type on offers of every protocol (offers 1, 2, 3 have
--    conversion_protocol 1, 2, 3 on the mock), plus a global postback.
print("\n1. create: every type on offers with conversion_protocol 1, 2 and 3")
local created = {}
for _, offer_id in ipairs { 1, 2, 3, 0 } do
  local offer = offer_id > 0 and assert(c:offer(offer_id)) or nil
  local cp = offer and offer.conversion_protocol
  for ty = 1, 3 do
    local pb, err = c:create { offer_id = offer_id, affiliate_id = AFFILIATE, type = ty,
                               code = code_for(ty, ("o%d-t%d"):format(offer_id, ty)) }
    local where = offer_id == 0 and "global postback" or ("offer %d (protocol %d)"):format(offer_id, cp)
    if pb then
      summary.created = summary.created + 1
      created[#created + 1] = pb
      print(("   %-26s type %d %-12s -> id %d, %s"):format(where, ty, TYPES[ty], pb.id, pb.status))
    else
      summary.rejected = summary.rejected + 1
      print(("   %-26s type %d %-12s -> refused before sending: %s"):format(where, ty, TYPES[ty],
        err.errors and err.errors[1].message or tostring(err)))
    end
  end
end

-- 2. Bad records never reach the API.
print("\n2. validation: a record with several problems")
local _, err = c:create { offer_id = 1, affiliate_id = 0, type = 2, code = "track.example.com/{clickid}", affilate_id = 7 }
for _, p in ipairs(err.errors) do print(("   %-13s %-14s %s"):format(p.field, p.code, p.message)) end

-- 3. Lists: filters, sort, fields and paging.
print("\n3. list: affiliate 7's postbacks, two a page, newest first")
local page = 1
repeat
  local data = assert(c:list { filters = { affiliate_id = AFFILIATE }, sort = "-id", limit = 2,
                               page = page, fields = { "id", "offer_id", "type" } })
  local ids = {}
  for _, row in ipairs(data.rowset) do ids[#ids + 1] = ("%d (offer %d, type %d)"):format(row.id, row.offer_id, row.type) end
  print(("   page %d/%d: %s"):format(data.offset, data.totalPages, table.concat(ids, ", ")))
  page = page + 1
until page > data.totalPages
local n = 0
for _ in c:each { filters = { type = { GREATER_THAN_OR_EQUAL_TO = 2 }, code = { CONTAINS = "tag=" } } } do n = n + 1 end
print(("   each: %d postbacks of type 2 or 3"):format(n))

-- 4. Update, approve, reject, delete.
print("\n4. update, set_status, delete")
local first, second, last = created[1], created[2], created[#created]
local updated = assert(c:update(first.id, { code = code_for(first.type, "updated") }))
print(("   update %d: code now ends with %q"):format(updated.id, updated.code:match("tag=.*")))
print(("   set_status %d approved -> %s"):format(first.id, assert(c:set_status(first.id, "approved")).status))
print(("   set_status %d rejected -> %s"):format(second.id, assert(c:set_status(second.id, "rejected")).status))
assert(c:delete(last.id))
local _, gone = c:get(last.id)
print(("   delete %d, then get: %s"):format(last.id, tostring(gone)))

-- 5. Render a postback for a conversion and fire it.
print("\n5. render and fire a postback for a conversion")
local conversion = { click_id = "c-1f3a9", payout = 2.5, aff_sub1 = "spring sale" }
local url = assert(postback.render(second.code, conversion))
print("   rendered: " .. url)
-- the mock's receiver is on loopback: a destination fire refuses unless allowed
local result = assert(postback.fire(second.code, conversion, { allow_private = allow_private }))
print(("   fired: HTTP %d after %d attempt(s) in %.1f ms"):format(result.status, result.attempts, result.time * 1000))

print(("\nsummary: %d created, %d refused by the conversion_protocol rule before sending, 1 fired"):format(
  summary.created, summary.rejected))
c:close()
