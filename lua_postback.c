/* lua_postback.c - the postback.core Lua module: stack work only.
 *
 * Everything that computes lives in core/ (no Lua there); this file moves
 * values between the Lua stack and core's C forms. Builds for Lua 5.1
 * (and LuaJIT), 5.2, 5.3 and 5.4 from one source. There is no mutable
 * global state: all state hangs off userdata or the registry of a state. */
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
#include "core/macros.h"
#include "core/spool.h"
#include "core/template.h"
#include "core/url.h"
#include "core/validate.h"

#define PB_TEMPLATE_MT "postback.template"
#define PB_ERROR_MT "postback.error"
#define PB_ENGINE_MT "postback.engine"
#define PB_CURL_SENTINEL "postback.curl"
#define PB_SPOOL_MT "postback.spool"

/* ---- compatibility, under our own prefix (LuaJIT exports some 5.2 names) */

#if LUA_VERSION_NUM < 502
static void pb_setfuncs(lua_State *L, const luaL_Reg *l)
{
    for (; l->name; l++) {
        lua_pushcfunction(L, l->func);
        lua_setfield(L, -2, l->name);
    }
}
#define pb_newlib(L, l) (lua_newtable(L), pb_setfuncs(L, l))
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
#define pb_newlib(L, l) luaL_newlib(L, l)
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
static void pb_pusherror(lua_State *L, const char *kind, const char *code, const char *field,
                         const char *message)
{
    lua_createtable(L, 0, 4);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "kind");
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

/* ---- templates --------------------------------------------------------- */

typedef struct ltemplate {
    pb_template *t;
    pb_buf scratch; /* reused output buffer */
    int busy;       /* scratch in use (a render re-entered from a metamethod) */
} ltemplate;

static ltemplate *check_template(lua_State *L, int i)
{
    ltemplate *lt = (ltemplate *)luaL_checkudata(L, i, PB_TEMPLATE_MT);
    if (!lt->t) luaL_argerror(L, i, "template has been freed");
    return lt;
}

/* Pushes the template userdata for code; raises only on memory failure. */
static ltemplate *push_template(lua_State *L, const char *code, size_t len)
{
    ltemplate *lt = (ltemplate *)pb_newuserdata(L, sizeof *lt, 1);
    size_t i;
    lt->t = NULL;
    lt->busy = 0;
    pb_buf_init(&lt->scratch, NULL);
    pb_setmetatable(L, PB_TEMPLATE_MT);
    lt->t = pb_template_parse(code, len, NULL);
    if (!lt->t) pb_fail_nomem(L);
    /* The uservalue holds the names as Lua strings, so rendering looks each
     * value up without re-hashing a C string. */
    lua_createtable(L, (int)(lt->t->nnames > 0x7fffffff ? 0 : lt->t->nnames), 0);
    for (i = 0; i < lt->t->nnames; i++) {
        lua_pushlstring(L, lt->t->src + lt->t->names[i].off, lt->t->names[i].len);
        lua_rawseti(L, -2, (int)(i + 1));
    }
    pb_setuservalue(L, -2);
    return lt;
}

/* template(code) -> template */
static int l_template(lua_State *L)
{
    size_t len;
    const char *code = pb_checkstring(L, 1, &len);
    push_template(L, code, len);
    return 1;
}

static int l_template_gc(lua_State *L)
{
    ltemplate *lt = (ltemplate *)luaL_checkudata(L, 1, PB_TEMPLATE_MT);
    pb_template_free(lt->t);
    lt->t = NULL;
    pb_buf_free(&lt->scratch);
    return 0;
}

static int l_template_tostring(lua_State *L)
{
    ltemplate *lt = (ltemplate *)luaL_checkudata(L, 1, PB_TEMPLATE_MT);
    /* The code itself may carry tokens: show only its shape. */
    if (!lt->t)
        lua_pushstring(L, "postback.template (freed)");
    else
        lua_pushfstring(L, "postback.template (%d macros, %d bytes): %p", (int)lt->t->nmacros,
                        (int)lt->t->src_len, (void *)lt);
    return 1;
}

/* t:macros() -> {name, ...} in order of first use */
static int l_template_macros(lua_State *L)
{
    ltemplate *lt = check_template(L, 1);
    size_t i;
    lua_createtable(L, (int)(lt->t->nnames > 0x7fffffff ? 0 : lt->t->nnames), 0);
    pb_getuservalue(L, 1);
    for (i = 0; i < lt->t->nnames; i++) {
        lua_rawgeti(L, -1, (int)(i + 1));
        lua_rawseti(L, -3, (int)(i + 1));
    }
    lua_pop(L, 1);
    return 1;
}

