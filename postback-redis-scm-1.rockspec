-- LuaRocks build of postback.redis: the queue's Redis connection on hiredis.
-- The base rock (postback-scm-1.rockspec) has the queue and its workers in
-- Lua and needs nothing of this; install this one where postback.queue and
-- postback.worker are used. Where hiredis lives somewhere unusual, pass
-- HIREDIS_DIR=... (or HIREDIS_INCDIR=... and HIREDIS_LIBDIR=...) to luarocks.
rockspec_format = "3.0"
package = "postback-redis"
version = "scm-1"
source = {
  url = "git+file://./",
}
description = {
  summary = "The Redis connection of postback's shared delivery queue (hiredis)",
  detailed = [[
    postback.redis: a non-blocking Redis connection on hiredis, for
    postback.queue and postback.worker (a durable queue of postbacks on Redis
    Streams, delivered by workers on any number of machines).
  ]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.1",
  "postback",
}
external_dependencies = {
  HIREDIS = { header = "hiredis/hiredis.h", library = "hiredis" },
}
build = {
  type = "builtin",
  modules = {
    ["postback.redis"] = {
      sources = { "redis/lua_redis.c", "redis/sock.c" },
      defines = { "_POSIX_C_SOURCE=200809L" },
      incdirs = { "$(HIREDIS_INCDIR)", "." },
      libdirs = { "$(HIREDIS_LIBDIR)" },
      libraries = { "hiredis" },
    },
  },
}
