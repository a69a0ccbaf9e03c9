/* binding/engine.c - postback.engine: the libcurl multi engine.
 *
 *   e = core.engine{max_running=, max_host=, max_total=, <request options>}
 *   e:add(req, tag)              -> true | nil, why   a request table
 *   e:get(url, tag)              -> true | nil, why   a GET with e's options
 *   e:fire(target, values, tag, ropts) -> true | nil, err
 *   e:feed(items, i, n, ropts)   -> next_i, what [, item | err]
 *   e:perform(timeout)           -> transfers finished and not yet drained
 *   e:drain(sink)                -> transfers drained
 *
 * fire and feed render postbacks straight into the engine (no Lua string
 * per URL) and mark them as plain fires; drain turns a plain fire that got
 * a 2xx answer into its result table here, in C, and hands every other
 * outcome to Lua as one table, for the executor to judge. Tags are the
 * caller's job ids. */

typedef struct lengine {
    pb_engine *e;
    pb_scratch url; /* URLs rendered from templates */
    size_t max_url; /* the engine's bound on a URL */
    int userinfo;   /* allow_userinfo: URLs may carry user info */
} lengine;

/* Keys of the result tables drain builds, interned once per engine (in its
 * uservalue) so each result costs no string hashing. */
static const char *const result_keys[] = {
    "ok", "status", "body", "attempts", "time", "url", "id",
    "tag", "fast", "raw_headers", "seconds", "sent", "fail", "message", NULL
};
enum { K_OK = 1, K_STATUS, K_BODY, K_ATTEMPTS, K_TIME, K_URL, K_ID,
       K_TAG, K_FAST, K_RAW_HEADERS, K_SECONDS, K_SENT, K_FAIL, K_MESSAGE, K_COUNT = K_MESSAGE };

#define PB_FIRE_FAST 1 /* pb_req.user of transfers started by fire/feed */
#define PB_FIRE_JUDGED 2 /* the same, for a URL with user info: its outcome
                          * always goes to Lua, whose result hides the user info */

static lengine *check_engine(lua_State *L, int i)
{
    lengine *le = (lengine *)luaL_checkudata(L, i, PB_ENGINE_MT);
    if (!le->e) luaL_argerror(L, i, "engine is closed");
    return le;
}

/* ---- request options, from the X-macro table of core/engine.h */

/* The number at the top of the stack, checked to be finite and in [lo, hi]. */
static double opt_number(lua_State *L, const char *name, double lo, double hi)
{
    double v;
    if (lua_type(L, -1) != LUA_TNUMBER) luaL_error(L, "request option '%s' must be a number", name);
    v = (double)lua_tonumber(L, -1);
    if (!(v >= lo && v <= hi)) /* also false for NaN */
        luaL_error(L, "request option '%s' must be between %f and %f", name, lo, hi);
    return v;
}

static void read_STR(lua_State *L, int t, const char *name, const char **dst, double lo,
                     double hi, int *bad)
{
    size_t len;
    (void)lo;
    (void)hi;
    lua_getfield(L, t, name);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "request option '%s' must be a string", name);
        *dst = lua_tolstring(L, -1, &len);
        if (strlen(*dst) != len) *bad = 1;
    }
    lua_pop(L, 1); /* still referenced by the request table */
}

static void read_MS(lua_State *L, int t, const char *name, long *dst, double lo, double hi,
                    int *bad)
{
    (void)bad;
    lua_getfield(L, t, name);
    if (!lua_isnil(L, -1)) *dst = (long)ceil(opt_number(L, name, lo, hi) * 1000.0);
    lua_pop(L, 1);
}

static void read_SIZE(lua_State *L, int t, const char *name, size_t *dst, double lo, double hi,
                      int *bad)
{
    (void)bad;
    lua_getfield(L, t, name);
    if (!lua_isnil(L, -1)) *dst = (size_t)opt_number(L, name, lo, hi);
    lua_pop(L, 1);
}