static const char *const missing_names[] = { "empty", "keep", "error", NULL };
static const char *const encode_names[] = { "url", "none", NULL };

/* Renders template lt (userdata at index ti) with the values table at vi
 * (0 = none) and options table at oi (0 = none); pushes string or nil, err. */
static int render(lua_State *L, ltemplate *lt, int ti, int vi, int oi, int optarg)
{
    pb_template *t = lt->t;
    pb_value small[16], *vals = small;
    pb_render_opts ro;
    pb_render_err err;
    pb_buf local, *out;
    size_t i;
    int rc;

    ro.missing = pb_optenum(L, oi, optarg, "missing", "empty", missing_names);
    ro.encode = pb_optenum(L, oi, optarg, "encode", "url", encode_names);

    if (t->nnames > sizeof small / sizeof small[0]) {
        if (t->nnames > (size_t)-1 / sizeof *vals) return pb_fail_nomem(L);
        vals = (pb_value *)pb_newuserdata(L, t->nnames * sizeof *vals, 0);
    }
    if (t->nnames > 0x7fffffff) return luaL_error(L, "template has too many macros to render");
    if (vi && t->nnames) {
        /* Looked-up values must stay alive while their strings are used:
         * on the stack when few, else in a table (stacks are limited). */
        int on_stack = t->nnames <= 64 && lua_checkstack(L, (int)t->nnames + 4);
        int names, keep = 0;
        pb_getuservalue(L, ti);
        names = lua_gettop(L);
        if (!on_stack) {
            lua_createtable(L, (int)t->nnames, 0);
            keep = lua_gettop(L);
        }
        for (i = 0; i < t->nnames; i++) {
            lua_rawgeti(L, names, (int)(i + 1));
            lua_gettable(L, vi); /* honours __index */
            pb_tovalue(L, -1, &vals[i]);
            if (!on_stack) lua_rawseti(L, keep, (int)(i + 1));
        }
    } else {
        memset(vals, 0, t->nnames * sizeof *vals);
    }

    if (lt->busy) {
        pb_buf_init(&local, NULL);
        out = &local;
    } else {
        out = &lt->scratch;
        pb_buf_reset(out);
        lt->busy = 1;
    }
    rc = pb_template_render(t, vals, &ro, out, &err);
    if (rc == PB_OK) {
        lua_pushlstring(L, pb_buf_str(out), out->len);
    }
    if (out == &lt->scratch) {
        lt->busy = 0;
        if (out->cap > 65536) pb_buf_free(out); /* don't keep a huge buffer around */
    } else {
        pb_buf_free(out);
    }
    if (rc == PB_OK) return 1;
    if (rc == PB_ENOMEM || rc == PB_ELIMIT) return pb_fail_nomem(L);

    /* A value problem: nil, error naming the macro. */
    {
        const pb_name *nm = &t->names[err.slot];
        const pb_value *v = &vals[err.slot];
        lua_pushnil(L);
        lua_pushlstring(L, t->src + nm->off, nm->len);
        if (rc == PB_RERR_MISSING)
            lua_pushfstring(L, "no value for macro {%s} (missing = \"error\")",
                            lua_tostring(L, -1));
        else if (rc == PB_RERR_NONFINITE)
            lua_pushfstring(L, "value for macro {%s} is not a finite number", lua_tostring(L, -1));
        else
            lua_pushfstring(L, "value for macro {%s} is a %s (expected a string, number or boolean)",
                            lua_tostring(L, -1), v->s ? v->s : "value");
        pb_pusherror(L, "validation", rc == PB_RERR_MISSING ? "missing" : "bad_value", NULL,
                     lua_tostring(L, -1));
        lua_pushvalue(L, -3);
        lua_setfield(L, -2, "field");
        lua_pushvalue(L, -3);
        lua_setfield(L, -2, "macro");
        lua_replace(L, -3);
        lua_pop(L, 1);
        return 2;
    }
}

/* t:render(values, opts) -> string | nil, err */
static int l_template_render(lua_State *L)
{
    ltemplate *lt = check_template(L, 1);
    int vi = pb_opttable(L, 2) ? 2 : 0;
    int oi = pb_opttable(L, 3) ? 3 : 0;
    return render(L, lt, 1, vi, oi, 3);
}

