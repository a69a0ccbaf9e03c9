--- Shared helpers for the postback specs: the documented macro list, an
-- independent pure-Lua percent-encoder and reference renderer (written from
-- the rendering rules in DESIGN.md, not from the C code), loop sizes that
-- shrink under valgrind, and small compatibility shims so the specs run on
-- Lua 5.1, LuaJIT, 5.2, 5.3 and 5.4 alike.
local M = {}

--- True when the specs run under valgrind (heavy loops get smaller).
M.under_valgrind = os.getenv("POSTBACK_UNDER_VALGRIND") ~= nil
  and os.getenv("POSTBACK_UNDER_VALGRIND") ~= ""

--- n, or n / 10 (at least 1) under valgrind: reduced, never skipped.
function M.size(n)
  if M.under_valgrind then
    local m = math.floor(n / 10)
    if m < 1 then m = 1 end
    return m
  end
  return n
end

--- The 28 macros of the Offerslook documentation, in its order.
M.MACROS = {
  "click_id", "offer_id", "event_id", "country_id", "aff_id", "adv_id",
  "adv_sub1", "adv_sub2", "adv_sub3", "aff_sub1", "aff_sub2", "aff_sub3",
  "aff_sub4", "aff_sub5", "source_id", "agent", "click_time", "payout",
  "referer", "accept_lan", "ip", "unique_click", "currency", "ios_idfa",
  "android_id", "google_aid", "conversion_ip", "amount",
}
M.DOCUMENTED = {}
for _, name in ipairs(M.MACROS) do M.DOCUMENTED[name] = true end

--- Lua 5.3+ integer subtype, when the interpreter has one.
M.has_integers = math.type ~= nil

function M.is_integer(v)
  if math.type then return math.type(v) == "integer" end
  return false
end

M.unpack = table.unpack or unpack

