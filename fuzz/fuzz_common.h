/* fuzz_common.h - what the harnesses share: FAIL() (print and abort, so
 * libFuzzer keeps the input) and an allocator that checks every osize and
 * can fail the Nth request. Define FUZZ_NAME before including. */
#ifndef PB_FUZZ_COMMON_H
#define PB_FUZZ_COMMON_H

#include <stdio.h>
#include <stdlib.h>

#define FAIL(...)                                   \
    do {                                            \
        fprintf(stderr, FUZZ_NAME ": " __VA_ARGS__); \
        fputc('\n', stderr);                        \
        abort();                                    \
    } while (0)

typedef struct track {
    long n, fail_at; /* fail_at 0 = never */
    int failed;
} track;

/* A pb_alloc function (ud = a track) that keeps each block's size in a
 * header and aborts when a caller passes another osize. */
static inline void *track_fn(void *ud, void *ptr, size_t osize, size_t nsize)
{
    track *tr = (track *)ud;
    size_t *h = ptr ? (size_t *)ptr - 2 : NULL;
    if (h && h[0] != osize) FAIL("osize %zu for a block of %zu bytes", osize, h[0]);
    if (nsize == 0) {
        free(h);
        return NULL;
    }
    tr->n++;
    if (tr->fail_at && tr->n == tr->fail_at) {
        tr->failed = 1;
        return NULL;
    }
    h = (size_t *)realloc(h, nsize + 2 * sizeof(size_t));
    if (!h) return NULL;
    h[0] = nsize;
    return h + 2;
}

#endif
