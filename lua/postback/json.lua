--- JSON at the edge: our own exact encoder, lua-cjson to decode, integer
-- normalisation.
--
-- Encoding is core.json_encode (binding/json.c): lua-cjson 2.1 writes numbers
-- with 14 significant digits (123456789012345 -> 1.2345678901234e+14), while
-- ids must go out exactly. Integers (and integral floats up to 2^53) are
-- written in plain digits, other floats so that they read back the same.
-- Decoding is a private lua-cjson instance (cjson.safe.new), so our settings
-- never change the application's cjson. Debian's lua-cjson under Lua 5.3/5.4
-- decodes every number as a float (8 -> 8.0), exact up to 2^53; `integers`
-- turns the integral ones of the fields we know to be integers back into Lua
-- integers.
local cjson_safe = require "cjson.safe"
local core = require "postback.core"

local M = {}

local codec = cjson_safe.new()
codec.decode_max_depth(64)

M.null = codec.null

local tointeger = math.tointeger or function(x)
  if type(x) == "number" and x == math.floor(x) and x > -2 ^ 63 and x < 2 ^ 63 then return x end
  return nil
end
M.tointeger = tointeger

--- Encodes a Lua value; returns string or nil, message (a function, a
-- userdata, NaN or an infinity, an excessively sparse array or tables nested
-- deeper than 64, with the path of the value: "cannot encode a function at
-- values.cb"). Arrays and objects as lua-cjson decides them; {} for an empty
-- table; M.null is null.
M.encode = core.json_encode

--- Decodes a JSON text; returns value or nil, message.
function M.decode(s)
  return codec.decode(s)
end

--- Converts the integral numbers of t[name] for each name in fields.
function M.integers(t, fields)
  if type(t) ~= "table" then return t end
  for _, k in ipairs(fields) do
    local v = t[k]
    if type(v) == "number" then t[k] = tointeger(v) or v end
  end
  return t
end

M.POSTBACK_INTS = {
  "id", "offer_id", "affiliate_id", "event_id", "type", "create_time", "update_time",
}

--- Normalises a postback object in place (and returns it).
function M.postback(pb)
  return M.integers(pb, M.POSTBACK_INTS)
end

return M
