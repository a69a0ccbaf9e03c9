/* fuzz_validate.c - libFuzzer harness for core/validate.c.
 *
 * The input is read as a record: for each of the 9 fields a kind byte
 * (absent, integer, number, string, other type) and its value (integers and
 * numbers drawn from edge values or raw bytes; strings are slices of the
 * input, so ASan sees any over-read), then up to 3 unknown field names, then
 * the options (partial, conversion_protocol, max_code_len,
 * allow_unknown_macros). pb_validate runs with a large cap, a small cap and
 * no array at all: the counts agree, the small run's errors are the first of
 * the large run's, every error has a code < PB_NERRCODES, a field name and a
 * NUL-terminated message, and an unknown_macro error (only that) names a
 * macro inside the record's code. Also with an allocator that fails its
 * first request: PB_ENOMEM or the same count, nothing leaked, and every block
 * freed with the size it was allocated with.
 *
 *   make build/fuzz/fuzz_validate && build/fuzz/fuzz_validate fuzz/seeds/fuzz_validate */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h" /* PB_ENOMEM */
#include "core/validate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_NAME "fuzz_validate"
#include "fuzz/fuzz_common.h"


typedef struct rd {
    const uint8_t *p;
    size_t n;
} rd;

static unsigned u8(rd *r)
{
    if (!r->n) return 0;
    r->n--;
    return *r->p++;
}

static uint64_t raw64(rd *r)
{
    uint64_t v = 0;
    int k;
    for (k = 0; k < 8; k++) v = v << 8 | u8(r);
    return v;
}

static const long long edge_ints[] = {
    0, 1, 2, 3, 4, -1, 7, 12, PB_MAX_ID, PB_MAX_ID + 1, -PB_MAX_ID,
    9223372036854775807LL, -9223372036854775807LL - 1, 1700000000, 65535, 65536,
};

static long long int_value(rd *r)
{
    unsigned sel = u8(r);
    if (sel < 200) return edge_ints[sel % (sizeof edge_ints / sizeof edge_ints[0])];
    return (long long)raw64(r);
}

