/* binding/json.c - json_encode(): the JSON postback writes itself (request
 * bodies, spool and journal records, export lines).
 *
 * Unlike lua-cjson 2.1 (14 significant digits), numbers are exact: integers
 * in plain digits (integral floats too, up to 2^53), other floats in the
 * shortest form that reads back the same (core/json.c). Tables follow
 * lua-cjson's rules: keys that are all positive integers make an array (holes
 * written as null, an excessively sparse one refused), any other keys make an
 * object (number keys written as strings), an empty table is {}. The null
 * sentinel of lua-cjson (a NULL light userdata) is null. Functions, userdata,
 * threads, NaN and infinities are refused with the path of the value. */

#define PB_JSON_MAX_DEPTH 64 /* tables nested deeper are refused (cycles too) */

typedef struct jlevel {
    int key;     /* object: stack index of the current key; array: 0 */
    long long i; /* array: the current index */
} jlevel;

typedef struct jenc {
    lua_State *L;
    pb_buf *out;
    int depth;
    jlevel lv[PB_JSON_MAX_DEPTH + 1];
    char msg[256]; /* the failure, once there is one */
} jenc;

/* Appends to msg the path of the value being written ("values.x[2]"). */
static void json_path(jenc *j, size_t *used)
{
    int k;
    for (k = 1; k <= j->depth && *used < sizeof j->msg - 1; k++) {
        size_t room = sizeof j->msg - *used;
        char *p = j->msg + *used;
        int n;
        const jlevel *l = &j->lv[k];
        if (!l->key) {
            n = snprintf(p, room, "[%lld]", l->i);
        } else if (lua_type(j->L, l->key) == LUA_TSTRING) {
            size_t len, i;
            const char *s = lua_tolstring(j->L, l->key, &len);
            int plain = len > 0 && len <= 64 && !(s[0] >= '0' && s[0] <= '9');
            for (i = 0; plain && i < len; i++)
                plain = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
                        (s[i] >= '0' && s[i] <= '9') || s[i] == '_';
            if (plain)
                n = snprintf(p, room, "%s%.*s", k > 1 ? "." : "", (int)len, s);
            else
                n = snprintf(p, room, "[\"%.*s\"]", len > 32 ? 32 : (int)len, s);
        } else {
            char num[PB_JSON_NUMBER_MAX];
            lua_Number d = lua_tonumber(j->L, l->key);
#if LUA_VERSION_NUM >= 503
            if (lua_isinteger(j->L, l->key))
                pb_json_format_int(num, (long long)lua_tointeger(j->L, l->key));
            else
#endif
                if (!pb_json_format_double(num, (double)d)) strcpy(num, "?");
            n = snprintf(p, room, "[%s]", num);
        }
        if (n < 0) break;
        *used += (size_t)n < room ? (size_t)n : room - 1;
    }
}

/* Records a failure: "what", plus " at PATH" when inside a table. */
static int json_fail(jenc *j, const char *what)
{
    size_t used;
    int n = snprintf(j->msg, sizeof j->msg, "cannot encode %s", what);
    used = n < 0 ? 0 : (size_t)n < sizeof j->msg ? (size_t)n : sizeof j->msg - 1;
    if (j->depth > 0 && used + 4 < sizeof j->msg) {
        memcpy(j->msg + used, " at ", 5);
        used += 4;
        json_path(j, &used);
    }
    return -1;
}

/* A buffer result: ENOMEM/ELIMIT raise at the top, after the buffer is released. */
static int json_rc(jenc *j, int rc)
{
    if (rc == PB_OK) return 0;
    snprintf(j->msg, sizeof j->msg, "%s", rc == PB_ELIMIT ? "too long" : "not enough memory");
    return -2;
}

static int json_value(jenc *j, int idx);

/* The array length of the table at idx, as lua-cjson decides it: > 0 for an
 * array, 0 for an empty table, -1 for an object, -2 for an excessively
 * sparse array (refused). */
static long long json_array_length(lua_State *L, int idx)
{
    long long max = 0, items = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TNUMBER) {
#if LUA_VERSION_NUM >= 503
            if (lua_isinteger(L, -1)) {
                lua_Integer k = lua_tointeger(L, -1);
                if (k >= 1) {
                    if ((long long)k > max) max = (long long)k;
                    items++;
                    continue;
                }
            }
#else
            lua_Number k = lua_tonumber(L, -1);
            if (k >= 1 && k == floor(k) && k < 9e18) {
                if ((long long)k > max) max = (long long)k;
                items++;
                continue;
            }
#endif
        }
        lua_pop(L, 1);
        return -1;
    }
    /* lua-cjson's defaults: sparse past a ratio of 2 and above 10 elements. */
    if (max > items * 2 && max > 10) return -2;
    return max;
}

/* Writes a number key as a JSON string. */
static int json_number_key(jenc *j, int idx)
{
    char num[PB_JSON_NUMBER_MAX + 2];
    size_t n;
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(j->L, idx)) {
        n = pb_json_format_int(num + 1, (long long)lua_tointeger(j->L, idx));
    } else
#endif
    {
        n = pb_json_format_double(num + 1, (double)lua_tonumber(j->L, idx));
        if (!n) return json_fail(j, "a table key that is not a finite number");
    }
    num[0] = '"';
    num[n + 1] = '"';
    return json_rc(j, pb_buf_append(j->out, num, n + 2));
}

