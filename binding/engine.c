/* binding/engine.c - postback.engine: the libcurl multi engine. */

typedef struct lengine {
    pb_engine *e;
    lua_Integer next_tag;
} lengine;

static lengine *check_engine(lua_State *L, int i)
{
    lengine *le = (lengine *)luaL_checkudata(L, i, PB_ENGINE_MT);
    if (!le->e) luaL_argerror(L, i, "engine is closed");
    return le;
}

static long opt_long_field(lua_State *L, int t, const char *k, long def)
{
    long v = def;
    lua_getfield(L, t, k);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "engine option '%s' must be a number", k);
        v = (long)lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

/* Seconds (number field) as milliseconds, rounding up so 0.0001 is not 0. */
static long opt_ms_field(lua_State *L, int t, const char *k)
{
    long ms = 0;
    lua_getfield(L, t, k);
    if (!lua_isnil(L, -1)) {
        double s;
        if (lua_type(L, -1) != LUA_TNUMBER) luaL_error(L, "request field '%s' must be a number", k);
        s = (double)lua_tonumber(L, -1);
        if (!(s >= 0) || s > 1e6) luaL_error(L, "request field '%s' out of range", k);
        ms = (long)ceil(s * 1000.0);
    }
    lua_pop(L, 1);
    return ms;
}

/* A string field (NULL when absent); strings with NUL bytes are refused. */
static const char *opt_str_field(lua_State *L, int t, const char *k, int *bad)
{
    const char *s = NULL;
    size_t len;
    lua_getfield(L, t, k);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "request field '%s' must be a string", k);
        s = lua_tolstring(L, -1, &len);
        if (strlen(s) != len) *bad = 1;
    }
    lua_pop(L, 1); /* still referenced by the request table */
    return s;
}

/* Headers of the request table at t: an array of "Name: value" lines or a
 * map {Name = value}. The lines are gathered in a table pushed on the stack
 * (it anchors them); *out points to a C array of them (a userdata on the
 * stack when more than `small` are needed). Returns the count, or -1 when a
 * header holds a NUL byte. */
static long collect_headers(lua_State *L, int t, const char **small, size_t nsmall,
                            const char ***out)
{
    int hi, anchor;
    size_t nh = 0, i;
    const char **hdrs = small;
    lua_getfield(L, t, "headers");
    hi = lua_gettop(L);
    lua_newtable(L);
    anchor = hi + 1;
    if (!lua_isnil(L, hi)) {
        if (lua_type(L, hi) != LUA_TTABLE) return luaL_error(L, "request headers must be a table");
        lua_pushnil(L);
        while (lua_next(L, hi)) {
            if (lua_type(L, -2) == LUA_TNUMBER && lua_type(L, -1) == LUA_TSTRING) {
                lua_pushvalue(L, -1);
            } else if (lua_type(L, -2) == LUA_TSTRING &&
                       (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)) {
                lua_pushvalue(L, -2);
                lua_pushstring(L, ": ");
                lua_pushvalue(L, -3);
                lua_concat(L, 3);
            } else {
                return luaL_error(L, "request headers must be strings");
            }
            lua_rawseti(L, anchor, (int)++nh);
            lua_pop(L, 1);
        }
    }
    if (nh > nsmall) hdrs = (const char **)pb_newuserdata(L, nh * sizeof *hdrs, 0);
    for (i = 0; i < nh; i++) {
        size_t len;
        lua_rawgeti(L, anchor, (int)i + 1);
        hdrs[i] = lua_tolstring(L, -1, &len);
        lua_pop(L, 1); /* anchored by the table */
        if (strlen(hdrs[i]) != len) return -1;
    }
    *out = hdrs;
    return (long)nh;
}

/* Reads the request fields of the table at t (not url, method, body,
 * headers) into r. Sets *bad when a string holds a NUL byte. */
