/* lua_redis.c - the postback.redis Lua module: a non-blocking Redis
 * connection on hiredis, for the shared queue and its workers.
 *
 * Nothing here ever waits unless asked to with a bound: connect() starts a
 * non-blocking connect, append() only formats a command into the output
 * buffer, write() and read() move what the socket takes or has without
 * blocking, reply() hands out the replies already parsed, and wait() is the
 * one call that sleeps, for at most the time it is given. The Lua layer
 * (postback.queue_conn) pipelines commands and matches replies in order.
 *
 * Builds for Lua 5.1 (and LuaJIT), 5.2, 5.3 and 5.4 from one source. No
 * mutable global state. hiredis 0.14 aborts on its own allocation failures;
 * the allocations of this file are checked. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <lua.h>

#include "redis/sock.h"

#define PB_CONN_MT "postback.redis.conn"

#if LUA_VERSION_NUM < 502
static void pr_setfuncs(lua_State *L, const luaL_Reg *l)
{
    for (; l->name; l++) {
        lua_pushcfunction(L, l->func);
        lua_setfield(L, -2, l->name);
    }
}
#define pr_newlib(L, l) (lua_newtable(L), pr_setfuncs(L, l))
#define pr_rawlen(L, i) lua_objlen(L, i)
#else
#define pr_setfuncs(L, l) luaL_setfuncs(L, l, 0)
#define pr_newlib(L, l) luaL_newlib(L, l)
#define pr_rawlen(L, i) lua_rawlen(L, i)
#endif

#if LUA_VERSION_NUM >= 504
#define pr_newuserdata(L, n) lua_newuserdatauv(L, n, 0)
#else
#define pr_newuserdata(L, n) lua_newuserdata(L, n)
#endif

typedef struct conn {
    redisContext *ctx;
    redisReply *held;  /* a reply being converted: freed if conversion raised */
    int connecting;    /* the non-blocking connect has not been confirmed yet */
} conn;

static conn *check_conn(lua_State *L, int i)
{
    return (conn *)luaL_checkudata(L, i, PB_CONN_MT);
}

/* The open context of argument 1; raises once the connection is closed. */
static redisContext *check_ctx(lua_State *L)
{
    conn *c = check_conn(L, 1);
    if (!c->ctx) luaL_argerror(L, 1, "connection is closed");
    return c->ctx;
}

static void release(conn *c)
{
    if (c->held) {
        freeReplyObject(c->held);
        c->held = NULL;
    }
    if (c->ctx) {
        redisFree(c->ctx);
        c->ctx = NULL;
    }
}

static int push_fail(lua_State *L, const char *msg)
{
    lua_pushnil(L);
    lua_pushstring(L, msg);
    return 2;
}

/* The context's error text, or fallback when it has none. */
static const char *ctx_error(const redisContext *ctx, const char *fallback)
{
    return (ctx && ctx->err && ctx->errstr[0]) ? ctx->errstr : fallback;
}

/* Wraps a fresh context (or its failure) into a connection userdata. */
static int finish_connect(lua_State *L, conn *c, redisContext *ctx)
{
    if (!ctx) return push_fail(L, "cannot allocate a Redis connection");
    c->ctx = ctx;
    if (ctx->err) {
        lua_pushnil(L);
        lua_pushstring(L, ctx_error(ctx, "cannot connect"));
        release(c);
        return 2;
    }
    c->connecting = 1;
    return 1; /* the userdata, on top */
}

static conn *new_conn(lua_State *L)
{
    conn *c = (conn *)pr_newuserdata(L, sizeof *c);
    c->ctx = NULL;
    c->held = NULL;
    c->connecting = 0;
    luaL_getmetatable(L, PB_CONN_MT);
    lua_setmetatable(L, -2);
    return c;
}

/* connect(host, port) -> conn | nil, err. Starts a non-blocking TCP
 * connect; established() tells when it is done. host should be an address
 * (a name is resolved by the system's resolver, which may wait). */
