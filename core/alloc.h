/* alloc.h - the allocator every core object allocates through.
 *
 * The signature is the one of lua_Alloc (without including lua.h), so an
 * embedder can hand a Lua state's allocator down. The binding passes NULL
 * (malloc): core objects are owned by userdata and freed by their __gc, and
 * libcurl allocates with malloc anyway. The C tests and the fuzzers pass a
 * counting allocator that fails the Nth request.
 * A function that returns NULL for nsize > 0 reports an allocation failure,
 * and every caller in core/ handles it. */
#ifndef PB_ALLOC_H
#define PB_ALLOC_H

#include <stddef.h>

typedef void *(*pb_alloc_fn)(void *ud, void *ptr, size_t osize, size_t nsize);

typedef struct pb_alloc {
    pb_alloc_fn fn;
    void *ud;
} pb_alloc;

/* The malloc/realloc/free allocator, used when a pb_alloc pointer is NULL. */
const pb_alloc *pb_alloc_default(void);

/* Thin wrappers: a NULL allocator means pb_alloc_default(). */
void *pb_malloc(const pb_alloc *a, size_t n);
void *pb_realloc(const pb_alloc *a, void *p, size_t osize, size_t nsize);
void pb_free(const pb_alloc *a, void *p, size_t osize);

#endif