static void read_request_options(lua_State *L, int t, pb_req *r, int *bad)
{
    r->username = opt_str_field(L, t, "username", bad);
    r->password = opt_str_field(L, t, "password", bad);
    r->ca_file = opt_str_field(L, t, "ca_file", bad);
    r->user_agent = opt_str_field(L, t, "user_agent", bad);
    r->timeout_ms = opt_ms_field(L, t, "timeout");
    r->connect_timeout_ms = opt_ms_field(L, t, "connect_timeout");
    r->max_body = (size_t)opt_long_field(L, t, "max_body", 0);
    r->follow = opt_long_field(L, t, "follow", 0);
    lua_getfield(L, t, "insecure");
    r->insecure = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, t, "fresh_connect");
    r->fresh_connect = lua_toboolean(L, -1);
    lua_pop(L, 1);
}

/* engine{max_host=, max_total=, and a profile for e:get: timeout=,
 *        connect_timeout=, max_body=, follow=, insecure=, ca_file=,
 *        user_agent=, headers=, username=, password=} -> engine */
static int l_engine(lua_State *L)
{
    pb_engine_opts o;
    pb_req profile;
    lengine *le;
    const char *small[16], **hdrs = small;
    char why[160];
    int t = pb_opttable(L, 1) ? 1 : 0, bad = 0;
    memset(&o, 0, sizeof o);
    memset(&profile, 0, sizeof profile);
    if (t) {
        long nh;
        o.max_host_connections = opt_long_field(L, t, "max_host", 0);
        o.max_total_connections = opt_long_field(L, t, "max_total", 0);
        read_request_options(L, t, &profile, &bad);
        nh = collect_headers(L, t, small, 16, &hdrs);
        if (bad || nh < 0) return luaL_argerror(L, 1, "engine options contain a NUL byte");
        profile.headers = hdrs;
        profile.nheaders = (size_t)nh;
        o.profile = &profile;
    }
    le = (lengine *)pb_newuserdata(L, sizeof *le, 0);
    le->e = NULL;
    le->next_tag = 0;
    pb_setmetatable(L, PB_ENGINE_MT);
    le->e = pb_engine_new(&o, why, sizeof why);
    if (!le->e) return luaL_error(L, "cannot create the engine: %s", why);
    return 1;
}

static int l_engine_close(lua_State *L)
{
    lengine *le = (lengine *)luaL_checkudata(L, 1, PB_ENGINE_MT);
    pb_engine_free(le->e);
    le->e = NULL;
    return 0;
}

static int l_engine_tostring(lua_State *L)
{
    lengine *le = (lengine *)luaL_checkudata(L, 1, PB_ENGINE_MT);
    if (!le->e)
        lua_pushstring(L, "postback.engine (closed)");
    else
        lua_pushfstring(L, "postback.engine (%d pending): %p", (int)pb_engine_pending(le->e),
                        (void *)le);
    return 1;
}

/* After pb_engine_add/get: pushes the new transfer's tag, or nil and the
 * reason it was refused (nothing sent); raises on memory failure. */
static int push_started(lua_State *L, lengine *le, int rc, const char *why)
{
    if (rc == PB_ENOMEM) return pb_fail_nomem(L);
    if (rc != PB_OK) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        return 2;
    }
    lua_pushinteger(L, ++le->next_tag);
    return 1;
}

/* e:add{method=, url=, headers=, body=, username=, password=, timeout=,
 *       connect_timeout=, max_body=, insecure=, ca_file=, follow=,
 *       user_agent=} -> tag | nil, reason   (nothing sent on nil) */
static int l_engine_add(lua_State *L)
{
    lengine *le = check_engine(L, 1);
    pb_req r;
    const char *small[16], **hdrs = small;
    char why[160];
    int bad = 0, rc;
    long nh;

    pb_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    memset(&r, 0, sizeof r);
    r.method = opt_str_field(L, 2, "method", &bad);
    r.url = opt_str_field(L, 2, "url", &bad);
    if (!r.url) return luaL_argerror(L, 2, "request needs a url");
    read_request_options(L, 2, &r, &bad);
    lua_getfield(L, 2, "body");
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "request body must be a string");
        r.body = lua_tolstring(L, -1, &r.body_len);
    }
    lua_pop(L, 1);
    nh = collect_headers(L, 2, small, 16, &hdrs);
    if (bad || nh < 0) {
        lua_pushnil(L);
        lua_pushstring(L, "request refused: a NUL byte in the method, URL, credentials or headers");
        return 2;
    }
    r.headers = hdrs;
    r.nheaders = (size_t)nh;
    r.tag = (unsigned long long)(le->next_tag + 1);
    rc = pb_engine_add(le->e, &r, why, sizeof why);
    return push_started(L, le, rc, why);
}

