/* suggest.h - "did you mean ...?" for misspelt names (macros, fields). */
#ifndef PB_SUGGEST_H
#define PB_SUGGEST_H

#include <stddef.h>

/* The index in names[0..count) of the name closest to `name`: at most 2
 * edits, and fewer edits than `name` has bytes ("x" suggests nothing), with
 * name compared case-insensitively (the names are lowercase); ties go to the
 * earlier name. -1 when none is that close, or when either is longer than
 * 32 bytes. */
int pb_suggest(const char *name, size_t len, const char *const *names, size_t count);

#endif