static int l_connect(lua_State *L)
{
    const char *host = luaL_checkstring(L, 1);
    lua_Integer port = luaL_checkinteger(L, 2);
    conn *c;
    if (port < 1 || port > 65535) return luaL_argerror(L, 2, "port out of range");
    c = new_conn(L);
    if (finish_connect(L, c, redisConnectNonBlock(host, (int)port)) != 1) return 2;
    redisEnableKeepAlive(c->ctx);
    return 1;
}

/* connect_unix(path) -> conn | nil, err. */
static int l_connect_unix(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    conn *c = new_conn(L);
    return finish_connect(L, c, redisConnectUnixNonBlock(path));
}

/* conn:established([timeout]) -> true | false (still connecting) | nil, err */
static int l_established(lua_State *L)
{
    conn *c = check_conn(L, 1);
    double timeout = luaL_optnumber(L, 2, 0);
    int ready, err;
    if (!c->ctx) return push_fail(L, "connection is closed");
    if (!c->connecting) {
        lua_pushboolean(L, 1);
        return 1;
    }
    ready = pb_sock_wait(c->ctx->fd, PB_SOCK_WRITE, timeout);
    if (ready < 0) return push_fail(L, strerror(errno));
    if (!(ready & (PB_SOCK_WRITE | PB_SOCK_HUP))) {
        lua_pushboolean(L, 0);
        return 1;
    }
    err = pb_sock_connect_error(c->ctx->fd);
    if (err) return push_fail(L, strerror(err));
    c->connecting = 0;
    lua_pushboolean(L, 1);
    return 1;
}

/* One command argument as bytes: strings as they are, integers in decimal,
 * other numbers with 17 significant digits. Anything else raises. */
static const char *arg_bytes(lua_State *L, int idx, int argn, size_t *len, char *scratch, size_t cap)
{
    int t = lua_type(L, idx);
    if (t == LUA_TSTRING) return lua_tolstring(L, idx, len);
    if (t == LUA_TNUMBER) {
        double d = (double)lua_tonumber(L, idx);
        int n;
#if LUA_VERSION_NUM >= 503
        if (lua_isinteger(L, idx))
            n = snprintf(scratch, cap, "%lld", (long long)lua_tointeger(L, idx));
        else
#endif
        if (d != d || d == HUGE_VAL || d == -HUGE_VAL) {
            luaL_argerror(L, argn, "command arguments must be finite numbers");
            return NULL;
        } else if (d == floor(d) && fabs(d) < 9007199254740992.0) {
            n = snprintf(scratch, cap, "%.0f", d);
        } else {
            n = snprintf(scratch, cap, "%.17g", d);
        }
        if (n < 0 || (size_t)n >= cap) luaL_argerror(L, argn, "number cannot be formatted");
        lua_pushlstring(L, scratch, (size_t)n);
        lua_replace(L, idx);
        return lua_tolstring(L, idx, len);
    }
    luaL_argerror(L, argn, lua_pushfstring(L, "command arguments must be strings or numbers, got %s",
                                           luaL_typename(L, idx)));
    return NULL;
}

/* conn:append(arg, ...) or conn:append({arg, ...}) -> true | nil, err.
 * Formats one command into the output buffer; nothing is sent yet. */
