/* json.c - exact JSON numbers and escaped JSON strings (see json.h). */
#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char hexdigits[] = "0123456789abcdef";

/* What each byte becomes inside a JSON string: 0 = itself, 'u' = \u00XX,
 * anything else = a backslash and that letter. */
static const char escapes[256] = {
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'b', 't', 'n', 'u', 'f', 'r', 'u', 'u', /* 0x00 */
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', /* 0x10 */
    0,   0,   '"', 0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   /* 0x20 */
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   /* 0x30 */
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   /* 0x40 */
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   '\\', 0,  0,   0,   /* 0x50 */
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   /* 0x60 */
    0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   'u', /* 0x70 */
    /* 0x80-0xFF: zero, copied as they are */
};

size_t pb_json_format_int(char *dst, long long v)
{
    char tmp[24];
    size_t n = 0, len = 0;
    /* The magnitude as unsigned, so LLONG_MIN needs no special case. */
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + (int)(u % 10));
        u /= 10;
    } while (u);
    if (v < 0) dst[len++] = '-';
    while (n) dst[len++] = tmp[--n];
    dst[len] = '\0';
    return len;
}

size_t pb_json_format_double(char *dst, double d)
{
    char tmp[PB_JSON_NUMBER_MAX];
    size_t i, len = 0;
    int prec, n = 0;
    if (!isfinite(d)) return 0;
    if (d >= -PB_JSON_EXACT_MAX && d <= PB_JSON_EXACT_MAX && d == floor(d))
        return pb_json_format_int(dst, (long long)d);
    /* %.17g always reads back as d; a shorter form is nicer when it does too.
     * strtod reads in the same locale snprintf wrote in. */
    for (prec = 15; prec <= 17; prec++) {
        n = snprintf(tmp, sizeof tmp, "%.*g", prec, d);
        if (n <= 0 || (size_t)n >= sizeof tmp) return 0; /* cannot happen for a finite double */
        if (prec == 17 || strtod(tmp, NULL) == d) break;
    }
    /* Digits, sign and exponent are kept; a locale's decimal point (any other
     * bytes, possibly several) becomes one '.'. */
    for (i = 0; i < (size_t)n; i++) {
        char c = tmp[i];
        if ((c >= '0' && c <= '9') || c == '-' || c == '+' || c == 'e' || c == 'E') {
            dst[len++] = c;
        } else if (len == 0 || dst[len - 1] != '.') {
            dst[len++] = '.';
        }
    }
    dst[len] = '\0';
    return len;
}

int pb_json_int(pb_buf *b, long long v)
{
    char tmp[PB_JSON_NUMBER_MAX];
    return pb_buf_append(b, tmp, pb_json_format_int(tmp, v));
}

int pb_json_double(pb_buf *b, double d)
{
    char tmp[PB_JSON_NUMBER_MAX];
    size_t n = pb_json_format_double(tmp, d);
    if (n == 0) return PB_JSON_NONFINITE;
    return pb_buf_append(b, tmp, n);
}

size_t pb_json_string_len(const char *s, size_t n)
{
    size_t i, len = n + 2;
    for (i = 0; i < n; i++) {
        char e = escapes[(unsigned char)s[i]];
        size_t extra = e == 0 ? 0 : e == 'u' ? 5 : 1;
        if (extra > (size_t)-1 - len) return (size_t)-1;
        len += extra;
    }
    return len;
}

/* Writes the quoted, escaped form of s into dst (pb_json_string_len bytes,
 * no NUL); returns the bytes written. */
static size_t json_string_into(char *dst, const char *s, size_t n)
{
    char *p = dst;
    size_t i = 0;
    *p++ = '"';
    while (i < n) {
        size_t run = i;
        unsigned char c;
        char e;
        while (run < n && escapes[(unsigned char)s[run]] == 0) run++;
        if (run > i) {
            memcpy(p, s + i, run - i);
            p += run - i;
            i = run;
            if (i == n) break;
        }
        c = (unsigned char)s[i++];
        e = escapes[c];
        *p++ = '\\';
        if (e == 'u') {
            *p++ = 'u';
            *p++ = '0';
            *p++ = '0';
            *p++ = hexdigits[c >> 4];
            *p++ = hexdigits[c & 15];
        } else {
            *p++ = e;
        }
    }
    *p++ = '"';
    return (size_t)(p - dst);
}

int pb_json_string(pb_buf *b, const char *s, size_t n)
{
    size_t need = pb_json_string_len(s, n);
    int rc;
    if (need == (size_t)-1) return PB_ENOMEM;
    if ((rc = pb_buf_reserve(b, need)) != PB_OK) return rc;
    b->len += json_string_into(b->data + b->len, s, n);
    b->data[b->len] = '\0';
    return PB_OK;
}
