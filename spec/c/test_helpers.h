/* test_helpers.h - helpers the C tests and the fuzzers share, kept out of
 * core/ because only they use them. */
#ifndef PB_TEST_HELPERS_H
#define PB_TEST_HELPERS_H

#include <stdarg.h>
#include <stdio.h>

#include "core/buf.h"
#include "core/encode.h"

/* Appends the percent-decoding of s ('+' kept; a '%' without two hex digits
 * kept as it is): the inverse of pb_url_encode, for round-trip checks. */
static int pb_url_decode(pb_buf *out, const char *s, size_t n)
{
    size_t i;
    int rc;
    if ((rc = pb_buf_reserve(out, n)) != PB_OK) return rc;
    for (i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] == '%' && n - i >= 3 && (hi = pb_hexval((unsigned char)s[i + 1])) >= 0 &&
            (lo = pb_hexval((unsigned char)s[i + 2])) >= 0) {
            out->data[out->len++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out->data[out->len++] = s[i];
        }
    }
    out->data[out->len] = '\0';
    return PB_OK;
}

/* Appends at most 63 bytes of printf output. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int pb_buf_printf(pb_buf *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return PB_ENOMEM;
    if ((size_t)n >= sizeof tmp) n = (int)sizeof tmp - 1;
    return pb_buf_append(b, tmp, (size_t)n);
}

#endif
