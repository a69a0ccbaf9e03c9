/* buf.h - a growable byte buffer, always NUL-terminated when non-empty. */
#ifndef PB_BUF_H
#define PB_BUF_H

#include <stddef.h>
#include "alloc.h"

typedef struct pb_buf {
    char *data;            /* NULL until the first append */
    size_t len;            /* bytes used, excluding the terminating NUL */
    size_t cap;            /* bytes allocated */
    size_t limit;          /* 0 = no limit; else appends past it fail */
    const pb_alloc *alloc; /* NULL = malloc */
} pb_buf;

/* Return codes of the functions below. */
enum { PB_OK = 0, PB_ENOMEM = -1, PB_ELIMIT = -2 };

void pb_buf_init(pb_buf *b, const pb_alloc *a);
/* Makes room for `extra` more bytes (plus the NUL). */
int pb_buf_reserve(pb_buf *b, size_t extra);
int pb_buf_append(pb_buf *b, const void *p, size_t n);
int pb_buf_puts(pb_buf *b, const char *s);
int pb_buf_putc(pb_buf *b, char c);
void pb_buf_reset(pb_buf *b);  /* len = 0, keeps the memory */
void pb_buf_free(pb_buf *b);   /* releases the memory */
/* The contents as a C string ("" when nothing was appended). */
const char *pb_buf_str(const pb_buf *b);

#endif
