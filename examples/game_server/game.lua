-- The game's Lua side: every few frames a player converts, and the game
-- fires the affiliate's postback through a dispatcher that never blocks.
local postback = require "postback"

local receiver = RECEIVER ~= "" and RECEIVER or "http://127.0.0.1:8080"
local template = assert(postback.template(
  receiver .. "/postback?click_id={click_id}&payout={payout}&currency={currency}&aff_sub1={aff_sub1}"))

local fired, delivered, failed = 0, 0, 0
local total = tonumber(os.getenv("GAME_CONVERSIONS") or "300")

local dispatcher = postback.dispatcher {
  -- a receiver on loopback or a private network (a test receiver, the
  -- mock) is refused unless POSTBACK_ALLOW_PRIVATE=1
  allow_private = os.getenv("POSTBACK_ALLOW_PRIVATE") == "1",
  concurrency = 16,
  retries = 3,
  backoff_base = 0.05,
  on_result = function(r)
    if r.ok then delivered = delivered + 1 else failed = failed + 1 end
  end,
}

-- Called by the C loop every frame.
function on_tick(frame)
  -- one conversion a frame until `total` have been fired
  if fired < total then
    fired = fired + 1
    assert(dispatcher:fire(template, {
      click_id = ("c%06d"):format(fired), payout = 1.25, currency = "USD",
      aff_sub1 = "level " .. frame,
    }))
  end
end

function poll()
  dispatcher:poll(0)
end

function status()
  return ("fired=%d delivered=%d failed=%d pending=%d"):format(fired, delivered, failed, dispatcher:pending())
end

function on_finish()
  dispatcher:wait(10)
  print(status())
  dispatcher:close()
  return delivered == total and failed == 0
end