static double num_value(rd *r)
{
    unsigned sel = u8(r);
    static const double edge[] = { 1.5, -0.5, 1e300, -1e-300, 9.3e18, 0.1 };
    uint64_t bits;
    double d;
    if (sel < 200) {
        if (sel % 8 == 6) return NAN;
        if (sel % 8 == 7) return (sel & 16) ? INFINITY : -INFINITY;
        return edge[sel % 6];
    }
    bits = raw64(r);
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* A slice of the input as a string; long for the code field. */
static void str_value(rd *r, int big, const char **s, size_t *len)
{
    size_t n = u8(r);
    if (big) n = n << 4 | (u8(r) & 15);
    if (n > r->n) n = r->n;
    *s = (const char *)r->p;
    *len = n;
    r->p += n;
    r->n -= n;
}

static const char *const tnames[] = { "table", "boolean", "function", "userdata", NULL };

static void check_errors(const pb_record *r, const pb_verror *e, size_t n)
{
    const pb_field *code = &r->f[PB_FLD_CODE];
    size_t i;
    for (i = 0; i < n; i++) {
        if (e[i].code < 0 || e[i].code >= PB_NERRCODES) FAIL("error %zu: code %d", i, e[i].code);
        if (!memchr(e[i].message, '\0', sizeof e[i].message)) FAIL("error %zu: message not terminated", i);
        if (!e[i].message[0]) FAIL("error %zu: empty message", i);
        if (e[i].code == PB_E_UNKNOWN_MACRO) {
            /* the name, inside the record's code, made of name characters */
            size_t k;
            if (!e[i].macro || !e[i].macro_len) FAIL("error %zu: unknown_macro without a name", i);
            if (code->kind != PB_F_STRING || e[i].macro < code->s ||
                e[i].macro + e[i].macro_len > code->s + code->len)
                FAIL("error %zu: macro name outside the code", i);
            for (k = 0; k < e[i].macro_len; k++) {
                unsigned char c = (unsigned char)e[i].macro[k];
                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
                    FAIL("error %zu: macro name has byte 0x%02X", i, c);
            }
        } else if (e[i].macro || e[i].macro_len) {
            FAIL("error %zu: macro set on a %d error", i, e[i].code);
        }
        if (!e[i].field_name) FAIL("error %zu: no field name", i);
        if (e[i].field >= 0) {
            if (e[i].field >= PB_NFIELDS) FAIL("error %zu: field %d", i, e[i].field);
            if (e[i].field_len != strlen(pb_field_names[e[i].field]) ||
                memcmp(e[i].field_name, pb_field_names[e[i].field], e[i].field_len) != 0)
                FAIL("error %zu: field name does not match field %d", i, e[i].field);
        } else if (e[i].field == PB_FIELD_PROTOCOL) {
            if (e[i].field_len != 19 || memcmp(e[i].field_name, "conversion_protocol", 19) != 0)
                FAIL("error %zu: protocol field name", i);
        } else if (e[i].field != PB_FIELD_OTHER) {
            FAIL("error %zu: field %d", i, e[i].field);
        } else if (e[i].code != PB_E_UNKNOWN_FIELD) {
            FAIL("error %zu: an unknown field with code %d", i, e[i].code);
        }
    }
}

#define BIG 128

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rd r;
    pb_record rec;
    pb_validate_opts o;
    const char *unk[3];
    size_t unk_len[3];
    pb_verror *big, small[4];
    size_t cap, i;
    long n_big, n_small, n_none, n_oom;
    track tr;
    pb_alloc a;
    int f;

    r.p = data;
    r.n = size;
    memset(&rec, 0, sizeof rec);
    memset(&o, 0, sizeof o);
    for (f = 0; f < PB_NFIELDS; f++) {
        pb_field *fl = &rec.f[f];
        switch (u8(&r) % 5) {
        case 0:
            fl->kind = PB_F_ABSENT;
            break;
        case 1:
            fl->kind = PB_F_INT;
            fl->i = int_value(&r);
            break;
        case 2:
            fl->kind = PB_F_NUMBER;
            fl->d = num_value(&r);
            break;
        case 3:
            fl->kind = PB_F_STRING;
            str_value(&r, f == PB_FLD_CODE, &fl->s, &fl->len);
            break;
        default:
            fl->kind = PB_F_OTHER;
            fl->tname = tnames[u8(&r) % 5];
            break;
        }
    }
    rec.nunknown = u8(&r) % 4;
    for (i = 0; i < rec.nunknown; i++) str_value(&r, 0, &unk[i], &unk_len[i]);
    rec.unknown = unk;
    rec.unknown_len = unk_len;
    {
        unsigned flags = u8(&r);
        o.partial = flags & 1;
        o.allow_unknown_macros = (flags >> 1) & 1;
        o.has_protocol = (flags >> 2) & 1;
        if (o.has_protocol)
            o.protocol = (flags >> 3) & 1 ? num_value(&r) : (double)int_value(&r);
        else
            o.protocol = (double)((flags >> 3) & 3); /* ignored */
        o.max_code_len = (flags >> 5) & 1 ? (size_t)u8(&r) * 16 : 0;
    }
    cap = u8(&r) % 4;

    big = (pb_verror *)malloc(BIG * sizeof *big);
    n_big = pb_validate(&rec, &o, big, BIG, NULL);
    if (n_big < 0) FAIL("pb_validate returned %ld without an allocation failure", n_big);
    check_errors(&rec, big, (size_t)n_big < BIG ? (size_t)n_big : BIG);

    memset(small, 0xA5, sizeof small);
    n_small = pb_validate(&rec, &o, small, cap, NULL);
    if (n_small != n_big) FAIL("cap %zu: %ld errors, cap %d: %ld", cap, n_small, BIG, n_big);
    for (i = 0; i < cap && i < (size_t)n_big; i++) {
        if (small[i].field != big[i].field || small[i].code != big[i].code ||
            small[i].field_name != big[i].field_name || small[i].field_len != big[i].field_len ||
            strcmp(small[i].message, big[i].message) != 0 || small[i].macro != big[i].macro ||
            small[i].macro_len != big[i].macro_len)
            FAIL("error %zu differs between cap %zu and cap %d", i, cap, BIG);
    }
    for (i = cap; i < 4; i++) {
        const unsigned char *p = (const unsigned char *)&small[i];
        size_t k;
        for (k = 0; k < sizeof small[i]; k++)
            if (p[k] != 0xA5) FAIL("entry %zu written past cap %zu", i, cap);
    }

    n_none = pb_validate(&rec, &o, NULL, 0, NULL);
    if (n_none != n_big) FAIL("no array: %ld errors, expected %ld", n_none, n_big);

    /* the tracking allocator: the same result; failing its first request: PB_ENOMEM */
    memset(&tr, 0, sizeof tr);
    a.fn = track_fn;
    a.ud = &tr;
    n_oom = pb_validate(&rec, &o, big, BIG, &a);
    if (n_oom != n_big) FAIL("with an allocator: %ld errors, expected %ld", n_oom, n_big);
    tr.n = 0;
    tr.fail_at = 1;
    n_oom = pb_validate(&rec, &o, big, BIG, &a);
    if (tr.failed ? n_oom != PB_ENOMEM : n_oom != n_big)
        FAIL("failing allocator: %ld (failed %d)", n_oom, tr.failed);

    free(big);
    return 0;
}