/* e:get(url) -> tag | nil, reason: a GET with the engine's profile */
static int l_engine_get(lua_State *L)
{
    lengine *le = check_engine(L, 1);
    size_t len;
    const char *url = pb_checkstring(L, 2, &len);
    char why[160];
    int rc;
    if (strlen(url) != len) {
        lua_pushnil(L);
        lua_pushstring(L, "URL contains CR, LF or NUL");
        return 2;
    }
    rc = pb_engine_get(le->e, url, (unsigned long long)(le->next_tag + 1), why, sizeof why);
    return push_started(L, le, rc, why);
}

/* e:perform(timeout_s) -> number of finished transfers waiting */
static int l_engine_perform(lua_State *L)
{
    lengine *le = check_engine(L, 1);
    double t = luaL_optnumber(L, 2, 0);
    int n;
    luaL_argcheck(L, t >= 0, 2, "timeout must be >= 0");
    n = pb_engine_perform(le->e, t > 1e6 ? 1000000000L : (long)ceil(t * 1000.0));
    if (n < 0) return luaL_error(L, "libcurl multi interface failed");
    lua_pushinteger(L, n);
    return 1;
}

static const char *const fail_names[] = {
    NULL, "timeout", "connect", "transport", "tls", "too_large", "cancelled",
};

/* e:next() -> tag, status, body, headers, fail, error, seconds, sent | nil
 * headers (the raw block) is "" for 2xx answers unless e:next(true). */
static int l_engine_next(lua_State *L)
{
    lengine *le = check_engine(L, 1);
    int all_headers = lua_toboolean(L, 2);
    pb_result r;
    if (!pb_engine_next(le->e, &r)) return 0;
    lua_pushinteger(L, (lua_Integer)r.tag);
    lua_pushinteger(L, (lua_Integer)r.status);
    lua_pushlstring(L, r.body, r.body_len);
    if (all_headers || r.status < 200 || r.status > 299)
        lua_pushlstring(L, r.headers, r.headers_len);
    else
        lua_pushliteral(L, "");
    if (r.fail) {
        lua_pushstring(L, fail_names[r.fail]);
        lua_pushstring(L, r.error);
    } else {
        lua_pushnil(L);
        lua_pushnil(L);
    }
    lua_pushnumber(L, (lua_Number)r.seconds);
    lua_pushboolean(L, r.sent);
    return 8;
}

static int l_engine_pending(lua_State *L)
{
    lengine *le = (lengine *)luaL_checkudata(L, 1, PB_ENGINE_MT);
    lua_pushinteger(L, le->e ? (lua_Integer)pb_engine_pending(le->e) : 0);
    return 1;
}

static const luaL_Reg engine_methods[] = {
    { "add", l_engine_add },
    { "get", l_engine_get },
    { "perform", l_engine_perform },
    { "next", l_engine_next },
    { "pending", l_engine_pending },
    { "close", l_engine_close },
    { NULL, NULL },
};

static const luaL_Reg engine_meta[] = {
    { "__gc", l_engine_close },
    { "__close", l_engine_close },
    { "__tostring", l_engine_tostring },
    { NULL, NULL },
};

static int l_curl_sentinel_gc(lua_State *L)
{
    (void)L;
    pb_engine_global_cleanup();
    return 0;
}

/* Registers the engine type and engine(); sets libcurl up once per state
 * (undone when the state closes: curl counts its users). */
static void open_engine(lua_State *L)
{
    register_class(L, PB_ENGINE_MT, engine_meta, engine_methods);
    lua_getfield(L, LUA_REGISTRYINDEX, PB_CURL_SENTINEL);
    if (lua_isnil(L, -1)) {
        if (pb_engine_global_init() != 0) luaL_error(L, "libcurl initialisation failed");
        pb_newuserdata(L, 1, 0);
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, l_curl_sentinel_gc);
        lua_setfield(L, -2, "__gc");
        lua_setmetatable(L, -2);
        lua_setfield(L, LUA_REGISTRYINDEX, PB_CURL_SENTINEL);
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_engine);
    lua_setfield(L, -2, "engine");
}