/* render(code, values, opts) -> string | nil, err (parses, renders, drops) */
static int l_render(lua_State *L)
{
    int ti = 1, vi, oi;
    if (!pb_testudata(L, 1, PB_TEMPLATE_MT)) pb_checktype(L, 1, LUA_TSTRING);
    vi = pb_opttable(L, 2) ? 2 : 0;
    oi = pb_opttable(L, 3) ? 3 : 0;
    if (lua_type(L, 1) == LUA_TSTRING) {
        size_t len;
        const char *code = lua_tolstring(L, 1, &len);
        push_template(L, code, len);
        ti = lua_gettop(L);
    }
    return render(L, check_template(L, ti), ti, vi, oi, 3);
}

/* ---- encoding and URLs ------------------------------------------------- */

/* encode(s) -> s percent-encoded (RFC 3986 unreserved kept) */
static int l_encode(lua_State *L)
{
    size_t len;
    const char *s = pb_checkstring(L, 1, &len);
    luaL_Buffer b;
    size_t i;
    if (pb_url_encoded_len(s, len) == len) {
        lua_settop(L, 1);
        return 1;
    }
    luaL_buffinit(L, &b);
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (pb_is_unreserved(c)) {
            luaL_addchar(&b, (char)c);
        } else {
            static const char hex[] = "0123456789ABCDEF";
            luaL_addchar(&b, '%');
            luaL_addchar(&b, hex[c >> 4]);
            luaL_addchar(&b, hex[c & 15]);
        }
    }
    luaL_pushresult(&b);
    return 1;
}

/* check_url(s) -> true | nil, reason   (a URL about to be requested) */
static int l_check_url(lua_State *L)
{
    size_t len;
    const char *s = pb_checkstring(L, 1, &len);
    const char *why = pb_check_request_url(s, len);
    if (!why) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

/* url_info(s) -> is_https, is_loopback */
static int l_url_info(lua_State *L)
{
    size_t len;
    const char *s = pb_checkstring(L, 1, &len);
    lua_pushboolean(L, pb_url_is_https(s, len));
    lua_pushboolean(L, pb_url_is_loopback(s, len));
    return 2;
}

/* ---- validation -------------------------------------------------------- */

/* Reads the value at idx into a record field. */
static void pb_tofield(lua_State *L, int idx, pb_field *f)
{
    memset(f, 0, sizeof *f);
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        f->kind = PB_F_STRING;
        f->s = lua_tolstring(L, idx, &f->len);
        break;
    case LUA_TNUMBER: {
        double d;
#if LUA_VERSION_NUM >= 503
        if (lua_isinteger(L, idx)) {
            f->kind = PB_F_INT;
            f->i = (long long)lua_tointeger(L, idx);
            break;
        }
#endif
        d = (double)lua_tonumber(L, idx);
        /* Integral floats (JSON decoders give 8.0) count as integers. */
        if (d == floor(d) && fabs(d) < 9.2e18) {
            f->kind = PB_F_INT;
            f->i = (long long)d;
        } else {
            f->kind = PB_F_NUMBER;
            f->d = d;
        }
        break;
    }
    default:
        f->kind = PB_F_OTHER;
        f->tname = luaL_typename(L, idx);
        break;
    }
}

typedef struct unknown_name {
    const char *s;
    size_t len;
} unknown_name;

static int cmp_unknown(const void *a, const void *b)
{
    const unknown_name *x = (const unknown_name *)a, *y = (const unknown_name *)b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, n);
    if (c) return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

/* validate(rec, partial, protocol, max_code_len, allow_unknown_macros)
 *   -> true | false, {{field=, code=, message=[, macro=]}, ...} */
