/* fuzz_json.c - libFuzzer harness for core/json.c.
 *
 * The whole input is a byte string s; each 8 bytes of it are also read as a
 * double and as a long long. Checked:
 *   - pb_json_string(s): length = pb_json_string_len(s); quoted; no raw
 *     control byte, '"' or DEL inside; only the escapes pb_json_string writes;
 *     reading it back gives s exactly; bytes >= 0x80 and '/' kept as they are;
 *   - pb_json_format_double(d): 0 exactly for NaN and infinities; otherwise a
 *     number by RFC 8259's grammar that strtod reads back as d, in plain
 *     digits when d is integral and |d| <= 2^53;
 *   - pb_json_format_int(i) equals printf's %lld;
 *   - a buffer limit and a failing allocator give PB_ELIMIT / PB_ENOMEM and
 *     leave the buffer as it was; every block is freed with its size.
 *
 *   make build/fuzz/fuzz_json && build/fuzz/fuzz_json fuzz/seeds/fuzz_json */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_NAME "fuzz_json"
#include "fuzz/fuzz_common.h"
#include "spec/c/test_helpers.h"

static int hexv(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}


static void check_numbers(const uint8_t *p)
{
    char out[PB_JSON_NUMBER_MAX], ref[32];
    double d;
    long long i;
    size_t n;
    memcpy(&d, p, sizeof d);
    memcpy(&i, p, sizeof i);
    n = pb_json_format_double(out, d);
    if (!isfinite(d)) {
        if (n != 0) FAIL("a non-finite double written as %s", out);
    } else {
        if (n == 0 || n != strlen(out)) FAIL("%.17g: length %zu", d, n);
        if (!json_number_ok(out)) FAIL("%.17g written as %s: not a JSON number", d, out);
        if (strtod(out, NULL) != d) FAIL("%.17g written as %s: reads back differently", d, out);
        if (fabs(d) <= PB_JSON_EXACT_MAX && d == floor(d) && strpbrk(out, ".eE"))
            FAIL("%.17g written as %s: not plain digits", d, out);
    }
    n = pb_json_format_int(out, i);
    snprintf(ref, sizeof ref, "%lld", i);
    if (n != strlen(ref) || strcmp(out, ref) != 0) FAIL("%lld written as %s", i, out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    track tr;
    pb_alloc a;
    pb_buf b;
    size_t i, k, len;
    unsigned char *back;
    int rc;

    memset(&tr, 0, sizeof tr);
    a.fn = track_fn;
    a.ud = &tr;

    for (i = 0; i + 8 <= size; i += 8) check_numbers(data + i);

    /* the string, read back */
    len = pb_json_string_len(s, size);
    pb_buf_init(&b, &a);
    if ((rc = pb_json_string(&b, s, size)) != PB_OK) FAIL("pb_json_string: %d", rc);
    if (b.len != len) FAIL("wrote %zu bytes, pb_json_string_len says %zu", b.len, len);
    if (b.data[b.len] != '\0') FAIL("not NUL-terminated");
    if (b.len < 2 || b.data[0] != '"' || b.data[b.len - 1] != '"') FAIL("not quoted");
    back = (unsigned char *)malloc(size + 1);
    for (i = 1, k = 0; i < b.len - 1; k++) {
        unsigned char c = (unsigned char)b.data[i++];
        if (k >= size) FAIL("more characters than input bytes");
        if (c < 0x20 || c == 0x7f || c == '"') FAIL("raw 0x%02X inside the string", c);
        if (c != '\\') {
            back[k] = c;
            continue;
        }
        c = (unsigned char)b.data[i++];
        switch (c) {
        case '"': back[k] = '"'; break;
        case '\\': back[k] = '\\'; break;
        case 'b': back[k] = '\b'; break;
        case 'f': back[k] = '\f'; break;
        case 'n': back[k] = '\n'; break;
        case 'r': back[k] = '\r'; break;
        case 't': back[k] = '\t'; break;
        case 'u':
            if (i + 4 > b.len - 1 || b.data[i] != '0' || b.data[i + 1] != '0' ||
                hexv((unsigned char)b.data[i + 2]) < 0 || hexv((unsigned char)b.data[i + 3]) < 0)
                FAIL("bad \\u escape at %zu", i);
            back[k] = (unsigned char)(hexv((unsigned char)b.data[i + 2]) * 16 +
                                      hexv((unsigned char)b.data[i + 3]));
            if (back[k] >= 0x20 && back[k] != 0x7f) FAIL("0x%02X escaped as \\u", back[k]);
            i += 4;
            break;
        default: FAIL("escape \\%c", c);
        }
        if (data[k] >= 0x80 || data[k] == '/') FAIL("byte 0x%02X was escaped", data[k]);
    }
    if (k != size || (size && memcmp(back, data, size) != 0)) FAIL("read back differs");
    free(back);
    pb_buf_free(&b);

    /* a limit, then a failing allocator: the buffer as it was */
    pb_buf_init(&b, &a);
    b.limit = size ? (size_t)data[0] + 3 : 2;
    if (pb_buf_puts(&b, "[") != PB_OK) FAIL("puts");
    rc = pb_json_string(&b, s, size);
    if (1 + len > b.limit) {
        if (rc != PB_ELIMIT) FAIL("past the limit: %d", rc);
        if (b.len != 1) FAIL("a refused string changed the buffer");
    } else if (rc != PB_OK) {
        FAIL("within the limit: %d", rc);
    }
    pb_buf_free(&b);
    for (tr.fail_at = 1; tr.fail_at <= 2; tr.fail_at++) {
        tr.n = 0;
        tr.failed = 0;
        pb_buf_init(&b, &a);
        rc = pb_buf_puts(&b, "0123456789012345678901234567890123456789012345678901234567890");
        if (rc == PB_OK) {
            rc = pb_json_string(&b, s, size);
            if (tr.failed && rc != PB_ENOMEM) FAIL("after a failed allocation: %d", rc);
            if (rc != PB_OK && (b.len != 61 || memcmp(b.data, "0123", 4) != 0))
                FAIL("a failed append changed the buffer");
        }
        pb_buf_free(&b);
    }
    return 0;
}
