/* buf.c - growable byte buffer and the default allocator. */
#include "buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *default_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    (void)osize;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    return realloc(ptr, nsize);
}

static const pb_alloc default_allocator = { default_alloc, NULL };

const pb_alloc *pb_alloc_default(void)
{
    return &default_allocator;
}

void *pb_malloc(const pb_alloc *a, size_t n)
{
    if (!a) a = &default_allocator;
    return n ? a->fn(a->ud, NULL, 0, n) : NULL;
}

void *pb_realloc(const pb_alloc *a, void *p, size_t osize, size_t nsize)
{
    if (!a) a = &default_allocator;
    return a->fn(a->ud, p, osize, nsize);
}

void pb_free(const pb_alloc *a, void *p, size_t osize)
{
    if (!p) return;
    if (!a) a = &default_allocator;
    a->fn(a->ud, p, osize, 0);
}

void pb_buf_init(pb_buf *b, const pb_alloc *a)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->limit = 0;
    b->alloc = a;
}

int pb_buf_reserve(pb_buf *b, size_t extra)
{
    size_t need, cap;
    char *p;
    if (extra > (size_t)-1 - b->len - 1) return PB_ENOMEM;
    need = b->len + extra + 1;
    if (b->limit && need - 1 > b->limit) return PB_ELIMIT;
    if (need <= b->cap) return PB_OK;
    cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (cap > (size_t)-1 / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    p = pb_realloc(b->alloc, b->data, b->cap, cap);
    if (!p) return PB_ENOMEM;
    b->data = p;
    b->cap = cap;
    b->data[b->len] = '\0'; /* a string even before the first append */
    return PB_OK;
}

int pb_buf_append(pb_buf *b, const void *p, size_t n)
{
    int rc;
    if (n == 0) return PB_OK;
    if ((rc = pb_buf_reserve(b, n)) != PB_OK) return rc;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return PB_OK;
}

int pb_buf_puts(pb_buf *b, const char *s)
{
    return pb_buf_append(b, s, strlen(s));
}

int pb_buf_putc(pb_buf *b, char c)
{
    return pb_buf_append(b, &c, 1);
}


void pb_buf_reset(pb_buf *b)
{
    b->len = 0;
    if (b->data) b->data[0] = '\0';
}

void pb_buf_free(pb_buf *b)
{
    pb_free(b->alloc, b->data, b->cap);
    b->data = NULL;
    b->len = b->cap = 0;
}

const char *pb_buf_str(const pb_buf *b)
{
    return b->data ? b->data : "";
}
