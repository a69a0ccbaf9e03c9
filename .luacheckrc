-- luacheck configuration (the lint suite of `make test`)
std = "max"
max_line_length = false
unused_args = false -- methods keep uniform signatures
globals = { "ngx", "jit" }
files["spec/**/*.lua"] = { std = "max+busted" }
files["examples/game_server/game.lua"] = { globals = { "on_tick", "poll", "status", "on_finish", "RECEIVER" } }