static int l_append(lua_State *L)
{
    redisContext *ctx = check_ctx(L);
    int top = lua_gettop(L), argc, i, base, argn;
    const char **argv;
    size_t *lens;
    char num[64];
    if (top == 2 && lua_type(L, 2) == LUA_TTABLE) {
        size_t n = pr_rawlen(L, 2);
        if (n < 1 || n > 65536) return luaL_argerror(L, 2, "a command of 1 to 65536 arguments expected");
        argc = (int)n;
        luaL_checkstack(L, argc + 4, "too many command arguments");
        for (i = 1; i <= argc; i++) lua_rawgeti(L, 2, i);
        base = 3;
        argn = 2;
    } else {
        argc = top - 1;
        if (argc < 1) return luaL_argerror(L, 2, "a command expected");
        base = 2;
        argn = 0;
    }
    /* Userdata scratch arrays: collected even when a bad argument raises. */
    argv = (const char **)pr_newuserdata(L, sizeof *argv * (size_t)argc);
    lens = (size_t *)pr_newuserdata(L, sizeof *lens * (size_t)argc);
    for (i = 0; i < argc; i++)
        argv[i] = arg_bytes(L, base + i, argn ? argn : base + i, &lens[i], num, sizeof num);
    if (redisAppendCommandArgv(ctx, argc, argv, lens) != REDIS_OK)
        return push_fail(L, ctx_error(ctx, "out of memory"));
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:write() -> true (the output buffer is empty) | false (the socket
 * takes no more now) | nil, err. Never blocks. */
static int l_write(lua_State *L)
{
    conn *c = check_conn(L, 1);
    redisContext *ctx = c->ctx;
    int done = 0;
    if (!ctx) return push_fail(L, "connection is closed");
    if (c->connecting) {
        lua_pushboolean(L, 0);
        return 1;
    }
    for (;;) {
        size_t before = ctx->obuf ? sdslen(ctx->obuf) : 0;
        if (before == 0) {
            done = 1;
            break;
        }
        if (redisBufferWrite(ctx, &done) != REDIS_OK) return push_fail(L, ctx_error(ctx, "write failed"));
        if (done || sdslen(ctx->obuf) == before) break; /* all out, or would block */
    }
    lua_pushboolean(L, done);
    return 1;
}

/* conn:pending() -> bytes waiting in the output buffer */
static int l_pending(lua_State *L)
{
    conn *c = check_conn(L, 1);
    lua_pushinteger(L, (c->ctx && c->ctx->obuf) ? (lua_Integer)sdslen(c->ctx->obuf) : 0);
    return 1;
}

/* conn:read() -> true | nil, err (the server closed the connection, a
 * socket error). Takes what the socket has, never blocks. */
static int l_read(lua_State *L)
{
    conn *c = check_conn(L, 1);
    if (!c->ctx) return push_fail(L, "connection is closed");
    if (c->connecting) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (redisBufferRead(c->ctx) != REDIS_OK) return push_fail(L, ctx_error(c->ctx, "read failed"));
    lua_pushboolean(L, 1);
    return 1;
}

/* Pushes a reply as a Lua value. Top level: an error reply is not pushed
 * (the caller reports it). Nested: nil becomes false, an error {err = msg}. */
static void push_reply(lua_State *L, const redisReply *r, int depth)
{
    size_t i;
    luaL_checkstack(L, 4, "Redis reply nested too deeply");
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, r->str ? r->str : "", r->str ? r->len : 0);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushinteger(L, (lua_Integer)r->integer);
        break;
    case REDIS_REPLY_NIL:
        if (depth > 0) lua_pushboolean(L, 0);
        else lua_pushnil(L);
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(L, r->elements > 0x7fffffff ? 0x7fffffff : (int)r->elements, 0);
        for (i = 0; i < r->elements; i++) {
            push_reply(L, r->element[i], depth + 1);
            lua_rawseti(L, -2, (int)(i + 1));
        }
        break;
    case REDIS_REPLY_ERROR:
        lua_createtable(L, 0, 1);
        lua_pushlstring(L, r->str ? r->str : "", r->str ? r->len : 0);
        lua_setfield(L, -2, "err");
        break;
    default:
        lua_pushboolean(L, 0);
        break;
    }
}

/* conn:reply() -> true, value | true, nil, error_message (an error reply)
 * | false (no whole reply yet) | nil, err (a protocol error). */
static int l_reply(lua_State *L)
{
    conn *c = check_conn(L, 1);
    void *raw = NULL;
    redisReply *r;
    if (!c->ctx) return push_fail(L, "connection is closed");
    if (c->held) { /* a previous conversion raised: drop what it held */
        freeReplyObject(c->held);
        c->held = NULL;
    }
    if (redisGetReplyFromReader(c->ctx, &raw) != REDIS_OK) return push_fail(L, ctx_error(c->ctx, "protocol error"));
    if (!raw) {
        lua_pushboolean(L, 0);
        return 1;
    }
    r = (redisReply *)raw;
    c->held = r;
    lua_pushboolean(L, 1);
    if (r->type == REDIS_REPLY_ERROR) {
        lua_pushnil(L);
        lua_pushlstring(L, r->str ? r->str : "", r->str ? r->len : 0);
    } else {
        push_reply(L, r, 0);
        lua_pushnil(L);
    }
    c->held = NULL;
    freeReplyObject(r);
    return 3;
}

