/* binding/netpolicy.c - postback.netpolicy: the destination policy.
 *
 * The engine checks every address it connects to in C; a transport that
 * resolves names itself (OpenResty's cosockets) checks each address with
 * policy:check(ip) before it connects. Both read the same options:
 * allow_private (boolean) and allow_networks (a list of CIDR strings). */

typedef struct lnetpolicy {
    pb_netpolicy *p;
} lnetpolicy;

/* Applies the options table at idx to p (argument arg of fname, for errors).
 * Wrong types raise "bad argument"; returns PB_OK, PB_EINVAL with a reason
 * in why (a network that does not parse) or PB_ENOMEM. */
static int pb_netpolicy_apply(lua_State *L, int idx, int arg, const char *fname, pb_netpolicy *p,
                              char *why, size_t whylen)
{
    int rc = PB_OK, i, n;
    idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
    lua_getfield(L, idx, "allow_private");
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TBOOLEAN)
        luaL_error(L, "bad argument #%d to '%s' (option allow_private must be a boolean)", arg, fname);
    pb_netpolicy_set_allow_private(p, lua_toboolean(L, -1));
    lua_pop(L, 1);
    lua_getfield(L, idx, "allow_networks");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return PB_OK;
    }
    if (lua_type(L, -1) != LUA_TTABLE)
        luaL_error(L, "bad argument #%d to '%s' (option allow_networks must be a list of CIDR strings)",
                   arg, fname);
    n = (int)pb_rawlen(L, -1);
    for (i = 1; i <= n && rc == PB_OK; i++) {
        size_t len;
        const char *s;
        lua_rawgeti(L, -1, i);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "bad argument #%d to '%s' (allow_networks[%d] must be a string, got %s)", arg,
                       fname, i, luaL_typename(L, -1));
        s = lua_tolstring(L, -1, &len);
        rc = pb_netpolicy_allow(p, s, len, why, whylen);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return rc;
}

static lnetpolicy *check_netpolicy(lua_State *L, int i)
{
    lnetpolicy *lp = (lnetpolicy *)luaL_checkudata(L, i, PB_NETPOLICY_MT);
    if (!lp->p) luaL_argerror(L, i, "policy has been freed");
    return lp;
}

/* Pushes a policy userdata owning a new, empty policy (freed by its __gc
 * even when the caller raises); raises on memory failure. */
static lnetpolicy *push_netpolicy(lua_State *L)
{
    lnetpolicy *lp = (lnetpolicy *)pb_newuserdata(L, sizeof *lp, 0);
    lp->p = NULL;
    pb_setmetatable(L, PB_NETPOLICY_MT);
    lp->p = pb_netpolicy_new(NULL);
    if (!lp->p) pb_fail_nomem(L);
    return lp;
}

/* netpolicy([opts]) -> policy | nil, reason */
static int l_netpolicy(lua_State *L)
{
    lnetpolicy *lp;
    char why[PB_NETPOLICY_WHY];
    int rc;
    if (!lua_isnoneornil(L, 1)) pb_checktype(L, 1, LUA_TTABLE);
    lp = push_netpolicy(L);
    if (lua_isnoneornil(L, 1)) return 1;
    rc = pb_netpolicy_apply(L, 1, 1, "netpolicy", lp->p, why, sizeof why);
    if (rc == PB_ENOMEM) return pb_fail_nomem(L);
    if (rc != PB_OK) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        return 2;
    }
    return 1;
}

/* policy:check(ip) -> true | nil, reason   (ip: "10.0.0.1", "::1", ...) */
static int l_netpolicy_check(lua_State *L)
{
    lnetpolicy *lp = check_netpolicy(L, 1);
    size_t len;
    const char *ip = pb_checkstring(L, 2, &len);
    char why[PB_NETPOLICY_WHY];
    if (pb_netpolicy_check_text(lp->p, ip, len, why, sizeof why) == PB_NET_ALLOWED) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

static int l_netpolicy_gc(lua_State *L)
{
    lnetpolicy *lp = (lnetpolicy *)luaL_checkudata(L, 1, PB_NETPOLICY_MT);
    pb_netpolicy_free(lp->p);
    lp->p = NULL;
    return 0;
}

static int l_netpolicy_tostring(lua_State *L)
{
    lnetpolicy *lp = (lnetpolicy *)luaL_checkudata(L, 1, PB_NETPOLICY_MT);
    if (!lp->p) {
        lua_pushstring(L, "postback.netpolicy (freed)");
        return 1;
    }
    lua_pushfstring(L, "postback.netpolicy (allow_private=%s, %d allowed networks)",
                    pb_netpolicy_allow_private(lp->p) ? "true" : "false",
                    (int)pb_netpolicy_count(lp->p));
    return 1;
}

static const luaL_Reg netpolicy_methods[] = {
    { "check", l_netpolicy_check },
    { NULL, NULL },
};

static const luaL_Reg netpolicy_meta[] = {
    { "__gc", l_netpolicy_gc },
    { "__tostring", l_netpolicy_tostring },
    { NULL, NULL },
};

static const luaL_Reg netpolicy_functions[] = {
    { "netpolicy", l_netpolicy },
    { NULL, NULL },
};

static void open_netpolicy(lua_State *L)
{
    register_class(L, PB_NETPOLICY_MT, netpolicy_meta, netpolicy_methods);
    pb_setfuncs(L, netpolicy_functions);
}
