/* fuzz_encode.c - libFuzzer harness for core/encode.c.
 *
 * The whole input is a byte string s. Checked:
 *   - pb_url_encode(s): length = pb_url_encoded_len(s); only unreserved bytes
 *     and %XX (uppercase hex) in the output; every unreserved byte of s kept
 *     as is; decoding it gives s back exactly;
 *   - pb_url_decode(s) equals a reference decoder (never longer than s);
 *   - appending to a buffer that already holds text keeps that text;
 *   - a buffer limit gives PB_ELIMIT exactly when the result would not fit,
 *     and leaves the buffer as it was;
 *   - a failing allocator gives PB_ENOMEM and leaves the buffer as it was;
 *     every block is freed with the size it was allocated with.
 *
 *   make build/fuzz/fuzz_encode && build/fuzz/fuzz_encode fuzz/seeds/fuzz_encode */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/encode.h"
#include "spec/c/test_helpers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_NAME "fuzz_encode"
#include "fuzz/fuzz_common.h"


static int unres(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

static int hexv(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int upperhex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    track tr;
    pb_alloc a;
    pb_buf e, d, p;
    size_t i, k, elen, unr = 0;
    unsigned char *ref;
    int rc;

    memset(&tr, 0, sizeof tr);
    a.fn = track_fn;
    a.ud = &tr;

    for (i = 0; i < size; i++) {
        if (pb_is_unreserved(data[i]) != unres(data[i])) FAIL("pb_is_unreserved(0x%02X)", data[i]);
        if (pb_hexval(data[i]) != hexv(data[i])) FAIL("pb_hexval(0x%02X)", data[i]);
        unr += unres(data[i]);
    }

    /* encode */
    elen = pb_url_encoded_len(s, size);
    if (elen != unr + 3 * (size - unr)) FAIL("pb_url_encoded_len %zu", elen);
    pb_buf_init(&e, &a);
    if ((rc = pb_url_encode(&e, s, size)) != PB_OK) FAIL("encode: %d", rc);
    if (e.len != elen) FAIL("encoded %zu bytes, pb_url_encoded_len says %zu", e.len, elen);
    if (e.data && e.data[e.len] != '\0') FAIL("encoded output not NUL-terminated");
    for (i = 0, k = 0; i < e.len; k++) {
        unsigned char c = (unsigned char)e.data[i];
        if (k >= size) FAIL("more encoded units than input bytes");
        if (c == '%') {
            if (i + 2 >= e.len || !upperhex((unsigned char)e.data[i + 1]) ||
                !upperhex((unsigned char)e.data[i + 2]))
                FAIL("bad %%XX at %zu", i);
            if (hexv((unsigned char)e.data[i + 1]) * 16 + hexv((unsigned char)e.data[i + 2]) != data[k])
                FAIL("%%XX at %zu is not input byte %zu", i, k);
            if (unres(data[k])) FAIL("unreserved byte 0x%02X was encoded", data[k]);
            i += 3;
        } else {
            if (!unres(c)) FAIL("byte 0x%02X in encoded output", c);
            if (c != data[k]) FAIL("encoded byte %zu is not input byte %zu", i, k);
            i++;
        }
    }
    if (k != size) FAIL("encoded output covers %zu of %zu bytes", k, size);

    /* decode(encode(s)) == s */
    pb_buf_init(&d, &a);
    if ((rc = pb_url_decode(&d, e.data ? e.data : "", e.len)) != PB_OK) FAIL("decode: %d", rc);
    if (d.len != size || (size && memcmp(d.data, s, size) != 0)) FAIL("round trip differs");
    pb_buf_free(&d);

    /* decode(s) against a reference */
    ref = (unsigned char *)malloc(size + 1);
    for (i = 0, k = 0; i < size; k++) {
        int hi, lo;
        if (data[i] == '%' && i + 2 < size && (hi = hexv(data[i + 1])) >= 0 &&
            (lo = hexv(data[i + 2])) >= 0) {
            ref[k] = (unsigned char)(hi * 16 + lo);
            i += 3;
        } else {
            ref[k] = data[i++];
        }
    }
    pb_buf_init(&d, &a);
    if ((rc = pb_url_decode(&d, s, size)) != PB_OK) FAIL("decode: %d", rc);
    if (d.len != k || (k && memcmp(d.data, ref, k) != 0)) FAIL("decode differs from reference");
    if (d.len > size) FAIL("decoded longer than input");
    if (d.data && d.data[d.len] != '\0') FAIL("decoded output not NUL-terminated");
    /* decoding what came out of the encoder of the decoded text is stable */
    pb_buf_init(&p, &a);
    if (pb_url_encode(&p, d.data ? d.data : "", d.len) != PB_OK) FAIL("re-encode");
    pb_buf_free(&d);
    pb_buf_init(&d, &a);
    if (pb_url_decode(&d, p.data ? p.data : "", p.len) != PB_OK) FAIL("re-decode");
    if (d.len != k || (k && memcmp(d.data, ref, k) != 0)) FAIL("decode(encode(decode(s))) != decode(s)");
    pb_buf_free(&d);
    pb_buf_free(&p);
    free(ref);

    /* appending after existing text; then a limit */
    {
        size_t limit = (size ? (size_t)data[0] * 4 + (size & 7) : 3) + 1; /* 0 would mean none */
        size_t before;
        pb_buf_init(&p, &a);
        if (pb_buf_puts(&p, "x=") != PB_OK) FAIL("puts");
        if (pb_url_encode(&p, s, size) != PB_OK) FAIL("append encode");
        if (p.len != 2 + elen || memcmp(p.data, "x=", 2) != 0 ||
            (elen && memcmp(p.data + 2, e.data, elen) != 0))
            FAIL("append encode differs");
        pb_buf_free(&p);

        pb_buf_init(&p, &a);
        p.limit = limit;
        if (pb_buf_puts(&p, "x=") != PB_OK && limit >= 2) FAIL("puts under limit");
        before = p.len;
        rc = pb_url_encode(&p, s, size);
        if (before + elen > limit) {
            if (elen && rc != PB_ELIMIT) FAIL("encode past the limit returned %d", rc);
        } else if (rc != PB_OK) {
            FAIL("encode within the limit returned %d", rc);
        }
        if (rc != PB_OK && p.len != before) FAIL("failed encode changed the buffer");
        before = p.len;
        rc = pb_url_decode(&p, s, size);
        if (rc != PB_OK && rc != PB_ELIMIT) FAIL("decode under limit returned %d", rc);
        if (rc != PB_OK && p.len != before) FAIL("failed decode changed the buffer");
        if (p.len > limit) FAIL("buffer past its limit");
        pb_buf_free(&p);
    }

    /* allocation failure: the first or second request */
    for (tr.fail_at = 1; tr.fail_at <= 2; tr.fail_at++) {
        size_t before;
        tr.n = 0;
        tr.failed = 0;
        pb_buf_init(&p, &a);
        rc = pb_buf_puts(&p, "0123456789012345678901234567890123456789012345678901234567890");
        before = p.len;
        if (rc == PB_OK) {
            rc = pb_url_encode(&p, s, size);
            if (tr.failed && rc != PB_ENOMEM) FAIL("encode after a failed allocation: %d", rc);
            if (rc != PB_OK && (p.len != before || memcmp(p.data, "0123", 4) != 0))
                FAIL("failed encode changed the buffer");
        }
        pb_buf_free(&p);
    }

    pb_buf_free(&e);
    return 0;
}