static int l_validate(lua_State *L)
{
    pb_record r;
    pb_validate_opts o;
    unknown_name *unk = NULL;
    const char **unk_s;
    size_t *unk_len;
    size_t nunk = 0, cap, i;
    long n;
    pb_verror *errs;
    int anchor;

    pb_checktype(L, 1, LUA_TTABLE);
    memset(&o, 0, sizeof o);
    o.partial = lua_toboolean(L, 2);
    if (!lua_isnoneornil(L, 3)) {
        pb_checktype(L, 3, LUA_TNUMBER);
        o.has_protocol = 1;
        o.protocol = (double)lua_tonumber(L, 3);
    }
    if (!lua_isnoneornil(L, 4)) {
        lua_Number m;
        pb_checktype(L, 4, LUA_TNUMBER);
        m = lua_tonumber(L, 4);
        luaL_argcheck(L, m >= 1 && m <= 1e9, 4, "max_code_len must be between 1 and 1e9");
        o.max_code_len = (size_t)m;
    }
    o.allow_unknown_macros = lua_toboolean(L, 5);
    lua_settop(L, 1);

    /* First pass: count the keys that are not postback fields. */
    memset(&r, 0, sizeof r);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        size_t klen;
        if (lua_type(L, -2) != LUA_TSTRING ||
            (lua_tolstring(L, -2, &klen), pb_field_index(lua_tostring(L, -2), klen) < 0))
            nunk++;
        lua_pop(L, 1);
    }
    /* Second pass: fill the record; unknown key names are anchored in a table. */
    lua_newtable(L);
    anchor = lua_gettop(L);
    if (nunk) {
        unk = (unknown_name *)pb_newuserdata(L, nunk * sizeof *unk, 0);
        lua_rawseti(L, anchor, 0); /* anchored: the memory stays put */
    }
    nunk = 0;
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        int fi = -1;
        size_t klen = 0;
        if (lua_type(L, -2) == LUA_TSTRING) {
            const char *k = lua_tolstring(L, -2, &klen);
            fi = pb_field_index(k, klen);
            if (fi >= 0) {
                pb_tofield(L, -1, &r.f[fi]);
            } else {
                unk[nunk].s = k;
                unk[nunk++].len = klen;
            }
        } else {
            /* Name it as tostring would, anchored so the pointer stays valid. */
            lua_pushvalue(L, -2);
            if (lua_type(L, -1) == LUA_TNUMBER) {
                lua_pushfstring(L, "[%s]", lua_tostring(L, -1));
            } else {
                lua_pushfstring(L, "[%s]", luaL_typename(L, -1));
            }
            unk[nunk].s = lua_tolstring(L, -1, &unk[nunk].len);
            lua_rawseti(L, anchor, (int)nunk + 1);
            lua_pop(L, 1);
            nunk++;
        }
        lua_pop(L, 1);
    }
    if (nunk > 1) qsort(unk, nunk, sizeof *unk, cmp_unknown);
    unk_s = nunk ? (const char **)pb_newuserdata(L, nunk * sizeof *unk_s, 0) : NULL;
    unk_len = nunk ? (size_t *)pb_newuserdata(L, nunk * sizeof *unk_len, 0) : NULL;
    for (i = 0; i < nunk; i++) {
        unk_s[i] = unk[i].s;
        unk_len[i] = unk[i].len;
    }
    r.unknown = unk_s;
    r.unknown_len = unk_len;
    r.nunknown = nunk;

    cap = 16 + nunk;
    for (;;) {
        errs = (pb_verror *)pb_newuserdata(L, cap * sizeof *errs, 0);
        n = pb_validate(&r, &o, errs, cap, NULL);
        if (n < 0) return pb_fail_nomem(L);
        if ((size_t)n <= cap) break;
        lua_pop(L, 1);
        cap = (size_t)n;
    }
    if (n == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_createtable(L, (int)n, 0);
    for (i = 0; i < (size_t)n; i++) {
        const pb_verror *e = &errs[i];
        lua_createtable(L, 0, 4);
        lua_pushlstring(L, e->field_name, e->field_len);
        lua_setfield(L, -2, "field");
        lua_pushstring(L, pb_error_code_names[e->code]);
        lua_setfield(L, -2, "code");
        lua_pushstring(L, e->message);
        lua_setfield(L, -2, "message");
        if (e->macro) {
            lua_pushlstring(L, e->macro, e->macro_len);
            lua_setfield(L, -2, "macro");
        }
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 2;
}

/* allowed_types(cp) -> {types...} | nil */
static int l_allowed_types(lua_State *L)
{
    double p;
    unsigned set;
    int t, k = 0;
    if (lua_type(L, 1) != LUA_TNUMBER) return 0;
    p = (double)lua_tonumber(L, 1);
    if (p != floor(p) || fabs(p) > 1e9) return 0;
    set = pb_allowed_types((long long)p);
    if (!set) return 0;
    lua_createtable(L, 3, 0);
    for (t = 1; t <= 3; t++)
        if (set & (1u << t)) {
            lua_pushinteger(L, t);
            lua_rawseti(L, -2, ++k);
        }
    return 1;
}


/* ---- the HTTP engine ---------------------------------------------------- */

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

static int l_engine_running(lua_State *L)
{
    lengine *le = (lengine *)luaL_checkudata(L, 1, PB_ENGINE_MT);
    lua_pushinteger(L, le->e ? (lua_Integer)pb_engine_running(le->e) : 0);
    return 1;
}

static int l_engine_cancel(lua_State *L)
{
    lengine *le = check_engine(L, 1);
    lua_Integer tag = luaL_checkinteger(L, 2);
    lua_pushboolean(L, pb_engine_cancel(le->e, (unsigned long long)tag));
    return 1;
}


/* ---- spool files ------------------------------------------------------- */

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

static int l_crc32(lua_State *L)
{
    size_t len;
    const char *s = pb_checkstring(L, 1, &len);
    lua_pushinteger(L, (lua_Integer)pb_crc32(s, len));
    return 1;
}

/* ---- clocks ------------------------------------------------------------ */

static int l_now(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)pb_monotonic());
    return 1;
}

