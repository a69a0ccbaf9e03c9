/* binding/support.c - version compatibility and stack helpers shared by
 * every binding file. */

/* Compatibility, under our own prefix (LuaJIT exports some 5.2 names). */

#if LUA_VERSION_NUM < 502
static void pb_setfuncs(lua_State *L, const luaL_Reg *l)
{
    for (; l->name; l++) {
        lua_pushcfunction(L, l->func);
        lua_setfield(L, -2, l->name);
    }
}
#define pb_rawlen(L, i) lua_objlen(L, i)
static void pb_setmetatable(lua_State *L, const char *name)
{
    luaL_getmetatable(L, name);
    lua_setmetatable(L, -2);
}
static void *pb_testudata(lua_State *L, int idx, const char *name)
{
    void *p = lua_touserdata(L, idx);
    if (p && lua_getmetatable(L, idx)) {
        luaL_getmetatable(L, name);
        if (!lua_rawequal(L, -1, -2)) p = NULL;
        lua_pop(L, 2);
        return p;
    }
    return NULL;
}
#else
#define pb_setfuncs(L, l) luaL_setfuncs(L, l, 0)
#define pb_rawlen(L, i) lua_rawlen(L, i)
#define pb_setmetatable(L, name) luaL_setmetatable(L, name)
#define pb_testudata(L, i, name) luaL_testudata(L, i, name)
#endif

#if LUA_VERSION_NUM >= 504
#define pb_newuserdata(L, n, nuv) lua_newuserdatauv(L, n, nuv)
#define pb_setuservalue(L, i) lua_setiuservalue(L, i, 1)
#define pb_getuservalue(L, i) lua_getiuservalue(L, i, 1)
#elif LUA_VERSION_NUM >= 502
#define pb_newuserdata(L, n, nuv) lua_newuserdata(L, n)
#define pb_setuservalue(L, i) lua_setuservalue(L, i)
#define pb_getuservalue(L, i) lua_getuservalue(L, i)
#else
#define pb_newuserdata(L, n, nuv) lua_newuserdata(L, n)
#define pb_setuservalue(L, i) lua_setfenv(L, i)
#define pb_getuservalue(L, i) lua_getfenv(L, i)
#endif

/* Raises the usual "bad argument" error unless argument i has type t. */
static void pb_checktype(lua_State *L, int i, int t)
{
    if (lua_type(L, i) != t) {
        const char *msg = lua_pushfstring(L, "%s expected, got %s", lua_typename(L, t),
                                          luaL_typename(L, i));
        luaL_argerror(L, i, msg);
    }
}

static const char *pb_checkstring(lua_State *L, int i, size_t *len)
{
    pb_checktype(L, i, LUA_TSTRING);
    return lua_tolstring(L, i, len);
}

/* Argument i must be a table or absent/nil. */
static int pb_opttable(lua_State *L, int i)
{
    if (lua_isnoneornil(L, i)) return 0;
    pb_checktype(L, i, LUA_TTABLE);
    return 1;
}

/* An option string field of the table at i, one of `names`, as its index. */
static int pb_optenum(lua_State *L, int i, int argn, const char *field, const char *def,
                      const char *const names[])
{
    int k;
    const char *s = def;
    if (i) {
        lua_getfield(L, i, field);
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_argerror(L, argn, lua_pushfstring(L, "option '%s' must be a string", field));
            s = lua_tostring(L, -1);
        }
        lua_pop(L, 1);
    }
    for (k = 0; names[k]; k++)
        if (strcmp(names[k], s) == 0) return k;
    return luaL_argerror(L, argn, lua_pushfstring(L, "invalid %s option '%s'", field, s));
}

/* Pushes a new error table {kind=, code=, field=, message=} with the
 * shared error metatable. */
/* Sets code, field (when given) and message in the table on top. */
static void set_problem(lua_State *L, const char *code, const char *field, const char *message)
{
    if (code) {
        lua_pushstring(L, code);
        lua_setfield(L, -2, "code");
    }
    if (field) {
        lua_pushstring(L, field);
        lua_setfield(L, -2, "field");
    }
    lua_pushstring(L, message);
    lua_setfield(L, -2, "message");
}

static void pb_pusherror(lua_State *L, const char *kind, const char *code, const char *field,
                         const char *message)
{
    lua_createtable(L, 0, 5);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "kind");
    set_problem(L, code, field, message);
    if (strcmp(kind, "validation") == 0) {
        /* one shape for every validation error: its problems in `errors` */
        lua_createtable(L, 1, 0);
        lua_createtable(L, 0, 3);
        set_problem(L, code, field, message);
        lua_rawseti(L, -2, 1);
        lua_setfield(L, -2, "errors");
    }
    pb_setmetatable(L, PB_ERROR_MT);
}

