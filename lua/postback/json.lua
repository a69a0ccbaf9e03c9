--- JSON at the edge: a private lua-cjson instance and integer normalisation.
--
-- A private instance (cjson.safe.new) so our settings never change the
-- application's cjson. Debian's lua-cjson under Lua 5.3/5.4 decodes every
-- number as a float (8 -> 8.0); `integers` turns the integral ones of the
-- fields we know to be integers back into Lua integers.
local cjson_safe = require "cjson.safe"

local M = {}

local codec = cjson_safe.new()
codec.decode_max_depth(64)
codec.encode_max_depth(64)
codec.encode_invalid_numbers(false)
codec.encode_sparse_array(false)

M.null = codec.null

local tointeger = math.tointeger or function(x)
  if type(x) == "number" and x == math.floor(x) and x > -2 ^ 63 and x < 2 ^ 63 then return x end
  return nil
end
M.tointeger = tointeger

--- Encodes a Lua value; returns string or nil, message.
function M.encode(v)
  return codec.encode(v)
end

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
