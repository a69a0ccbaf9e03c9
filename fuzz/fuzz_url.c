/* fuzz_url.c - libFuzzer harness for core/url.c.
 *
 * The whole input is a URL (any bytes). pb_check_code_url,
 * pb_check_request_url, pb_url_is_loopback, pb_url_is_https and
 * pb_find_crlf_nul must never crash or read past it, and:
 *   - a request URL that passes is a code URL that passes;
 *   - without '{', '}' or "%7B" in it, a code URL that passes is a request
 *     URL that passes (macros are the only difference);
 *   - any URL with CR, LF or NUL (or any byte <= 0x20 or 0x7f) is refused by
 *     both;
 *   - pb_find_crlf_nul finds the first CR/LF/NUL, as a plain scan does;
 *   - https and loopback answers need an http(s) scheme; loopback hosts
 *     are localhost, [::1] or 127.x.y.z;
 *   - every answer depends only on the n bytes given (prefixes are checked
 *     in place and in an exact-size copy);
 *   - allowing user info only ever accepts more, and a URL without '@'
 *     gets the same answer either way;
 *   - pb_url_to_ascii converts exactly the URLs the request check accepts,
 *     into a pure-ASCII URL the check accepts and that converts to itself,
 *     with the same bytes up to the host;
 *   - pb_url_host finds a host inside the URL exactly when the scheme is
 *     http(s); pb_url_no_proxy covers any host with "*", and reads any
 *     list (the input itself) without crashing.
 *
 *   make build/fuzz/fuzz_url && build/fuzz/fuzz_url fuzz/seeds/fuzz_url */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_NAME "fuzz_url"
#include "fuzz/fuzz_common.h"

static int ieq_prefix(const uint8_t *s, size_t n, const char *p)
{
    size_t i, m = strlen(p);
    if (n < m) return 0;
    for (i = 0; i < m; i++) {
        unsigned char c = s[i];
        if (c >= 'A' && c <= 'Z') c = (unsigned char)(c - 'A' + 'a');
        if (c != (unsigned char)p[i]) return 0;
    }
    return 1;
}

static void check(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    const char *cw = pb_check_code_url(s, size);
    const char *rw = pb_check_request_url(s, size);
    int lb = pb_url_is_loopback(s, size);
    int hs = pb_url_is_https(s, size);
    long at = pb_find_crlf_nul(s, size);
    long ref_at = -1;
    int ctl = 0, braces = 0;
    size_t i;

    for (i = 0; i < size; i++) {
        unsigned char c = data[i];
        if (ref_at < 0 && (c == '\r' || c == '\n' || c == '\0')) ref_at = (long)i;
        if (c <= 0x20 || c == 0x7f) ctl = 1;
        if (c == '{' || c == '}') braces = 1;
        /* a percent-encoded placeholder (%7B...) may stand in a code URL's port */
        if (c == '%' && i + 2 < size && data[i + 1] == '7' && (data[i + 2] | 0x20) == 'b') braces = 1;
    }
    if (at != ref_at) FAIL("pb_find_crlf_nul = %ld, expected %ld", at, ref_at);
    if (cw && strlen(cw) == 0) FAIL("empty reason");
    if (rw && strlen(rw) == 0) FAIL("empty reason");
    if (!rw && cw) FAIL("request URL ok but code URL refused: %s", cw);
    if (!braces && !cw && rw) FAIL("no macros, code URL ok, request URL refused: %s", rw);
    if (ctl && (!cw || !rw)) FAIL("a URL with control bytes or spaces passed");
    if (at >= 0 && (!cw || !rw)) FAIL("a URL with CR/LF/NUL passed");
    if ((!cw || !rw) && !(ieq_prefix(data, size, "http://") || ieq_prefix(data, size, "https://")))
        FAIL("a URL without an http(s) scheme passed");
    if (hs != ieq_prefix(data, size, "https://")) FAIL("pb_url_is_https = %d", hs);
    if (lb && !(ieq_prefix(data, size, "http://") || ieq_prefix(data, size, "https://")))
        FAIL("loopback without an http(s) scheme");
    if (lb && !rw) {
        /* a refusal-free loopback URL names localhost, [::1] or 127.* as its host */
        int found = 0;
        const char *hosts[] = { "localhost", "LOCALHOST", "[::1]", "127." };
        size_t h;
        for (h = 0; h < 4 && !found; h++) {
            size_t m = strlen(hosts[h]), k;
            for (k = 0; k + m <= size; k++)
                if (ieq_prefix(data + k, size - k, h == 1 ? "localhost" : hosts[h])) found = 1;
        }
        if (!found) FAIL("loopback URL without a loopback host");
    }
}

