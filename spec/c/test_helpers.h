/* test_helpers.h - helpers the C tests and the fuzzers share, kept out of
 * core/ because only they use them. */
#ifndef PB_TEST_HELPERS_H
#define PB_TEST_HELPERS_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/buf.h"
#include "core/encode.h"

/* Appends the percent-decoding of s ('+' kept; a '%' without two hex digits
 * kept as it is): the inverse of pb_url_encode, for round-trip checks. */
static inline int pb_url_decode(pb_buf *out, const char *s, size_t n)
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
static inline int pb_buf_printf(pb_buf *b, const char *fmt, ...)
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

/* Prints bytes as a C-ish literal into a static ring of buffers. */
/* Prints bytes as a C-ish literal into a static ring of buffers. */
static inline const char *show(const char *s, size_t n)
{
    static char ring[4][600];
    static int k;
    char *o = ring[k = (k + 1) % 4];
    size_t i, j = 0;
    if (!s) return "(null)";
    o[j++] = '"';
    for (i = 0; i < n && j < sizeof ring[0] - 8; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            o[j++] = '\\';
            o[j++] = (char)c;
        } else if (c >= 0x20 && c < 0x7f) {
            o[j++] = (char)c;
        } else {
            j += (size_t)sprintf(o + j, "\\x%02X", c);
        }
    }
    if (i < n) {
        memcpy(o + j, "...", 3);
        j += 3;
    }
    o[j++] = '"';
    o[j] = '\0';
    return o;
}

/* 1 when s is a number as RFC 8259's grammar writes it. */
static inline int json_number_ok(const char *s)
{
    if (*s == '-') s++;
    if (*s == '0') {
        s++;
    } else if (*s >= '1' && *s <= '9') {
        while (*s >= '0' && *s <= '9') s++;
    } else {
        return 0;
    }
    if (*s == '.') {
        s++;
        if (!(*s >= '0' && *s <= '9')) return 0;
        while (*s >= '0' && *s <= '9') s++;
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-') s++;
        if (!(*s >= '0' && *s <= '9')) return 0;
        while (*s >= '0' && *s <= '9') s++;
    }
    return *s == '\0';
}

#endif
