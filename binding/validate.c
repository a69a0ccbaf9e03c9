/* binding/validate.c - record validation and the conversion_protocol rule. */

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

/* validate(rec, partial, protocol, max_code_len, allow_unknown_macros, allow_userinfo)
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
    o.allow_userinfo = lua_toboolean(L, 6);
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

static const luaL_Reg validate_functions[] = {
    { "validate", l_validate },
    { "allowed_types", l_allowed_types },
    { NULL, NULL },
};

static void open_validate(lua_State *L)
{
    int i;
    pb_setfuncs(L, validate_functions);
    lua_createtable(L, PB_NMACROS, 0);
    for (i = 0; i < PB_NMACROS; i++) {
        lua_pushstring(L, pb_macro_names[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "MACROS");
}
