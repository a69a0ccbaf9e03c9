-- LuaRocks build of postback: the C core + binding as postback.core, the Lua
-- layer as postback.*, and the bin/postback command line.
rockspec_format = "3.0"
package = "postback"
version = "scm-1"
source = {
  url = "git+file://./",
}
description = {
  summary = "Manage Offerslook affiliate postbacks and fire them, from Lua",
  detailed = [[
    A Lua module with a C core: validates postback records (including the
    offer's conversion_protocol rule), renders postback macros, talks to the
    Offerslook Network API with retries, and fires postbacks concurrently on
    libcurl's multi interface.
  ]],
  license = "MIT",
}
-- lua-cjson for JSON; LuaSocket for the sandbox that `postback mock` runs
-- (mock/offerslook.lua, installed as postback.mock).
dependencies = {
  "lua >= 5.1",
  "lua-cjson",
  "luasocket",
}
-- libcurl's header lives in a multiarch directory on Debian and Ubuntu
-- (include/x86_64-linux-gnu/curl/curl.h), where a `header` check fails. So the
-- library is what LuaRocks looks for (it knows the multiarch library
-- directories); the compiler's own search path then finds the header. Where
-- curl lives elsewhere, pass CURL_DIR=... or CURL_INCDIR=... to luarocks.
-- libidn2 (Debian: libidn2-dev) converts internationalised host names, so
-- that they fire the same whatever the process locale.
external_dependencies = {
  CURL = { library = "curl" },
  IDN2 = { header = "idn2.h", library = "idn2" },
}
build = {
  type = "builtin",
  modules = {
    ["postback.core"] = {
      sources = {
        "lua_postback.c",
        "core/buf.c", "core/clock.c", "core/encode.c", "core/engine.c", "core/json.c",
        "core/macros.c", "core/netpolicy.c", "core/spool.c", "core/suggest.c", "core/template.c",
        "core/url.c",
        "core/validate.c",
      },
      defines = { "_POSIX_C_SOURCE=200809L" },
      incdirs = { "$(CURL_INCDIR)", "$(IDN2_INCDIR)", "." },
      libdirs = { "$(CURL_LIBDIR)", "$(IDN2_LIBDIR)" },
      libraries = { "curl", "idn2" },
    },
    ["postback"] = "lua/postback/init.lua",
    ["postback.client"] = "lua/postback/client.lua",
    ["postback.dispatcher"] = "lua/postback/dispatcher.lua",
    ["postback.ngx_dispatcher"] = "lua/postback/ngx_dispatcher.lua",
    ["postback.errors"] = "lua/postback/errors.lua",
    ["postback.fire"] = "lua/postback/fire.lua",
    ["postback.json"] = "lua/postback/json.lua",
    ["postback.migrate"] = "lua/postback/migrate.lua",
    ["postback.mock"] = "mock/offerslook.lua",
    ["postback.executor"] = "lua/postback/executor.lua",
    ["postback.util"] = "lua/postback/util.lua",
    ["postback.queue"] = "lua/postback/queue.lua",
    ["postback.queue_cli"] = "lua/postback/queue_cli.lua",
    ["postback.queue_conn"] = "lua/postback/queue_conn.lua",
    ["postback.retry"] = "lua/postback/retry.lua",
    ["postback.spool"] = "lua/postback/spool.lua",
    ["postback.transport.curl"] = "lua/postback/transport/curl.lua",
    ["postback.transport.ngx"] = "lua/postback/transport/ngx.lua",
    ["postback.worker"] = "lua/postback/worker.lua",
  },
  install = {
    bin = { postback = "bin/postback" },
  },
}
