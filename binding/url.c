/* binding/url.c - percent-encoding and URL checks. */

/* encode(s) -> s percent-encoded (RFC 3986 unreserved kept) */
static int l_encode(lua_State *L)
{
    size_t len, elen;
    const char *s = pb_checkstring(L, 1, &len);
    char *out;
    elen = pb_url_encoded_len(s, len);
    if (elen == len) {
        lua_settop(L, 1);
        return 1;
    }
    out = (char *)pb_newuserdata(L, elen, 0); /* scratch, collected */
    pb_url_encode_into(out, s, len);
    lua_pushlstring(L, out, elen);
    return 1;
}

/* check_url(s [, allow_userinfo]) -> true | nil, reason   (a URL about to be requested) */
static int l_check_url(lua_State *L)
{
    size_t len;
    const char *s = pb_checkstring(L, 1, &len);
    const char *why = pb_check_request_url_ex(s, len, lua_toboolean(L, 2) ? PB_URL_ALLOW_USERINFO : 0);
    if (!why) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

/* A pb_alloc over one fixed block (a userdata the collector owns): it serves
 * the one buffer of pb_url_to_ascii, so nothing leaks if Lua raises. */
typedef struct pb_arena {
    char *mem;
    size_t cap;
} pb_arena;

static void *pb_arena_fn(void *ud, void *ptr, size_t osize, size_t nsize)
{
    pb_arena *ar = (pb_arena *)ud;
    (void)ptr;
    (void)osize;
    return nsize && nsize <= ar->cap ? ar->mem : NULL;
}

/* url_to_ascii(s [, allow_userinfo]) -> the URL as sent (s itself when it
 * already is) | nil, reason */
static int l_url_to_ascii(lua_State *L)
{
    size_t len;
    const char *s = pb_checkstring(L, 1, &len);
    unsigned flags = lua_toboolean(L, 2) ? PB_URL_ALLOW_USERINFO : 0;
    char why[160];
    pb_arena ar;
    pb_alloc al;
    pb_buf b;
    int rc;
    /* First without memory: most URLs already are what is sent. */
    ar.mem = NULL;
    ar.cap = 0;
    al.fn = pb_arena_fn;
    al.ud = &ar;
    pb_buf_init(&b, &al);
    rc = pb_url_to_ascii(s, len, flags, &b, why, sizeof why);
    if (rc == PB_ENOMEM) {
        /* 3 bytes for each byte outside the host, a converted host of at
         * most 320, and room for the buffer's doubling */
        if (len > ((size_t)-1 - 1024) / 8) return pb_fail_nomem(L);
        ar.cap = 2 * (3 * len + 384);
        ar.mem = (char *)pb_newuserdata(L, ar.cap, 0);
        pb_buf_init(&b, &al);
        rc = pb_url_to_ascii(s, len, flags, &b, why, sizeof why);
    }
    if (rc == 0) {
        lua_settop(L, 1);
        return 1;
    }
    if (rc == 1) {
        lua_pushlstring(L, b.data, b.len);
        return 1;
    }
    if (rc == PB_EINVAL) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        return 2;
    }
    return pb_fail_nomem(L);
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


static const luaL_Reg url_functions[] = {
    { "encode", l_encode },
    { "check_url", l_check_url },
    { "url_to_ascii", l_url_to_ascii },
    { "url_info", l_url_info },
    { NULL, NULL },
};

static void open_url(lua_State *L)
{
    pb_setfuncs(L, url_functions);
}
