/* binding/template.c - postback.template: parse once, render many times. */

typedef struct ltemplate {
    pb_template *t;
    pb_scratch out; /* its own output buffer */
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
    pb_buf_init(&lt->out.b, NULL);
    lt->out.busy = 0;
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
    pb_buf_free(&lt->out.b);
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

/* Pushes nil and the error of a failed render (rc = PB_RERR_*) of the macro
 * `name`; tname is the Lua type of a bad value. Returns 2. */
static int push_render_error(lua_State *L, int rc, const char *name, size_t nlen,
                             const char *tname)
{
    lua_pushnil(L);
    lua_pushlstring(L, name, nlen);
    if (rc == PB_RERR_MISSING)
        lua_pushfstring(L, "no value for macro {%s} (missing = \"error\")", lua_tostring(L, -1));
    else if (rc == PB_RERR_NONFINITE)
        lua_pushfstring(L, "value for macro {%s} is not a finite number", lua_tostring(L, -1));
    else
        lua_pushfstring(L, "value for macro {%s} is a %s (expected a string, number or boolean)",
                        lua_tostring(L, -1), tname ? tname : "value");
    pb_pusherror(L, "validation", rc == PB_RERR_MISSING ? "missing" : "bad_value",
                 lua_tostring(L, -2), lua_tostring(L, -1));
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "macro");
    lua_replace(L, -3);
    lua_pop(L, 1);
    return 2;
}

/* Reads render options {missing=, encode=} of the table at oi (0 = none). */
static void read_render_opts(lua_State *L, int oi, int optarg, pb_render_opts *ro)
{
    ro->missing = pb_optenum(L, oi, optarg, "missing", "empty", missing_names);
    ro->encode = pb_optenum(L, oi, optarg, "encode", "url", encode_names);
}

/* Looks the values of template lt (userdata at index ti) up in the table at
 * vi (0 = none) and returns them: in small when it has room for them. May
 * run Lua code (an __index) and raise. What the values need stays on the
 * stack: the caller restores the top once done with them. */
