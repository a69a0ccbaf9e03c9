/* lua_postback.c - the postback.core Lua module: stack work only.
 *
 * Everything that computes lives in core/ (no Lua there); the binding moves
 * values between the Lua stack and core's C forms. As in luv, each type or
 * concern has its own file under binding/, all included here so the module
 * is one translation unit and one loadable library. Builds for Lua 5.1 (and
 * LuaJIT), 5.2, 5.3 and 5.4 from one source. There is no mutable global
 * state: all state hangs off userdata or the registry of a state. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/encode.h"
#include "core/engine.h"
#include "core/json.h"
#include "core/macros.h"
#include "core/netpolicy.h"
#include "core/spool.h"
#include "core/template.h"
#include "core/url.h"
#include "core/validate.h"

#define PB_TEMPLATE_MT "postback.template"
#define PB_ERROR_MT "postback.error"
#define PB_ENGINE_MT "postback.engine"
#define PB_CURL_SENTINEL "postback.curl"
#define PB_SPOOL_MT "postback.spool"
#define PB_SPOOL_FILE_MT "postback.spool_file"
#define PB_NETPOLICY_MT "postback.netpolicy"

#include "binding/support.c"  /* compatibility and stack helpers */
#include "binding/template.c" /* template(), render() */
#include "binding/url.c"      /* encode(), check_url(), url_to_ascii(), url_info() */
#include "binding/netpolicy.c" /* netpolicy() */
#include "binding/validate.c" /* validate(), allowed_types(), MACROS */
#include "binding/engine.c"   /* engine() */
#include "binding/spool.c"    /* spool(); spool_open(), spool_check() */
#include "binding/clock.c"    /* now(), time(), sleep() */
#include "binding/json.c"     /* json_encode() */

#if defined(_WIN32)
#define PB_EXPORT __declspec(dllexport)
#else
#define PB_EXPORT __attribute__((visibility("default")))
#endif

PB_EXPORT int luaopen_postback_core(lua_State *L);

PB_EXPORT int luaopen_postback_core(lua_State *L)
{
    if (luaL_newmetatable(L, PB_ERROR_MT)) {
        lua_pushstring(L, PB_ERROR_MT);
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    luaL_getmetatable(L, PB_ERROR_MT);
    lua_setfield(L, -2, "error_mt");
    open_template(L);
    open_url(L);
    open_netpolicy(L);
    open_validate(L);
    open_engine(L);
    open_spool(L);
    open_clock(L);
    open_json(L);
    return 1;
}
