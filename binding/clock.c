/* binding/clock.c - monotonic and wall clocks, sleep. */

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

static const luaL_Reg clock_functions[] = {
    { "now", l_now },
    { "time", l_time },
    { "sleep", l_sleep },
    { NULL, NULL },
};

static void open_clock(lua_State *L)
{
    pb_setfuncs(L, clock_functions);
}