static void check_host(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    size_t off = 0, len = 0;
    char *list;
    int found = pb_url_host(s, size, &off, &len);
    if (found != (ieq_prefix(data, size, "http://") || ieq_prefix(data, size, "https://")))
        FAIL("pb_url_host = %d", found);
    if (!found) return;
    if (off < 7 || off > size || len > size - off) FAIL("host at %zu, %zu bytes, outside the URL", off, len);
    if (len && !pb_url_no_proxy("*", s + off, len)) FAIL("\"*\" does not cover the host");
    list = (char *)malloc(size + 1);
    if (!list) return;
    memcpy(list, data, size);
    list[size] = '\0';
    (void)pb_url_no_proxy(list, s + off, len);
    free(list);
}

static void check_ascii(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    unsigned flags = size && (data[0] & 1) ? PB_URL_ALLOW_USERINFO : 0;
    const char *rw = pb_check_request_url_ex(s, size, flags);
    const char *cw = pb_check_code_url_ex(s, size, flags);
    int at = memchr(data, '@', size) != NULL;
    char why[160];
    pb_buf b, b2;
    int rc;
    size_t i;
    if (!flags) {
        if (pb_check_request_url(s, size) && !rw) FAIL("allowing user info refused a URL");
        if (pb_check_code_url(s, size) && !cw) FAIL("allowing user info refused a code URL");
    }
    if (!at && (pb_check_request_url_ex(s, size, PB_URL_ALLOW_USERINFO) != pb_check_request_url(s, size)))
        FAIL("allow_userinfo changed the answer for a URL without '@'");
    pb_buf_init(&b, NULL);
    why[0] = '\0';
    rc = pb_url_to_ascii(s, size, flags, &b, why, sizeof why);
    if (rw && rc != PB_EINVAL) FAIL("pb_url_to_ascii = %d for a refused URL (%s)", rc, rw);
    if (!rw && rc < 0) FAIL("pb_url_to_ascii = %d (%s) for an accepted URL", rc, why);
    if (rc == PB_EINVAL && strncmp(why, "URL ", 4) != 0) FAIL("reason %s", why);
    if (rc == 0 && b.len) FAIL("unchanged but appended");
    if (rc == 0) /* an unchanged URL is pure ASCII */
        for (i = 0; i < size; i++)
            if (data[i] >= 0x80) FAIL("unchanged URL with a byte >= 0x80");
    if (rc == 1) {
        if (pb_check_request_url_ex(b.data, b.len, flags)) FAIL("converted URL refused: %s", b.data);
        for (i = 0; i < b.len; i++)
            if ((unsigned char)b.data[i] >= 0x80) FAIL("converted URL has a byte >= 0x80");
        if (memcmp(b.data, s, 7) != 0) FAIL("converted URL changed its scheme");
        pb_buf_init(&b2, NULL);
        if (pb_url_to_ascii(b.data, b.len, flags, &b2, NULL, 0) != 0) FAIL("conversion is not idempotent: %s", b.data);
        pb_buf_free(&b2);
    }
    pb_buf_free(&b);
}

/* The answers for s[0..n) in the input buffer and in an exact-size copy
 * (where ASan sees any read past n) must be the same. */
static void check_prefix(const uint8_t *data, size_t n)
{
    uint8_t *copy = (uint8_t *)malloc(n ? n : 1);
    const char *s = (const char *)data, *c = (const char *)copy;
    if (n) memcpy(copy, data, n);
    check(copy, n);
    check_host(copy, n);
    if (pb_check_code_url(s, n) != pb_check_code_url(c, n) ||
        pb_check_request_url(s, n) != pb_check_request_url(c, n) ||
        pb_url_is_loopback(s, n) != pb_url_is_loopback(c, n) ||
        pb_url_is_https(s, n) != pb_url_is_https(c, n) ||
        pb_find_crlf_nul(s, n) != pb_find_crlf_nul(c, n))
        FAIL("answers for a %zu-byte prefix depend on the bytes after it", n);
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check(data, size);
    check_host(data, size);
    check_ascii(data, size);
    if (size > 1) check_prefix(data, size / 2);
    if (size > 0) check_prefix(data, size - 1);
    return 0;
}