static void read_LONG(lua_State *L, int t, const char *name, long *dst, double lo, double hi,
                      int *bad)
{
    (void)bad;
    lua_getfield(L, t, name);
    if (!lua_isnil(L, -1)) *dst = (long)opt_number(L, name, lo, hi);
    lua_pop(L, 1);
}

static void read_FLAG(lua_State *L, int t, const char *name, int *dst, double lo, double hi,
                      int *bad)
{
    (void)lo;
    (void)hi;
    (void)bad;
    lua_getfield(L, t, name);
    *dst = lua_toboolean(L, -1);
    lua_pop(L, 1);
}

/* Reads the request options of the table at t into r; sets *bad when a
 * string holds a NUL byte. Raises for a wrong type or range. */
static void read_request_options(lua_State *L, int t, pb_req *r, int *bad)
{
#define X(kind, name, member, lo, hi) read_##kind(L, t, #name, &r->member, lo, hi, bad);
    PB_REQUEST_OPTIONS(X)
#undef X
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

/* engine{max_running=, max_host=, max_total=, destinations=, allow_private=,
 *        allow_networks=, allow_userinfo=, and the request options of
 * e:get: timeout=, connect_timeout=, max_body=, max_url=, follow=,
 * insecure=, ca_file=, user_agent=, proxy=, proxy_from_env=, headers=,
 * username=, password=} -> engine */
static int l_engine(lua_State *L)
{
    pb_engine_opts o;
    pb_req profile;
    lengine *le;
    lnetpolicy *lp = NULL; /* owns the policy until the engine does */
    const char *small[16], **hdrs = small;
    char why[160];
    int t = pb_opttable(L, 1) ? 1 : 0, bad = 0;
    memset(&o, 0, sizeof o);
    memset(&profile, 0, sizeof profile);
    if (t) {
        long nh;
        lua_getfield(L, t, "max_host");
        if (!lua_isnil(L, -1)) o.max_host_connections = (long)opt_number(L, "max_host", 0, 1e6);
        lua_getfield(L, t, "max_total");
        if (!lua_isnil(L, -1)) o.max_total_connections = (long)opt_number(L, "max_total", 0, 1e6);
        lua_getfield(L, t, "max_running");
        if (!lua_isnil(L, -1)) o.max_running = (size_t)opt_number(L, "max_running", 0, 1e6);
        lua_pop(L, 3);
        read_request_options(L, t, &profile, &bad);
        nh = collect_headers(L, t, small, 16, &hdrs);
        if (bad || nh < 0) return luaL_argerror(L, 1, "engine options contain a NUL byte");
        profile.headers = hdrs;
        profile.nheaders = (size_t)nh;
        o.profile = &profile;
        lua_getfield(L, t, "allow_userinfo");
        if (lua_toboolean(L, -1)) o.url_flags |= PB_URL_ALLOW_USERINFO;
        lua_getfield(L, t, "destinations");
        if (lua_toboolean(L, -1)) {
            /* every address checked against the destination policy */
            int rc;
            lua_pop(L, 2);
            lp = push_netpolicy(L); /* stays on the stack */
            rc = pb_netpolicy_apply(L, t, 1, "engine", lp->p, why, sizeof why);
            if (rc == PB_ENOMEM) return pb_fail_nomem(L);
            if (rc != PB_OK) return luaL_argerror(L, 1, why);
            o.policy = lp->p;
        } else {
            lua_pop(L, 2);
        }
    }
    le = (lengine *)pb_newuserdata(L, sizeof *le, 1);
    le->e = NULL;
    le->url.busy = 0;
    pb_buf_init(&le->url.b, NULL);
    le->max_url = profile.max_url ? profile.max_url : PB_MAX_URL_DEFAULT;
    le->userinfo = (o.url_flags & PB_URL_ALLOW_USERINFO) != 0;
    pb_setmetatable(L, PB_ENGINE_MT);
    {
        int k;
        lua_createtable(L, K_COUNT, 0);
        for (k = 0; result_keys[k]; k++) {
            lua_pushstring(L, result_keys[k]);
            lua_rawseti(L, -2, k + 1);
        }
        pb_setuservalue(L, -2);
    }
    le->e = pb_engine_new(&o, why, sizeof why);
    if (!le->e) return luaL_error(L, "cannot create the engine: %s", why);
    if (lp) lp->p = NULL; /* the engine's now */
    return 1;
}

static int l_engine_close(lua_State *L)
{
    lengine *le = (lengine *)luaL_checkudata(L, 1, PB_ENGINE_MT);
    pb_engine_free(le->e);
    le->e = NULL;
    pb_buf_free(&le->url.b);
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

/* After pb_engine_add/get: pushes true, or nil and the reason the request
 * was refused (nothing sent); raises on memory failure. */
static int push_started(lua_State *L, int rc, const char *why)
{
    if (rc == PB_ENOMEM) return pb_fail_nomem(L);
    if (rc == PB_ECURL) {
        lua_pushnil(L);
        lua_pushliteral(L, "libcurl refused the transfer");
        return 2;
    }
    if (rc != PB_OK) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        if (rc == PB_EBLOCKED) {
            lua_pushliteral(L, "blocked_address");
            return 3;
        }
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static unsigned long long check_tag(lua_State *L, int i)
{
    lua_Number n = luaL_checknumber(L, i);
    luaL_argcheck(L, n >= 0 && n <= 9007199254740991.0 && n == floor(n), i,
                  "tag must be a non-negative integer");
    return (unsigned long long)n;
}

/* e:add(req, tag) -> true | nil, why   (nothing sent on nil)
 * req = {method=, url=, headers=, body=, <request options>} */
static int l_engine_add(lua_State *L)
{
    lengine *le = check_engine(L, 1);
    pb_req r;
    const char *small[16], **hdrs = small;
    char why[160];
    int bad = 0, rc;
    long nh;

    pb_checktype(L, 2, LUA_TTABLE);
    memset(&r, 0, sizeof r);
    r.tag = check_tag(L, 3);
    lua_settop(L, 2);
    read_STR(L, 2, "method", &r.method, 0, 0, &bad);
    lua_getfield(L, 2, "url");
    if (lua_type(L, -1) != LUA_TSTRING) return luaL_argerror(L, 2, "request needs a url");
    r.url = lua_tolstring(L, -1, &r.url_len);
    lua_pop(L, 1); /* referenced by the table */
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
        lua_pushstring(L, "a NUL byte in the method, URL, credentials or headers");
        return 2;
    }
    r.headers = hdrs;
    r.nheaders = (size_t)nh;
    rc = pb_engine_add(le->e, &r, why, sizeof why);
    return push_started(L, rc, why);
}

/* 1 when the authority of url holds user info (user:pw@): no result of such
 * a URL is made in C, where results show the URL as it was sent. Only an
 * engine with allow_userinfo needs to ask: the others refuse them. */
static int url_has_userinfo(const char *url, size_t len)
{
    const char *p, *end = url + len;
    const char *scheme = strstr(url, "://");
    if (!scheme || scheme >= end) return 0;
    for (p = scheme + 3; p < end && *p != '/' && *p != '?' && *p != '#'; p++)
        if (*p == '@') return 1;
    return 0;
}

/* How a fast fire of url is started: PB_FIRE_JUDGED when its URL has user
 * info (only engines with allow_userinfo need to ask), else PB_FIRE_FAST. */
static int fire_flag(const lengine *le, const char *url, size_t len)
{
    return le->userinfo && url_has_userinfo(url, len) ? PB_FIRE_JUDGED : PB_FIRE_FAST;
}

/* e:get(url, tag [, plain]) -> true | nil, why: a GET with the engine's
 * options; with plain, a plain fire (its 2xx answer becomes a result table
 * in drain). */
static int l_engine_get(lua_State *L)
{
    lengine *le = check_engine(L, 1);
    size_t len;
    const char *url = pb_checkstring(L, 2, &len);
    unsigned long long tag = check_tag(L, 3);
    int user = lua_toboolean(L, 4) ? fire_flag(le, url, len) : 0;
    char why[160];
    if (strlen(url) != len) {
        lua_pushnil(L);
        lua_pushstring(L, "URL contains CR, LF or NUL");
        return 2;
    }
    return push_started(L, pb_engine_get(le->e, url, len, tag, user, why, sizeof why), why);
}

/* Renders target (at ti: a code string or a template) with the values at vi
 * (0 = none) and starts it as a plain fire with `tag`. Returns 0 on success,
 * with the stack as it was, else pushes nil, err and returns 2. */
static int fire_one(lua_State *L, lengine *le, int ti, int vi, unsigned long long tag,
                    const pb_render_opts *ro)
{
    const char *url;
    size_t len;
    char why[160];
    int rc, top = lua_gettop(L), too_long = 0;
    pb_scratch *sc = NULL;

    if (lua_type(L, ti) == LUA_TSTRING) {
        const char *code = lua_tolstring(L, ti, &len);
        if (!memchr(code, '{', len) && !memchr(code, '%', len)) {
            url = code; /* nothing to render */
        } else {
            /* the state's buffer: the lookups run Lua code as it renders,
             * and one that raises does not leave it in use for good */
            sc = scratch_take(L, NULL);
            rc = render_code_into(L, code, len, vi, ro, &sc->b);
            if (rc != PB_OK) {
                scratch_release(sc);
                if (rc == PB_ENOMEM) return pb_fail_nomem(L);
                return rc;
            }
            url = pb_buf_str(&sc->b);
            len = sc->b.len;
        }
    } else {
        ltemplate *lt = check_template(L, ti);
        pb_render_err err;
        pb_value small[16];
        const pb_value *vals = lookup_values(L, lt, ti, vi, small, sizeof small / sizeof small[0]);
        sc = scratch_take(L, &le->url); /* once the lookups' Lua code has run */
        rc = pb_template_render(lt->t, vals, ro, &sc->b, &err);
        if (rc != PB_OK) {
            scratch_release(sc);
            if (rc == PB_ENOMEM || rc == PB_ELIMIT) return pb_fail_nomem(L);
            return push_render_error(L, rc, lt->t->src + err.name_off, err.name_len,
                                     rc == PB_RERR_BADTYPE ? vals[err.slot].s : NULL);
        }
        url = pb_buf_str(&sc->b);
        len = sc->b.len;
    }
    if (!le->e) {
        /* closed by Lua code of this fire: an __index of the values, or
         * the iterator of a feed */
        if (sc) scratch_release(sc);
        lua_settop(L, top);
        return luaL_error(L, "engine was closed while firing");
    }
    if (len > le->max_url) {
        rc = PB_EINVAL; /* as the Lua path words it, below */
        too_long = 1;
    } else if (memchr(url, '\0', len)) {
        rc = PB_EINVAL;
        strcpy(why, "URL contains CR, LF or NUL");
    } else {
        rc = pb_engine_get(le->e, url, len, tag, fire_flag(le, url, len), why, sizeof why);
    }
    if (sc) scratch_release(sc);
    lua_settop(L, top);
    if (rc == PB_OK) return 0;
    if (rc == PB_ENOMEM) return pb_fail_nomem(L);
    lua_pushnil(L);
    if (too_long)
        lua_pushfstring(L, "postback URL is longer than max_url (%d bytes)", (int)le->max_url);
    else
        lua_pushfstring(L, "postback refused before sending: %s",
                        rc == PB_ECURL ? "libcurl refused the transfer" : why);
    pb_pusherror(L, "validation",
                 too_long ? "too_long" : rc == PB_EBLOCKED ? "blocked_address" : "invalid_url", "url",
                 lua_tostring(L, -1));
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "retryable");
    lua_replace(L, -2);
    return 2;
}

/* e:fire(target, values, tag, ropts) -> true | nil, err */
static int l_engine_fire(lua_State *L)
{
    lengine *le = check_engine(L, 1);
    int vi = pb_opttable(L, 3) ? 3 : 0, oi;
    unsigned long long tag = check_tag(L, 4);
    pb_render_opts ro;
    int rc;
    if (lua_type(L, 2) != LUA_TSTRING && !pb_testudata(L, 2, PB_TEMPLATE_MT))
        return luaL_argerror(L, 2, "URL or template expected");
    oi = pb_opttable(L, 5) ? 5 : 0;
    read_render_opts(L, oi, 5, &ro);
    rc = fire_one(L, le, 2, vi, tag, &ro);
    if (rc) return rc;
    lua_pushboolean(L, 1);
    return 1;
}

/* The item at the top of the stack, if it is one fire can take: a URL or a
 * template, or {url = URL or template, values = table or nil} with nothing
 * else that matters (headers, code, type). Pushes target and values (or
 * nil) and returns 1; else returns 0 with the stack unchanged. */
static int plain_item(lua_State *L)
{
    int it = lua_gettop(L);
    int t = lua_type(L, it);
    if (t == LUA_TSTRING || pb_testudata(L, it, PB_TEMPLATE_MT)) {
        lua_pushvalue(L, it);
        lua_pushnil(L);
        return 1;
    }
    if (t != LUA_TTABLE) return 0;
    lua_getfield(L, it, "headers");
    lua_getfield(L, it, "code");
    lua_getfield(L, it, "type");
    if (!lua_isnil(L, -1) || !lua_isnil(L, -2) || !lua_isnil(L, -3)) {
        lua_settop(L, it);
        return 0;
    }
    lua_settop(L, it);
    lua_getfield(L, it, "url");
    lua_getfield(L, it, "values");
    if ((lua_type(L, -2) != LUA_TSTRING && !pb_testudata(L, -2, PB_TEMPLATE_MT)) ||
        (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TTABLE)) {
        lua_settop(L, it);
        return 0;
    }
    return 1;
}

/* e:feed(items, i, n, ropts) -> next_i, what [, item | err]
 * Fires up to n items, item i first (tag = its index), from an array or an
 * iterator function. Stops early: at the end of the items ("end"), at an
 * item that is not plain (returns it: "slow"), or at an item whose render
 * or check failed ("error", with the err; the item is consumed). Returns
 * "room" when n items were fired. */
static int l_engine_feed(lua_State *L)
{
    lengine *le = check_engine(L, 1);
    int is_fn = lua_type(L, 2) == LUA_TFUNCTION;
    lua_Integer i = luaL_checkinteger(L, 3), n = luaL_checkinteger(L, 4), k;
    pb_render_opts ro;
    int base;
    if (!is_fn) pb_checktype(L, 2, LUA_TTABLE);
    read_render_opts(L, pb_opttable(L, 5) ? 5 : 0, 5, &ro);
    lua_settop(L, 5);
    base = lua_gettop(L);
    for (k = 0; k < n; k++, i++) {
        int rc;
        if (is_fn) {
            lua_pushvalue(L, 2);
            lua_call(L, 0, 1);
        } else {
            lua_rawgeti(L, 2, (int)i);
        }
        if (lua_isnil(L, -1)) {
            lua_pushinteger(L, i);
            lua_pushliteral(L, "end");
            return 2;
        }
        if (!plain_item(L)) {
            lua_pushinteger(L, i);
            lua_pushliteral(L, "slow");
            lua_pushvalue(L, base + 1);
            return 3;
        }
        rc = fire_one(L, le, base + 2, lua_isnil(L, base + 3) ? 0 : base + 3,
                      (unsigned long long)i, &ro);
        if (rc) {
            lua_pushinteger(L, i);
            lua_pushliteral(L, "error");
            lua_pushvalue(L, -3); /* the err */
            return 3;
        }
        lua_settop(L, base);
    }
    lua_pushinteger(L, i);
    lua_pushliteral(L, "room");
    return 2;
}

/* e:perform(timeout_s) -> number of finished transfers waiting */
static int l_engine_perform(lua_State *L)
{
    lengine *le = check_engine(L, 1);
    double t = luaL_optnumber(L, 2, 0);
    int n;
    luaL_argcheck(L, t >= 0, 2, "timeout must be >= 0");
    n = pb_engine_perform(le->e, t > 1e6 ? 1000000000L : (long)ceil(t * 1000.0));
    if (n < 0) return luaL_error(L, "libcurl's multi interface failed");
    lua_pushinteger(L, n);
    return 1;
}

static const char *const fail_names[] = {
    NULL, "timeout", "connect", "transport", "tls", "too_large", "blocked",
};

/* Sets t[key] = the value on top (t at -2 after the push); keys are the
 * cached strings at stack index kb + K_*. */
#define SETK(L, kb, key) (lua_pushvalue(L, (kb) + (key)), lua_insert(L, -2), lua_rawset(L, -3))

/* Pushes the result table of a plain fire that got a 2xx answer. */
static void push_fast_result(lua_State *L, int kb, const pb_result *r, int with_id)
{
    lua_createtable(L, 0, with_id ? 7 : 6);
    lua_pushboolean(L, 1);
    SETK(L, kb, K_OK);
    lua_pushinteger(L, (lua_Integer)r->status);
    SETK(L, kb, K_STATUS);
    lua_pushlstring(L, r->body, r->body_len);
    SETK(L, kb, K_BODY);
    lua_pushinteger(L, 1);
    SETK(L, kb, K_ATTEMPTS);
    lua_pushnumber(L, (lua_Number)r->seconds);
    SETK(L, kb, K_TIME);
    lua_pushlstring(L, r->url, r->url_len);
    SETK(L, kb, K_URL);
    if (with_id) {
        lua_pushinteger(L, (lua_Integer)r->tag);
        SETK(L, kb, K_ID);
    }
}

/* Pushes the outcome of any other transfer, for the executor to judge. */
static void push_outcome(lua_State *L, int kb, const pb_result *r)
{
    lua_createtable(L, 0, 10);
    lua_pushinteger(L, (lua_Integer)r->tag);
    SETK(L, kb, K_TAG);
    lua_pushboolean(L, r->user != 0);
    SETK(L, kb, K_FAST);
    lua_pushinteger(L, (lua_Integer)r->status);
    SETK(L, kb, K_STATUS);
    lua_pushlstring(L, r->body, r->body_len);
    SETK(L, kb, K_BODY);
    lua_pushlstring(L, r->headers, r->headers_len);
    SETK(L, kb, K_RAW_HEADERS);
    lua_pushlstring(L, r->url, r->url_len);
    SETK(L, kb, K_URL);
    lua_pushnumber(L, (lua_Number)r->seconds);
    SETK(L, kb, K_SECONDS);
    lua_pushboolean(L, r->sent);
    SETK(L, kb, K_SENT);
    if (r->fail) {
        lua_pushstring(L, fail_names[r->fail]);
        SETK(L, kb, K_FAIL);
        lua_pushstring(L, r->error);
        SETK(L, kb, K_MESSAGE);
    }
}

/* e:drain(sink) -> count
 * sink = {plain = bool, with_id = bool, results = table|nil,
 *         on_result = function|nil, done = array|nil, slow = array,
 *         errors = array|nil}
 * Takes every finished transfer. A plain fire (fire/feed) with a 2xx answer,
 * when sink.plain, becomes its result table here: stored at results[tag],
 * its tag appended to done, and on_result(result, tag) called (protected: an
 * error is appended to errors as {id = tag, error = message} and the drain
 * goes on). Every other outcome is appended to slow as a table {tag, fast,
 * status, body, raw_headers, url, seconds, sent, fail, message}. */
static int l_engine_drain(lua_State *L)
{
    lengine *le = check_engine(L, 1);
    int plain, with_id, results, on_result, done, slow, errs, kb, k;
    lua_Integer ndone = 0, nslow, nerr = 0, count = 0;
    pb_result r;

    pb_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    luaL_checkstack(L, K_COUNT + 16, "drain");
    pb_getuservalue(L, 1);
    kb = lua_gettop(L);
    for (k = 1; k <= K_COUNT; k++) lua_rawgeti(L, kb, k);
    /* the keys sit at kb + K_* */
    lua_getfield(L, 2, "plain");
    plain = lua_toboolean(L, -1);
    lua_getfield(L, 2, "with_id");
    with_id = lua_toboolean(L, -1);
    lua_pop(L, 2);
    lua_getfield(L, 2, "results");
    results = lua_istable(L, -1) ? lua_gettop(L) : 0;
    lua_getfield(L, 2, "on_result");
    on_result = lua_isfunction(L, -1) ? lua_gettop(L) : 0;
    lua_getfield(L, 2, "done");
    done = lua_istable(L, -1) ? lua_gettop(L) : 0;
    lua_getfield(L, 2, "slow");
    if (!lua_istable(L, -1)) return luaL_argerror(L, 2, "sink.slow must be a table");
    slow = lua_gettop(L);
    lua_getfield(L, 2, "errors");
    errs = lua_istable(L, -1) ? lua_gettop(L) : 0;
    nslow = (lua_Integer)pb_rawlen(L, slow);
    if (done) ndone = (lua_Integer)pb_rawlen(L, done);
    if (errs) nerr = (lua_Integer)pb_rawlen(L, errs);

    while (le->e && pb_engine_next(le->e, &r)) {
        count++;
        if (plain && r.user == PB_FIRE_FAST && !r.fail && r.status >= 200 && r.status <= 299) {
            unsigned long long tag = r.tag;
            push_fast_result(L, kb, &r, with_id);
            if (results) { /* tags go up to 2^53 - 1: past an int */
                lua_pushinteger(L, (lua_Integer)tag);
                lua_pushvalue(L, -2);
                lua_rawset(L, results);
            }
            if (done) {
                lua_pushinteger(L, (lua_Integer)tag);
                lua_rawseti(L, done, (int)++ndone);
            }
            if (on_result) {
                lua_pushvalue(L, on_result);
                lua_insert(L, -2);
                lua_pushinteger(L, (lua_Integer)tag);
                if (lua_pcall(L, 2, 0, 0) != 0) {
                    if (errs) {
                        lua_createtable(L, 0, 2);
                        lua_pushinteger(L, (lua_Integer)tag);
                        lua_setfield(L, -2, "id");
                        lua_insert(L, -2);
                        lua_setfield(L, -2, "error");
                        lua_rawseti(L, errs, (int)++nerr);
                    } else {
                        lua_pop(L, 1);
                    }
                }
            } else {
                lua_pop(L, 1);
            }
        } else {
            push_outcome(L, kb, &r);
            lua_rawseti(L, slow, (int)++nslow);
        }
    }
    lua_pushinteger(L, count);
    return 1;
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
    { "fire", l_engine_fire },
    { "feed", l_engine_feed },
    { "perform", l_engine_perform },
    { "drain", l_engine_drain },
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

/* Registers the engine type, engine() and REQUEST_OPTIONS (the names of the
 * request options); sets libcurl up once per state (undone when the state
 * closes: curl counts its users). */
static void open_engine(lua_State *L)
{
    static const char *const names[] = {
#define X(kind, name, member, lo, hi) #name,
        PB_REQUEST_OPTIONS(X)
#undef X
        NULL
    };
    int i;
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
    lua_newtable(L);
    for (i = 0; names[i]; i++) {
        lua_pushstring(L, names[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "REQUEST_OPTIONS");
}
