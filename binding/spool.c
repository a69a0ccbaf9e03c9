/* binding/spool.c - postback.spool (the spool of owed records, used by
 * lua/postback/spool.lua) and postback.spool_file (a checksummed record
 * file, used by the migrate journal). */

/* ---- record files ---------------------------------------------------------- */

typedef struct lspoolfile {
    int fd;
} lspoolfile;

static lspoolfile *check_spool_file(lua_State *L, int i)
{
    lspoolfile *f = (lspoolfile *)luaL_checkudata(L, i, PB_SPOOL_FILE_MT);
    if (f->fd < 0) luaL_argerror(L, i, "spool file is closed");
    return f;
}

static int push_errno(lua_State *L, const char *what)
{
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", what, strerror(errno));
    return 2;
}

/* spool_open(path) -> file | nil, message */
static int l_spool_open(lua_State *L)
{
    size_t len;
    const char *path = pb_checkstring(L, 1, &len);
    lspoolfile *f;
    if (strlen(path) != len) {
        lua_pushnil(L);
        lua_pushliteral(L, "the spool path holds a NUL byte");
        return 2;
    }
    f = (lspoolfile *)pb_newuserdata(L, sizeof *f, 0);
    f->fd = -1;
    pb_setmetatable(L, PB_SPOOL_FILE_MT);
    f->fd = pb_spool_file_open(path);
    if (f->fd < 0) return push_errno(L, path);
    return 1;
}

/* file:append(payload) -> true | nil, message   (one record, one write) */
static int l_spool_file_append(lua_State *L)
{
    lspoolfile *f = check_spool_file(L, 1);
    size_t len;
    const char *s = pb_checkstring(L, 2, &len);
    if (pb_spool_file_append(f->fd, s, len) != 0) return push_errno(L, "spool append");
    lua_pushboolean(L, 1);
    return 1;
}

static int l_spool_file_sync(lua_State *L)
{
    lspoolfile *f = check_spool_file(L, 1);
    if (pb_spool_file_sync(f->fd) != 0) return push_errno(L, "spool sync");
    lua_pushboolean(L, 1);
    return 1;
}