static int json_table(jenc *j, int idx)
{
    lua_State *L = j->L;
    long long n, i;
    int rc;
    if (j->depth >= PB_JSON_MAX_DEPTH) {
        char what[64];
        snprintf(what, sizeof what, "tables nested deeper than %d (a cycle?)", PB_JSON_MAX_DEPTH);
        return json_fail(j, what);
    }
    if (!lua_checkstack(L, 4)) return json_fail(j, "tables nested this deep (stack full)");
    n = json_array_length(L, idx);
    if (n == -2) return json_fail(j, "an excessively sparse array");
    if (n == 0) return json_rc(j, pb_buf_append(j->out, "{}", 2));
    j->depth++;
    if (n > 0) {
        j->lv[j->depth].key = 0;
        if ((rc = json_rc(j, pb_buf_putc(j->out, '['))) != 0) return rc;
        for (i = 1; i <= n; i++) {
            j->lv[j->depth].i = i;
            if (i > 1 && (rc = json_rc(j, pb_buf_putc(j->out, ','))) != 0) return rc;
#if LUA_VERSION_NUM >= 503
            lua_rawgeti(L, idx, (lua_Integer)i);
#else
            lua_rawgeti(L, idx, (int)i);
#endif
            if ((rc = json_value(j, lua_gettop(L))) != 0) return rc;
            lua_pop(L, 1);
        }
        if ((rc = json_rc(j, pb_buf_putc(j->out, ']'))) != 0) return rc;
    } else {
        int first = 1;
        if ((rc = json_rc(j, pb_buf_putc(j->out, '{'))) != 0) return rc;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            int key = lua_gettop(L) - 1;
            j->lv[j->depth].key = key;
            if (!first && (rc = json_rc(j, pb_buf_putc(j->out, ','))) != 0) return rc;
            first = 0;
            switch (lua_type(L, key)) {
            case LUA_TSTRING: {
                size_t len;
                const char *s = lua_tolstring(L, key, &len);
                rc = json_rc(j, pb_json_string(j->out, s, len));
                break;
            }
            case LUA_TNUMBER:
                rc = json_number_key(j, key);
                break;
            default: {
                char what[64];
                j->depth--; /* the path names the table, not the key */
                snprintf(what, sizeof what, "a table key of type %s", luaL_typename(L, key));
                return json_fail(j, what);
            }
            }
            if (rc != 0) return rc;
            if ((rc = json_rc(j, pb_buf_putc(j->out, ':'))) != 0) return rc;
            if ((rc = json_value(j, key + 1)) != 0) return rc;
            lua_pop(L, 1);
        }
        if ((rc = json_rc(j, pb_buf_putc(j->out, '}'))) != 0) return rc;
    }
    j->depth--;
    return 0;
}

static int json_value(jenc *j, int idx)
{
    lua_State *L = j->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return json_rc(j, pb_buf_append(j->out, "null", 4));
    case LUA_TBOOLEAN:
        return lua_toboolean(L, idx) ? json_rc(j, pb_buf_append(j->out, "true", 4))
                                     : json_rc(j, pb_buf_append(j->out, "false", 5));
    case LUA_TNUMBER: {
        int rc;
#if LUA_VERSION_NUM >= 503
        if (lua_isinteger(L, idx)) return json_rc(j, pb_json_int(j->out, (long long)lua_tointeger(L, idx)));
#endif
        rc = pb_json_double(j->out, (double)lua_tonumber(L, idx));
        if (rc == PB_JSON_NONFINITE) {
            lua_Number d = lua_tonumber(L, idx);
            return json_fail(j, d != d ? "NaN" : "an infinite number");
        }
        return json_rc(j, rc);
    }
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        return json_rc(j, pb_json_string(j->out, s, len));
    }
    case LUA_TTABLE:
        return json_table(j, idx);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) return json_rc(j, pb_buf_append(j->out, "null", 4));
        return json_fail(j, "a light userdata");
    default: {
        char what[64];
        snprintf(what, sizeof what, "a %s", luaL_typename(L, idx));
        return json_fail(j, what);
    }
    }
}

/* json_encode(v) -> text | nil, message */
static int l_json_encode(lua_State *L)
{
    pb_scratch *sc;
    jenc j;
    int rc, top;
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    /* its own buffer (upvalue 1), or the state's when entered again from a
     * finalizer */
    sc = scratch_take(L, (pb_scratch *)lua_touserdata(L, lua_upvalueindex(1)));
    top = lua_gettop(L);
    j.L = L;
    j.depth = 0;
    j.msg[0] = '\0';
    j.out = &sc->b;
    rc = json_value(&j, 1);
    lua_settop(L, top);
    /* The push may run a finalizer (5.1 collects before copying): the buffer
     * stays busy until the copy is made. */
    if (rc == 0) lua_pushlstring(L, pb_buf_str(j.out), j.out->len);
    scratch_release(sc);
    if (rc == 0) return 1;
    if (rc == -2) return luaL_error(L, "json_encode: %s", j.msg);
    lua_pushnil(L);
    lua_pushstring(L, j.msg);
    return 2;
}

static void open_json(lua_State *L)
{
    scratch_new(L);
    lua_pushcclosure(L, l_json_encode, 1);
    lua_setfield(L, -2, "json_encode");
}