static int pb_fail_nomem(lua_State *L)
{
    return luaL_error(L, "not enough memory");
}

/* ---- values ------------------------------------------------------------ */

/* Reads the Lua value at idx into v (strings stay owned by the stack). */
static void pb_tovalue(lua_State *L, int idx, pb_value *v)
{
    memset(v, 0, sizeof *v);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        v->kind = PB_V_NONE;
        break;
    case LUA_TSTRING:
        v->kind = PB_V_STRING;
        v->s = lua_tolstring(L, idx, &v->len);
        break;
    case LUA_TNUMBER:
#if LUA_VERSION_NUM >= 503
        if (lua_isinteger(L, idx)) {
            v->kind = PB_V_INT;
            v->i = (long long)lua_tointeger(L, idx);
            break;
        }
        v->kind = PB_V_FLOAT;
        v->d = (double)lua_tonumber(L, idx);
#else
        v->d = (double)lua_tonumber(L, idx);
        if (v->d == floor(v->d) && fabs(v->d) < 9007199254740992.0) {
            v->kind = PB_V_INT;
            v->i = (long long)v->d;
        } else {
            v->kind = PB_V_FLOAT;
        }
#endif
        break;
    case LUA_TBOOLEAN:
        v->kind = PB_V_BOOL;
        v->i = lua_toboolean(L, idx);
        break;
    default:
        v->kind = PB_V_BAD;
        v->s = luaL_typename(L, idx);
        break;
    }
}

/* Creates the metatable of a userdata type (once per state): metamethods,
 * methods as __index, and __name for argument errors. */
static void register_class(lua_State *L, const char *name, const luaL_Reg *meta,
                           const luaL_Reg *methods)
{
    if (luaL_newmetatable(L, name)) {
        pb_setfuncs(L, meta);
        lua_newtable(L);
        pb_setfuncs(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushstring(L, name);
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
}

/* Reusable output buffers, for renders, fires and json_encode. A template,
 * an engine and json_encode each have one of their own; a state has one
 * more, kept in the registry, for whoever finds theirs in use or has none.
 * Whoever finds the state's in use (a render re-entered from a metamethod
 * of a values table, or one after a render that raised and never released
 * it) puts a fresh one in its place: the one in use stays alive on the
 * stack of the call that took it, and the collector frees whichever is
 * dropped. */
#define PB_SCRATCH_KEY "postback.scratch"
#define PB_SCRATCH_MT "postback.scratch_buffer"

typedef struct pb_scratch {
    pb_buf b;
    int busy;
} pb_scratch;

static int l_scratch_gc(lua_State *L)
{
    pb_scratch *sc = (pb_scratch *)lua_touserdata(L, 1);
    if (sc) pb_buf_free(&sc->b);
    return 0;
}

/* Pushes a userdata holding a free buffer (freed by the collector). */
static pb_scratch *scratch_new(lua_State *L)
{
    pb_scratch *sc = (pb_scratch *)pb_newuserdata(L, sizeof *sc, 0);
    pb_buf_init(&sc->b, NULL);
    sc->busy = 0;
    if (luaL_newmetatable(L, PB_SCRATCH_MT)) {
        lua_pushcfunction(L, l_scratch_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return sc;
}

/* A reset buffer to write into: own (the caller's, NULL for none) when it is
 * free, else the state's, which is pushed (it stays on the stack until the
 * caller returns): take stack positions relative to the top only after. */
static pb_scratch *scratch_take(lua_State *L, pb_scratch *own)
{
    pb_scratch *sc = own;
    if (!sc || sc->busy) {
        lua_getfield(L, LUA_REGISTRYINDEX, PB_SCRATCH_KEY);
        sc = (pb_scratch *)lua_touserdata(L, -1);
        if (!sc || sc->busy) {
            lua_pop(L, 1);
            sc = scratch_new(L);
            lua_pushvalue(L, -1);
            lua_setfield(L, LUA_REGISTRYINDEX, PB_SCRATCH_KEY);
        }
    }
    sc->busy = 1;
    pb_buf_reset(&sc->b);
    return sc;
}

static void scratch_release(pb_scratch *sc)
{
    sc->busy = 0;
    if (sc->b.cap > 65536) pb_buf_free(&sc->b); /* don't keep a huge buffer */
}