static int l_spool_file_close(lua_State *L)
{
    lspoolfile *f = (lspoolfile *)luaL_checkudata(L, 1, PB_SPOOL_FILE_MT);
    pb_spool_file_close(f->fd);
    f->fd = -1;
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

/* ---- the spool -------------------------------------------------------------- */

typedef struct lspool {
    pb_spool *sp;
    pb_buf out; /* payloads read by next() */
} lspool;

static lspool *check_spool(lua_State *L, int i)
{
    lspool *ls = (lspool *)luaL_checkudata(L, i, PB_SPOOL_MT);
    if (!ls->sp) luaL_argerror(L, i, "spool is closed");
    return ls;
}

static void push_id(lua_State *L, long long id)
{
#if LUA_VERSION_NUM >= 503
    lua_pushinteger(L, (lua_Integer)id);
#else
    lua_pushnumber(L, (lua_Number)id);
#endif
}

static void set_int(lua_State *L, const char *k, long long v)
{
    push_id(L, v);
    lua_setfield(L, -2, k);
}

/* An id argument: an integer in 1 .. 2^53-1. */
static long long check_id(lua_State *L, int i)
{
    lua_Number n;
    pb_checktype(L, i, LUA_TNUMBER);
    n = lua_tonumber(L, i);
    if (!(n >= 1 && n <= (lua_Number)PB_SPOOL_MAX_ID) || n != floor(n))
        luaL_argerror(L, i, "id must be a positive integer");
    return (long long)n;
}

/* nil, err for a failed spool call (raises for a failed allocation). */
static int push_spool_error(lua_State *L, const pb_spool_err *e, const char *path)
{
    static const char *const codes[] = { "ok", "io", "nomem", "locked", "tail", "too_large",
                                         "invalid" };
    int k = -e->code;
    if (e->code == PB_SPOOL_ENOMEM) return pb_fail_nomem(L);
    lua_pushnil(L);
    pb_pusherror(L, "spool", k >= 0 && k <= 6 ? codes[k] : "io", NULL, e->msg);
    if (path) {
        lua_pushstring(L, path);
        lua_setfield(L, -2, "path");
    }
    if (e->sys) set_int(L, "errno", e->sys);
    if (e->pid) set_int(L, "pid", e->pid);
    return 2;
}

static int push_result(lua_State *L, lspool *ls, int rc, const pb_spool_err *e)
{
    if (rc < 0) return push_spool_error(L, e, pb_spool_path(ls->sp));
    lua_pushboolean(L, 1);
    return 1;
}

/* spool(path, {compact_after=, max_record=}) -> spool | nil, err */
static int l_spool(lua_State *L)
{
    size_t len;
    const char *path = pb_checkstring(L, 1, &len);
    int has_opts = pb_opttable(L, 2);
    pb_spool_opts o;
    pb_spool_err e;
    lspool *ls;
    int rc;
    memset(&o, 0, sizeof o);
    if (has_opts) {
        static const char *const names[] = { "compact_after", "max_record" };
        double lim[] = { 1e12, 1073741824.0 };
        int k;
        for (k = 0; k < 2; k++) {
            lua_getfield(L, 2, names[k]);
            if (!lua_isnil(L, -1)) {
                double v = lua_type(L, -1) == LUA_TNUMBER ? (double)lua_tonumber(L, -1) : -1;
                if (!(v >= 1 && v <= lim[k]) || v != floor(v))
                    luaL_argerror(L, 2, lua_pushfstring(L, "option '%s' must be an integer from 1 "
                                                           "to %.0f", names[k], lim[k]));
                if (k == 0) o.compact_after = (unsigned long)v;
                else o.max_record = (size_t)v;
            }
            lua_pop(L, 1);
        }
    }
    if (strlen(path) != len) {
        memset(&e, 0, sizeof e);
        e.code = PB_SPOOL_EINVAL;
        snprintf(e.msg, sizeof e.msg, "the spool path holds a NUL byte");
        return push_spool_error(L, &e, NULL);
    }
    ls = (lspool *)pb_newuserdata(L, sizeof *ls, 0);
    ls->sp = NULL;
    pb_buf_init(&ls->out, NULL);
    pb_setmetatable(L, PB_SPOOL_MT);
    rc = pb_spool_open(&ls->sp, path, &o, &e);
    if (rc != PB_SPOOL_OK) return push_spool_error(L, &e, path);
    return 1;
}

/* sp:add(payload) -> id | nil, err */
static int l_spool_add(lua_State *L)
{
    lspool *ls = check_spool(L, 1);
    size_t len;
    const char *s = pb_checkstring(L, 2, &len);
    long long id;
    pb_spool_err e;
    int rc = pb_spool_add(ls->sp, s, len, &id, &e);
    if (rc != PB_SPOOL_OK) return push_spool_error(L, &e, pb_spool_path(ls->sp));
    push_id(L, id);
    return 1;
}

/* sp:done(id) -> true (it was owed) | false | nil, err */
static int l_spool_done(lua_State *L)
{
    lspool *ls = check_spool(L, 1);
    pb_spool_err e;
    int rc = pb_spool_done(ls->sp, check_id(L, 2), &e);
    if (rc < 0) return push_spool_error(L, &e, pb_spool_path(ls->sp));
    lua_pushboolean(L, rc);
    return 1;
}

/* sp:discard(id) -> true | false | nil, err */
static int l_spool_discard(lua_State *L)
{
    lspool *ls = check_spool(L, 1);
    pb_spool_err e;
    int rc = pb_spool_discard(ls->sp, check_id(L, 2), &e);
    if (rc < 0) return push_spool_error(L, &e, pb_spool_path(ls->sp));
    lua_pushboolean(L, rc);
    return 1;
}

/* sp:next(after) -> id, payload | nil | nil, err */
static int l_spool_next(lua_State *L)
{
    lspool *ls = check_spool(L, 1);
    long long after = 0, id = 0;
    pb_spool_err e;
    int rc;
    if (!lua_isnoneornil(L, 2)) {
        lua_Number n;
        pb_checktype(L, 2, LUA_TNUMBER);
        n = lua_tonumber(L, 2);
        luaL_argcheck(L, n == n, 2, "after is NaN");
        /* bounded by the ids: all are past 0, none past the last one */
        after = n <= 0 ? 0 : n >= (lua_Number)PB_SPOOL_MAX_ID ? PB_SPOOL_MAX_ID : (long long)n;
    }
    pb_buf_reset(&ls->out);
    rc = pb_spool_next(ls->sp, after, &id, &ls->out, &e);
    if (rc < 0) return push_spool_error(L, &e, pb_spool_path(ls->sp));
    if (rc == 0) {
        lua_pushnil(L);
        return 1;
    }
    push_id(L, id);
    lua_pushlstring(L, ls->out.len ? ls->out.data : "", ls->out.len);
    return 2;
}

static int l_spool_sync(lua_State *L)
{
    lspool *ls = check_spool(L, 1);
    pb_spool_err e;
    return push_result(L, ls, pb_spool_sync(ls->sp, &e), &e);
}

static int l_spool_compact(lua_State *L)
{
    lspool *ls = check_spool(L, 1);
    pb_spool_err e;
    return push_result(L, ls, pb_spool_compact(ls->sp, &e), &e);
}

/* Pushes an event as an error table: kind "spool", code "damaged",
 * "discarded", "compaction" or "corrupt_file", and what is known of it. */
static void push_event_error(lua_State *L, const pb_spool *sp, const pb_spool_event *ev)
{
    static const char *const reasons[] = { "", "checksum", "torn", "format", "too_long",
                                           "duplicate" };
    const char *path = pb_spool_path(sp);
    const char *code;
    int damage = ev->what >= PB_SPOOL_DAMAGED_CHECKSUM && ev->what <= PB_SPOOL_DAMAGED_DUPLICATE;
    int located = damage || ev->what == PB_SPOOL_DISCARDED ||
                  (ev->what == PB_SPOOL_CORRUPT_FAILED && ev->id);
    char num[96];
    if (ev->what == PB_SPOOL_COMPACT_FAILED) {
        code = "compaction";
        lua_pushfstring(L, "%s: compaction failed: %s; the spool is as it was", path,
                        strerror(ev->sys));
    } else if (ev->what == PB_SPOOL_CORRUPT_FAILED && !ev->id) {
        code = "corrupt_file";
        lua_pushfstring(L, "%s: damaged records could not be saved to %s.corrupt (%s): they stay "
                           "in the spool, and compaction is off until it is reopened",
                        path, path, strerror(ev->sys));
    } else if (ev->what == PB_SPOOL_CORRUPT_FAILED) {
        code = "corrupt_file";
        snprintf(num, sizeof num, "%lld", ev->id);
        lua_pushfstring(L, "%s: record %s could not be saved to %s.corrupt (%s): it stays owed",
                        path, num, path, strerror(ev->sys));
    } else {
        luaL_Buffer b;
        code = damage ? "damaged" : "discarded";
        luaL_buffinit(L, &b);
        luaL_addstring(&b, path);
        if (ev->line) {
            snprintf(num, sizeof num, " line %llu", ev->line);
            luaL_addstring(&b, num);
        }
        snprintf(num, sizeof num, " (offset %llu, %lu bytes): ", ev->offset,
                 (unsigned long)ev->length);
        luaL_addstring(&b, num);
        luaL_addstring(&b, pb_spool_what(ev->what));
        if (ev->id) {
            snprintf(num, sizeof num, ", id %lld", ev->id);
            luaL_addstring(&b, num);
        }
        luaL_addstring(&b, ev->saved ? "; moved to " : "; kept in the spool, could not be moved to ");
        luaL_addstring(&b, path);
        luaL_addstring(&b, ".corrupt");
        luaL_pushresult(&b);
    }
    pb_pusherror(L, "spool", code, NULL, lua_tostring(L, -1));
    lua_remove(L, -2);
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
    if (damage) {
        lua_pushstring(L, reasons[ev->what]);
        lua_setfield(L, -2, "reason");
    }
    if (located) {
        if (ev->line) set_int(L, "line", (long long)ev->line);
        set_int(L, "offset", (long long)ev->offset);
        set_int(L, "length", (long long)ev->length);
        lua_pushboolean(L, ev->saved);
        lua_setfield(L, -2, "saved");
    }
    if (ev->id) set_int(L, "id", ev->id);
    if (ev->sys) set_int(L, "errno", ev->sys);
}

/* sp:events() -> {err, ...}: what happened since the last call (damaged
 * records, failed compactions), each as an error table. */
static int l_spool_events(lua_State *L)
{
    lspool *ls = check_spool(L, 1);
    pb_spool_event ev[16];
    size_t n, i;
    int k = 0;
    lua_newtable(L);
    while ((n = pb_spool_events(ls->sp, ev, 16)) > 0) {
        for (i = 0; i < n; i++) {
            push_event_error(L, ls->sp, &ev[i]);
            lua_rawseti(L, -2, ++k);
        }
    }
    return 1;
}

static int l_spool_stats(lua_State *L)
{
    lspool *ls = check_spool(L, 1);
    pb_spool_stats st;
    pb_spool_get_stats(ls->sp, &st);
    lua_createtable(L, 0, 14);
    set_int(L, "owed", (long long)st.owed);
    set_int(L, "owed_bytes", (long long)st.owed_bytes);
    set_int(L, "bytes", (long long)st.bytes);
    set_int(L, "peak_bytes", (long long)st.peak_bytes);
    set_int(L, "corrupt", (long long)st.corrupt);
    set_int(L, "compactions", (long long)st.compactions);
    set_int(L, "compaction_failures", (long long)st.compact_failures);
    set_int(L, "added", (long long)st.added);
    set_int(L, "done", (long long)st.done);
    set_int(L, "events_dropped", (long long)st.events_dropped);
    set_int(L, "last_id", st.last_id);
    lua_pushboolean(L, st.tail_broken);
    lua_setfield(L, -2, "refusing");
    lua_pushboolean(L, st.compaction_off);
    lua_setfield(L, -2, "compaction_off");
    return 1;
}

/* sp:close() -> true | nil, err   (syncs; idempotent) */
static int l_spool_close(lua_State *L)
{
    lspool *ls = (lspool *)luaL_checkudata(L, 1, PB_SPOOL_MT);
    pb_spool_err e;
    int rc;
    if (!ls->sp) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushstring(L, pb_spool_path(ls->sp));
    rc = pb_spool_close(ls->sp, &e);
    ls->sp = NULL;
    pb_buf_free(&ls->out);
    if (rc != PB_SPOOL_OK) return push_spool_error(L, &e, lua_tostring(L, -1));
    lua_pushboolean(L, 1);
    return 1;
}

static int l_spool_gc(lua_State *L)
{
    lspool *ls = (lspool *)luaL_checkudata(L, 1, PB_SPOOL_MT);
    if (ls->sp) pb_spool_close(ls->sp, NULL);
    ls->sp = NULL;
    pb_buf_free(&ls->out);
    return 0;
}

static int l_spool_tostring(lua_State *L)
{
    lspool *ls = (lspool *)luaL_checkudata(L, 1, PB_SPOOL_MT);
    if (!ls->sp) {
        lua_pushstring(L, "postback.spool (closed)");
    } else {
        pb_spool_stats st;
        pb_spool_get_stats(ls->sp, &st);
        lua_pushfstring(L, "postback.spool (%s, %d owed)", pb_spool_path(ls->sp), (int)st.owed);
    }
    return 1;
}

static const luaL_Reg spool_file_methods[] = {
    { "append", l_spool_file_append },
    { "sync", l_spool_file_sync },
    { "close", l_spool_file_close },
    { NULL, NULL },
};

static const luaL_Reg spool_file_meta[] = {
    { "__gc", l_spool_file_close },
    { "__close", l_spool_file_close },
    { NULL, NULL },
};

static const luaL_Reg spool_methods[] = {
    { "add", l_spool_add },
    { "done", l_spool_done },
    { "discard", l_spool_discard },
    { "next", l_spool_next },
    { "sync", l_spool_sync },
    { "compact", l_spool_compact },
    { "events", l_spool_events },
    { "stats", l_spool_stats },
    { "close", l_spool_close },
    { NULL, NULL },
};

static const luaL_Reg spool_meta[] = {
    { "__gc", l_spool_gc },
    { "__close", l_spool_gc },
    { "__tostring", l_spool_tostring },
    { NULL, NULL },
};

static const luaL_Reg spool_functions[] = {
    { "spool", l_spool },
    { "spool_open", l_spool_open },
    { "spool_check", l_spool_check },
    { NULL, NULL },
};

static void open_spool(lua_State *L)
{
    register_class(L, PB_SPOOL_FILE_MT, spool_file_meta, spool_file_methods);
    register_class(L, PB_SPOOL_MT, spool_meta, spool_methods);
    pb_setfuncs(L, spool_functions);
    lua_pushinteger(L, PB_SPOOL_COMPACT_AFTER);
    lua_setfield(L, -2, "SPOOL_COMPACT_AFTER");
    lua_pushinteger(L, PB_SPOOL_MAX_RECORD);
    lua_setfield(L, -2, "SPOOL_MAX_RECORD");
}