--- The 256 byte values, in order.
local all = {}
for b = 0, 255 do all[#all + 1] = string.char(b) end
M.ALL_BYTES = table.concat(all)

--- RFC 3986 unreserved: A-Z a-z 0-9 - . _ ~ (decided by byte value).
function M.is_unreserved(b)
  return (b >= 65 and b <= 90) or (b >= 97 and b <= 122) or (b >= 48 and b <= 57)
    or b == 45 or b == 46 or b == 95 or b == 126
end

local HEX = "0123456789ABCDEF"
local enc_byte = {}
for b = 0, 255 do
  local c = string.char(b)
  if M.is_unreserved(b) then
    enc_byte[c] = c
  else
    local hi, lo = math.floor(b / 16) + 1, (b % 16) + 1
    enc_byte[c] = "%" .. HEX:sub(hi, hi) .. HEX:sub(lo, lo)
  end
end

--- Independent percent-encoder: every byte outside the unreserved set
-- becomes %XX with uppercase hex digits.
function M.ref_encode(s)
  return (s:gsub(".", enc_byte))
end

--- Formats a value as the rendering rules say (before encoding).
-- Returns the text, or nil, "bad_value".
function M.ref_format(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "boolean" then return v and "true" or "false" end
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return nil, "bad_value" end
    if math.type then
      if math.type(v) == "integer" then return string.format("%d", v) end
      -- integral floats up to 2^53 (what a JSON decoder gives for integers)
      -- in all their digits
      if v == math.floor(v) and math.abs(v) <= 2 ^ 53 then return string.format("%.0f", v) end
      return string.format("%.14g", v)
    end
    -- Lua 5.1 / LuaJIT have no integer subtype: integral numbers that are
    -- exact as integers are written in decimal.
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then
      return string.format("%d", v)
    end
    if math.abs(v) == 2 ^ 53 then return string.format("%.0f", v) end
    return string.format("%.14g", v)
  end
  return nil, "bad_value"
end

--- Splits code into segments following the rendering rules:
-- {kind="lit", text=} or {kind="macro", name=, text=} (text = as written).
function M.ref_parse(code)
  local segs = {}
  local i, n, lit = 1, #code, 1
  while i <= n do
    local p = code:find("[{%%]", i)
    if not p then break end
    local name, whole
    if code:sub(p, p) == "{" then
      name = code:match("^{([A-Za-z0-9_]+)}", p)
      if name then whole = "{" .. name .. "}" end
    else
      local a, nm, b = code:match("^(%%7[Bb])([A-Za-z0-9_]+)(%%7[Dd])", p)
      if a then
        name = nm
        whole = a .. nm .. b
      end
    end
    if name then
      if p > lit then segs[#segs + 1] = { kind = "lit", text = code:sub(lit, p - 1) } end
      segs[#segs + 1] = { kind = "macro", name = name, text = whole }
      i = p + #whole
      lit = i
    else
      i = p + 1
    end
  end
  if lit <= n then segs[#segs + 1] = { kind = "lit", text = code:sub(lit) } end
  return segs
end

--- Distinct macro names in order of first use.
function M.ref_macros(code)
  local seen, out = {}, {}
  for _, sg in ipairs(M.ref_parse(code)) do
    if sg.kind == "macro" and not seen[sg.name] then
      seen[sg.name] = true
      out[#out + 1] = sg.name
    end
  end
  return out
end

--- Reference renderer. Returns the string, or nil, code, macro where code is
-- "missing" or "bad_value" and macro names the first failing placeholder.
function M.ref_render(code, values, opts)
  opts = opts or {}
  local missing = opts.missing or "empty"
  local url = (opts.encode or "url") == "url"
  values = values or {}
  local out = {}
  for _, sg in ipairs(M.ref_parse(code)) do
    if sg.kind == "lit" then
      out[#out + 1] = sg.text
    else
      local v = values[sg.name]
      if v == nil then
        if not M.DOCUMENTED[sg.name] or missing == "keep" then
          out[#out + 1] = sg.text
        elseif missing == "error" then
          return nil, "missing", sg.name
        end
      else
        local s, err = M.ref_format(v)
        if not s then return nil, err, sg.name end
        out[#out + 1] = url and M.ref_encode(s) or s
      end
    end
  end
  return table.concat(out)
end

--- Shows a string with non-printable bytes escaped (for failure messages).
function M.show(s)
  if type(s) ~= "string" then return tostring(s) end
  return (s:gsub("[^%w%p ]", function(c) return string.format("\\%03d", c:byte()) end))
end

--- Runs a shell command; true when it exited with status 0.
function M.run(cmd)
  local a, _, c = os.execute(cmd)
  if type(a) == "number" then return a == 0 end -- Lua 5.1 / LuaJIT without 5.2 compat
  return a == true and (c == nil or c == 0)
end

--- Calls fn every 50 ms until it returns true or `seconds` (default 10)
-- pass; then returns what a last call gives.
function M.wait_for(fn, seconds)
  local socket = require "socket"
  local deadline = socket.gettime() + (seconds or 10)
  while socket.gettime() < deadline do
    if fn() then return true end
    socket.sleep(0.05)
  end
  return fn()
end

--- Reads a whole file (nil when it cannot be opened).
function M.readfile(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

--- Writes text to path (replacing it), raising on failure.
function M.writefile(path, text)
  local f = assert(io.open(path, "wb"))
  assert(f:write(text))
  assert(f:close())
end

--- The exit status of what os.execute returned (Lua 5.1 gives a wait status).
function M.exit_code(ok, _, code)
  if type(ok) == "number" then return ok >= 256 and ok / 256 or ok end
  return code
end

--- Quotes s for /bin/sh.
function M.sh(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- A new empty scratch directory (mode 0755), its path.
function M.tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -m 0755 " .. M.sh(d)), "cannot make a scratch directory")
  return d
end

--- The repository root (this file is spec/support/fixtures.lua), absolute.
function M.root()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local dir = src:match("^(.*)/spec/support/[^/]*$")
  if not dir or dir == "" then dir = "." end
  if dir:sub(1, 1) ~= "/" then
    local p = io.popen("cd " .. M.sh(dir) .. " && pwd")
    if p then
      local abs = p:read("*l")
      p:close()
      if abs and abs ~= "" then dir = abs end
    end
  end
  return dir
end

return M
