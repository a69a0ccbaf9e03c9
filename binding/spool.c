/* binding/spool.c - postback.spool: checksummed append-only files. */

typedef struct lspool {
    int fd;
} lspool;

static lspool *check_spool(lua_State *L, int i)
{
    lspool *sp = (lspool *)luaL_checkudata(L, i, PB_SPOOL_MT);
    if (sp->fd < 0) luaL_argerror(L, i, "spool is closed");
    return sp;
}

static int push_errno(lua_State *L, const char *what)
{
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", what, strerror(errno));
    return 2;
}

/* spool_open(path) -> spool | nil, message */
static int l_spool_open(lua_State *L)
{
    const char *path = pb_checkstring(L, 1, NULL);
    lspool *sp = (lspool *)pb_newuserdata(L, sizeof *sp, 0);
    sp->fd = -1;
    pb_setmetatable(L, PB_SPOOL_MT);
    sp->fd = pb_spool_open(path);
    if (sp->fd < 0) return push_errno(L, path);
    return 1;
}

/* sp:append(payload) -> true | nil, message   (one record, one write) */
static int l_spool_append(lua_State *L)
{
    lspool *sp = check_spool(L, 1);
    size_t len;
    const char *s = pb_checkstring(L, 2, &len);
    if (pb_spool_append(sp->fd, s, len) != 0) return push_errno(L, "spool append");
    lua_pushboolean(L, 1);
    return 1;
}

static int l_spool_sync(lua_State *L)
{
    lspool *sp = check_spool(L, 1);
    if (pb_spool_sync(sp->fd) != 0) return push_errno(L, "spool sync");
    lua_pushboolean(L, 1);
    return 1;
}

static int l_spool_close(lua_State *L)
{
    lspool *sp = (lspool *)luaL_checkudata(L, 1, PB_SPOOL_MT);
    pb_spool_close(sp->fd);
    sp->fd = -1;
    return 0;
}

/* spool_check(line) -> payload | nil   (checksum verified) */
static int l_spool_check(lua_State *L)
{
    size_t len;
    const char *line = pb_checkstring(L, 1, &len);
    long off = pb_spool_check(line, len);
    if (off < 0) return 0;
    lua_pushlstring(L, line + off, len - (size_t)off);
    return 1;
}

/* spool_rewrite(path, {payload, ...}) -> true | nil, message */
static int l_spool_rewrite(lua_State *L)
{
    const char *path = pb_checkstring(L, 1, NULL);
    size_t n, i;
    const char **ps;
    size_t *lens;
    pb_checktype(L, 2, LUA_TTABLE);
    n = (size_t)pb_rawlen(L, 2);
    ps = (const char **)pb_newuserdata(L, (n ? n : 1) * sizeof *ps, 0);
    lens = (size_t *)pb_newuserdata(L, (n ? n : 1) * sizeof *lens, 0);
    for (i = 0; i < n; i++) {
        lua_rawgeti(L, 2, (int)i + 1);
        if (lua_type(L, -1) != LUA_TSTRING) return luaL_argerror(L, 2, "payloads must be strings");
        ps[i] = lua_tolstring(L, -1, &lens[i]);
        lua_pop(L, 1); /* anchored by the table */
    }
    if (pb_spool_rewrite(path, ps, lens, n) != 0) return push_errno(L, path);
    lua_pushboolean(L, 1);
    return 1;
}

static const luaL_Reg spool_methods[] = {
    { "append", l_spool_append },
    { "sync", l_spool_sync },
    { "close", l_spool_close },
    { NULL, NULL },
};

static const luaL_Reg spool_meta[] = {
    { "__gc", l_spool_close },
    { "__close", l_spool_close },
    { NULL, NULL },
};

static const luaL_Reg spool_functions[] = {
    { "spool_open", l_spool_open },
    { "spool_check", l_spool_check },
    { "spool_rewrite", l_spool_rewrite },
    { NULL, NULL },
};

static void open_spool(lua_State *L)
{
    register_class(L, PB_SPOOL_MT, spool_meta, spool_methods);
    pb_setfuncs(L, spool_functions);
}