static int l_time(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)pb_wallclock());
    return 1;
}

static int l_sleep(lua_State *L)
{
    pb_sleep((double)luaL_checknumber(L, 1));
    return 0;
}

static int l_curl_version(lua_State *L)
{
    lua_pushstring(L, pb_engine_curl_version());
    return 1;
}

static int l_curl_sentinel_gc(lua_State *L)
{
    (void)L;
    pb_engine_global_cleanup();
    return 0;
}

/* ---- module ------------------------------------------------------------ */

static const luaL_Reg template_methods[] = {
    { "render", l_template_render },
    { "macros", l_template_macros },
    { NULL, NULL },
};

static const luaL_Reg template_meta[] = {
    { "__gc", l_template_gc },
    { "__tostring", l_template_tostring },
    { NULL, NULL },
};

static const luaL_Reg engine_methods[] = {
    { "add", l_engine_add },
    { "get", l_engine_get },
    { "perform", l_engine_perform },
    { "next", l_engine_next },
    { "pending", l_engine_pending },
    { "running", l_engine_running },
    { "cancel", l_engine_cancel },
    { "close", l_engine_close },
    { NULL, NULL },
};

static const luaL_Reg engine_meta[] = {
    { "__gc", l_engine_close },
    { "__close", l_engine_close },
    { "__tostring", l_engine_tostring },
    { NULL, NULL },
};

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

static const luaL_Reg functions[] = {
    { "spool_open", l_spool_open },
    { "spool_check", l_spool_check },
    { "spool_rewrite", l_spool_rewrite },
    { "crc32", l_crc32 },
    { "engine", l_engine },
    { "now", l_now },
    { "time", l_time },
    { "sleep", l_sleep },
    { "curl_version", l_curl_version },
    { "template", l_template },
    { "render", l_render },
    { "encode", l_encode },
    { "check_url", l_check_url },
    { "url_info", l_url_info },
    { "validate", l_validate },
    { "allowed_types", l_allowed_types },
    { NULL, NULL },
};

#if defined(_WIN32)
#define PB_EXPORT __declspec(dllexport)
#else
#define PB_EXPORT __attribute__((visibility("default")))
#endif

PB_EXPORT int luaopen_postback_core(lua_State *L);

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

PB_EXPORT int luaopen_postback_core(lua_State *L)
{
    int i;
    register_class(L, PB_TEMPLATE_MT, template_meta, template_methods);
    register_class(L, PB_ENGINE_MT, engine_meta, engine_methods);
    register_class(L, PB_SPOOL_MT, spool_meta, spool_methods);
    /* libcurl's global set-up, undone when this state closes (curl counts). */
    lua_getfield(L, LUA_REGISTRYINDEX, PB_CURL_SENTINEL);
    if (lua_isnil(L, -1)) {
        if (pb_engine_global_init() != 0) return luaL_error(L, "libcurl initialisation failed");
        pb_newuserdata(L, 1, 0);
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, l_curl_sentinel_gc);
        lua_setfield(L, -2, "__gc");
        lua_setmetatable(L, -2);
        lua_setfield(L, LUA_REGISTRYINDEX, PB_CURL_SENTINEL);
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, PB_ERROR_MT)) {
        lua_pushstring(L, PB_ERROR_MT);
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);

    pb_newlib(L, functions);
    luaL_getmetatable(L, PB_ERROR_MT);
    lua_setfield(L, -2, "error_mt");
    luaL_getmetatable(L, PB_TEMPLATE_MT);
    lua_setfield(L, -2, "template_mt");
    lua_createtable(L, PB_NMACROS, 0);
    for (i = 0; i < PB_NMACROS; i++) {
        lua_pushstring(L, pb_macro_names[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "MACROS");
    return 1;
}
