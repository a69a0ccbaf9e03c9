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


static const luaL_Reg url_functions[] = {
    { "encode", l_encode },
    { "check_url", l_check_url },
    { "url_info", l_url_info },
    { NULL, NULL },
};

static void open_url(lua_State *L)
{
    pb_setfuncs(L, url_functions);
}
