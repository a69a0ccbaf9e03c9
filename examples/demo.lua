-- `make demo`: starts the local mock Offerslook on a free loopback port, runs
-- examples/quickstart.lua against it, and stops the mock. No network, no
-- account.
package.path = "spec/support/?.lua;" .. package.path
local mockproc = require "mockproc"

local lua = arg[-1] or "lua5.4"
local mock = mockproc.start { network = "demo", api_key = "demo-key" }
print("mock Offerslook on " .. mock.url)
-- the mock's receiver is on loopback, which fire refuses unless allowed
local cmd = ("OFFERSLOOK_NETWORK=demo OFFERSLOOK_API_KEY=demo-key OFFERSLOOK_BASE_URL=%s "
  .. "POSTBACK_RECEIVER=%s POSTBACK_ALLOW_PRIVATE=1 %s examples/quickstart.lua"):format(mock.url, mock.url, lua)
local ok = os.execute(cmd)
local received = mock:received()
mock:stop()
print(("the receiver got %d postback(s); mock stopped"):format(type(received) == "table" and #received or 0))
os.exit((ok == true or ok == 0) and 0 or 1)
