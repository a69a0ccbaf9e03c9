/* A game server's main loop with postback embedded.
 *
 * Embeds Lua 5.4, links postback's C core statically and registers it with
 * luaL_requiref, then runs a 60 Hz tick loop. Each tick calls the script's
 * on_tick(frame) (the game logic, which fires conversions through a
 * dispatcher) and then the script's poll() (dispatcher:poll(0)), timing both
 * calls. It never sleeps inside the library: the loop sleeps until the next
 * frame itself.
 *
 *   game_server SCRIPT [RECEIVER_URL] [FRAMES]
 *
 * (with POSTBACK_ALLOW_PRIVATE=1 in the environment when the receiver is on
 * loopback or a private network: game.lua refuses those otherwise)
 *
 * Prints one line per second of play and a summary:
 *   frames=N max_tick_us=N max_poll_us=N p99_poll_us=N over_1ms=N max_cpu_us=N
 * (wall-clock microseconds of the library's calls in a frame, and the most
 * CPU time they used in one frame: wall time also counts the moments the
 * machine ran something else) and exits 0 when the script's on_finish()
 * returns true. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int luaopen_postback_core(lua_State *L);

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double t)
{
    double d = t - now();
    struct timespec ts;
    if (d <= 0) return;
    ts.tv_sec = (time_t)d;
    ts.tv_nsec = (long)((d - (double)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
}

/* Calls global function name with the integer argument; returns seconds. */
static double timed_call(lua_State *L, const char *name, long arg, int nargs, int *failed)
{
    double t0;
    lua_getglobal(L, name);
    if (nargs) lua_pushinteger(L, arg);
    t0 = now();
    if (lua_pcall(L, nargs, 0, 0) != LUA_OK) {
        fprintf(stderr, "%s: %s\n", name, lua_tostring(L, -1));
        lua_pop(L, 1);
        *failed = 1;
    }
    return now() - t0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const double frame = 1.0 / 60.0;
    long frames, f, over = 0;
    double next, max_tick = 0, max_poll = 0, max_cpu = 0, *polls;
    int failed = 0, ok;
    lua_State *L;

    if (argc < 2) {
        fprintf(stderr, "usage: %s SCRIPT [RECEIVER_URL] [FRAMES]\n", argv[0]);
        return 2;
    }
    frames = argc > 3 ? atol(argv[3]) : 600;
    if (frames < 1) frames = 1;
    polls = calloc((size_t)frames, sizeof *polls);
    if (!polls) return 1;

    L = luaL_newstate();
    if (!L) return 1;
    luaL_openlibs(L);
    /* The C core is part of this binary: register it under its module name. */
    luaL_requiref(L, "postback.core", luaopen_postback_core, 0);
    lua_pop(L, 1);
    lua_pushstring(L, argc > 2 ? argv[2] : "");
    lua_setglobal(L, "RECEIVER");
    if (luaL_dofile(L, argv[1]) != LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        lua_close(L);
        free(polls);
        return 1;
    }

    next = now();
    for (f = 1; f <= frames && !failed; f++) {
        double c0 = cpu_now();
        double tick = timed_call(L, "on_tick", f, 1, &failed);
        double poll = timed_call(L, "poll", 0, 0, &failed);
        double cpu = cpu_now() - c0;
        if (cpu > max_cpu) max_cpu = cpu;
        polls[f - 1] = poll;
        if (tick + poll > max_tick) max_tick = tick + poll;
        if (poll > max_poll) max_poll = poll;
        if (tick + poll > 0.001) over++;
        if (f % 60 == 0) {
            lua_getglobal(L, "status");
            if (lua_pcall(L, 0, 1, 0) == LUA_OK) printf("frame %ld: %s\n", f, lua_tostring(L, -1));
            lua_pop(L, 1);
            fflush(stdout);
        }
        next += frame;
        sleep_until(next);
    }
    f--;
    qsort(polls, (size_t)f, sizeof *polls, cmp_double);
    printf("frames=%ld max_tick_us=%.0f max_poll_us=%.0f p99_poll_us=%.0f over_1ms=%ld "
           "max_cpu_us=%.0f\n",
           f, max_tick * 1e6, max_poll * 1e6, polls[f > 0 ? (size_t)((double)f * 0.99) : 0] * 1e6,
           over, max_cpu * 1e6);

    lua_getglobal(L, "on_finish");
    ok = lua_pcall(L, 0, 1, 0) == LUA_OK && lua_toboolean(L, -1);
    if (!ok && lua_type(L, -1) == LUA_TSTRING) fprintf(stderr, "%s\n", lua_tostring(L, -1));
    lua_close(L);
    free(polls);
    return (ok && !failed) ? 0 : 1;
}