/* conn:wait(read, write, timeout) -> readable, writable | nil, err.
 * The one call that sleeps: at most timeout seconds (0 = just look). */
static int l_wait(lua_State *L)
{
    redisContext *ctx = check_ctx(L);
    int want = (lua_toboolean(L, 2) ? PB_SOCK_READ : 0) | (lua_toboolean(L, 3) ? PB_SOCK_WRITE : 0);
    double timeout = luaL_optnumber(L, 4, 0);
    int ready = pb_sock_wait(ctx->fd, want, timeout);
    if (ready < 0) return push_fail(L, strerror(errno));
    lua_pushboolean(L, (ready & PB_SOCK_READ) != 0);
    lua_pushboolean(L, (ready & PB_SOCK_WRITE) != 0);
    return 2;
}

/* conn:close(): safe twice; also __gc and __close */
static int l_close(lua_State *L)
{
    release(check_conn(L, 1));
    return 0;
}

static int l_tostring(lua_State *L)
{
    conn *c = check_conn(L, 1);
    if (c->ctx) lua_pushfstring(L, PB_CONN_MT " (fd %d)", c->ctx->fd);
    else lua_pushstring(L, PB_CONN_MT " (closed)");
    return 1;
}

/* random_hex(nbytes) -> 2 * nbytes hex digits from the system's random
 * source, or nil, err */
static int l_random_hex(lua_State *L)
{
    static const char digits[] = "0123456789abcdef";
    unsigned char raw[64];
    char hex[2 * sizeof raw];
    lua_Integer n = luaL_checkinteger(L, 1);
    size_t i;
    if (n < 1 || n > (lua_Integer)sizeof raw) return luaL_argerror(L, 1, "1 to 64 bytes");
    if (pb_sock_random(raw, (size_t)n) != 0) return push_fail(L, strerror(errno));
    for (i = 0; i < (size_t)n; i++) {
        hex[2 * i] = digits[raw[i] >> 4];
        hex[2 * i + 1] = digits[raw[i] & 15];
    }
    lua_pushlstring(L, hex, 2 * (size_t)n);
    return 1;
}

/* identity() -> host name, process id: what a worker calls itself */
static int l_identity(lua_State *L)
{
    char host[256];
    if (gethostname(host, sizeof host) != 0) strcpy(host, "localhost");
    host[sizeof host - 1] = '\0';
    lua_pushstring(L, host);
    lua_pushinteger(L, (lua_Integer)getpid());
    return 2;
}

static const luaL_Reg conn_meta[] = {
    { "__gc", l_close },
#if LUA_VERSION_NUM >= 504
    { "__close", l_close },
#endif
    { "__tostring", l_tostring },
    { NULL, NULL },
};

static const luaL_Reg conn_methods[] = {
    { "established", l_established },
    { "append", l_append },
    { "write", l_write },
    { "pending", l_pending },
    { "read", l_read },
    { "reply", l_reply },
    { "wait", l_wait },
    { "close", l_close },
    { NULL, NULL },
};

static const luaL_Reg functions[] = {
    { "connect", l_connect },
    { "connect_unix", l_connect_unix },
    { "random_hex", l_random_hex },
    { "identity", l_identity },
    { NULL, NULL },
};

#if defined(_WIN32)
#define PB_EXPORT __declspec(dllexport)
#else
#define PB_EXPORT __attribute__((visibility("default")))
#endif

PB_EXPORT int luaopen_postback_redis(lua_State *L);

PB_EXPORT int luaopen_postback_redis(lua_State *L)
{
    if (luaL_newmetatable(L, PB_CONN_MT)) {
        pr_setfuncs(L, conn_meta);
        lua_newtable(L);
        pr_setfuncs(L, conn_methods);
        lua_setfield(L, -2, "__index");
        lua_pushstring(L, PB_CONN_MT);
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    pr_newlib(L, functions);
    lua_pushfstring(L, "hiredis %d.%d.%d", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
    lua_setfield(L, -2, "HIREDIS_VERSION");
    return 1;
}
