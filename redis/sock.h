/* sock.h - the socket work of the Redis connection that needs no Lua and no
 * hiredis: waiting on a descriptor with a bound, finishing a non-blocking
 * connect, and a few random bytes for names that must not collide. */
#ifndef PB_REDIS_SOCK_H
#define PB_REDIS_SOCK_H

#include <stddef.h>

#define PB_SOCK_READ 1
#define PB_SOCK_WRITE 2
#define PB_SOCK_HUP 4

/* Waits at most timeout seconds (0 = just look, never blocks; capped at a
 * day) until fd is readable and/or writable as `want` asks. Returns the
 * PB_SOCK_* bits that are ready (0 when the time ran out or a signal came),
 * or -1 with errno set. */
int pb_sock_wait(int fd, int want, double timeout);

/* The outcome of a non-blocking connect on fd, once it is writable:
 * 0 when connected, else the errno value that made it fail. */
int pb_sock_connect_error(int fd);

/* Fills out[0..n) with bytes from the system's random source. 0 or -1. */
int pb_sock_random(unsigned char *out, size_t n);

#endif