static pb_value *lookup_values(lua_State *L, ltemplate *lt, int ti, int vi, pb_value *small,
                               size_t nsmall)
{
    pb_template *t = lt->t;
    pb_value *vals = small;
    size_t i;

    if (t->nnames > 0x7fffffff) luaL_error(L, "template has too many macros to render");
    if (t->nnames > nsmall) {
        if (t->nnames > (size_t)-1 / sizeof *vals) pb_fail_nomem(L);
        vals = (pb_value *)pb_newuserdata(L, t->nnames * sizeof *vals, 0);
    }
    if (vi && t->nnames && !lua_getmetatable(L, vi)) {
        /* A plain table: its values stay alive in it while the strings
         * are used, and raw reads are all it takes. */
        pb_getuservalue(L, ti);
        for (i = 0; i < t->nnames; i++) {
            lua_rawgeti(L, -1, (int)(i + 1));
            lua_rawget(L, vi);
            pb_tovalue(L, -1, &vals[i]);
            lua_pop(L, 1);
        }
    } else if (vi && t->nnames) {
        /* With a metatable (__index may make values): looked-up values must
         * stay alive while their strings are used: on the stack when few
         * (with the usual room left above them for the caller), else in a
         * table (stacks are limited). */
        int on_stack = t->nnames <= 64 && lua_checkstack(L, (int)t->nnames + LUA_MINSTACK);
        int names, keep = 0;
        lua_pop(L, 1); /* the metatable */
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
    return vals;
}

/* Renders template lt (at ti) with values at vi (0 = none) and options at
 * oi (0 = none); pushes string or nil, err. */
static int render(lua_State *L, ltemplate *lt, int ti, int vi, int oi, int optarg)
{
    pb_render_opts ro;
    pb_render_err err;
    pb_value small[16], *vals;
    pb_scratch *sc;
    int rc;

    read_render_opts(L, oi, optarg, &ro);
    vals = lookup_values(L, lt, ti, vi, small, sizeof small / sizeof small[0]);
    /* The buffer is taken once the Lua code of the lookups has run: nothing
     * raises while it is in use. (It is found in use by a render entered
     * from a finalizer.) */
    sc = scratch_take(L, &lt->out);
    rc = pb_template_render(lt->t, vals, &ro, &sc->b, &err);
    if (rc == PB_OK) lua_pushlstring(L, pb_buf_str(&sc->b), sc->b.len);
    scratch_release(sc);
    if (rc == PB_OK) return 1;
    if (rc == PB_ENOMEM || rc == PB_ELIMIT) return pb_fail_nomem(L);
    return push_render_error(L, rc, lt->t->src + err.name_off, err.name_len,
                             rc == PB_RERR_BADTYPE ? vals[err.slot].s : NULL);
}

/* Values of a one-pass render: looked up in the table at vi as the
 * renderer meets each macro, the current one kept on the stack. */
typedef struct stream_ctx {
    lua_State *L;
    int vi;     /* 0 = no values */
    int pushed; /* a looked-up value is on top of the stack */
} stream_ctx;

static void stream_lookup(void *ud, const char *name, size_t len, pb_value *out)
{
    stream_ctx *c = (stream_ctx *)ud;
    lua_State *L = c->L;
    if (c->pushed) {
        lua_pop(L, 1);
        c->pushed = 0;
    }
    if (!c->vi) return;
    lua_pushlstring(L, name, len);
    lua_gettable(L, c->vi);
    c->pushed = 1;
    pb_tovalue(L, -1, out);
}

/* Renders code (not parsed into a template) with the values at vi (0 =
 * none) into out, in one pass. Returns PB_OK, PB_ENOMEM (for the caller to
 * raise once out is released), or pushes nil, err and returns 2. The stack
 * is otherwise left as it was. */
static int render_code_into(lua_State *L, const char *code, size_t len, int vi,
                            const pb_render_opts *ro, pb_buf *out)
{
    stream_ctx c;
    pb_render_err err;
    const char *tname = NULL;
    int rc;
    c.L = L;
    c.vi = vi;
    c.pushed = 0;
    rc = pb_render_stream(code, len, stream_lookup, &c, ro, out, &err);
    if (c.pushed) {
        if (rc == PB_RERR_BADTYPE) tname = luaL_typename(L, -1);
        lua_pop(L, 1);
    }
    if (rc == PB_OK) return PB_OK;
    if (rc == PB_ENOMEM || rc == PB_ELIMIT) return PB_ENOMEM;
    return push_render_error(L, rc, code + err.name_off, err.name_len, tname);
}

/* t:render(values, opts) -> string | nil, err */
static int l_template_render(lua_State *L)
{
    ltemplate *lt = check_template(L, 1);
    int vi = pb_opttable(L, 2) ? 2 : 0;
    int oi = pb_opttable(L, 3) ? 3 : 0;
    return render(L, lt, 1, vi, oi, 3);
}

/* render(code, values, opts) -> string | nil, err (one pass, no template) */
static int l_render(lua_State *L)
{
    int vi, oi, rc;
    size_t len;
    const char *code;
    pb_render_opts ro;
    pb_scratch *sc;
    if (pb_testudata(L, 1, PB_TEMPLATE_MT)) {
        vi = pb_opttable(L, 2) ? 2 : 0;
        oi = pb_opttable(L, 3) ? 3 : 0;
        return render(L, check_template(L, 1), 1, vi, oi, 3);
    }
    code = pb_checkstring(L, 1, &len);
    vi = pb_opttable(L, 2) ? 2 : 0;
    oi = pb_opttable(L, 3) ? 3 : 0;
    read_render_opts(L, oi, 3, &ro);
    sc = scratch_take(L, NULL);
    rc = render_code_into(L, code, len, vi, &ro, &sc->b);
    if (rc == PB_OK) lua_pushlstring(L, pb_buf_str(&sc->b), sc->b.len);
    scratch_release(sc);
    if (rc == PB_ENOMEM) return pb_fail_nomem(L);
    return rc == PB_OK ? 1 : rc;
}

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

static const luaL_Reg template_functions[] = {
    { "template", l_template },
    { "render", l_render },
    { NULL, NULL },
};

/* Registers the template type and its module functions (module table on top). */
static void open_template(lua_State *L)
{
    register_class(L, PB_TEMPLATE_MT, template_meta, template_methods);
    pb_setfuncs(L, template_functions);
    luaL_getmetatable(L, PB_TEMPLATE_MT);
    lua_setfield(L, -2, "template_mt");
}
