/* fuzz_template.c - libFuzzer harness for core/template.c.
 *
 * Input: byte 0 steers the values and options, the rest is postback code.
 * The code is parsed by core and by a small independent reference parser
 * here; segments, names and slots must agree. Then it is rendered with values
 * derived from the input under both encode modes and all missing modes, and
 * the output (or error and slot) must equal the reference renderer's, with
 * and without a buffer limit. Invariants checked besides:
 *   - encode=none, every value absent, missing=keep reproduces the source;
 *   - with encode=url, every byte a value contributes is unreserved or %XX;
 *   - allocation: every block is freed with the size it was allocated with,
 *     and a failing allocator yields NULL / PB_ENOMEM, never a crash or leak.
 *
 *   make build/fuzz/fuzz_template && build/fuzz/fuzz_template fuzz/seeds/fuzz_template */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/encode.h"
#include "core/macros.h"
#include "core/template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_NAME "fuzz_template"
#include "fuzz/fuzz_common.h"


/* ---- reference parser ---------------------------------------------------- */

static int namech(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* Length of a placeholder at s[i], or 0; the name's offset and length. */
static size_t ref_placeholder(const unsigned char *s, size_t n, size_t i, size_t *no, size_t *nl)
{
    size_t j;
    if (s[i] == '{') {
        for (j = i + 1; j < n && namech(s[j]); j++) {}
        if (j > i + 1 && j < n && s[j] == '}') {
            *no = i + 1;
            *nl = j - (i + 1);
            return j + 1 - i;
        }
        return 0;
    }
    if (s[i] == '%' && i + 2 < n && s[i + 1] == '7' && (s[i + 2] | 0x20) == 'b') {
        for (j = i + 3; j < n && namech(s[j]); j++) {}
        if (j > i + 3 && j + 2 < n && s[j] == '%' && s[j + 1] == '7' && (s[j + 2] | 0x20) == 'd') {
            *no = i + 3;
            *nl = j - (i + 3);
            return j + 3 - i;
        }
    }
    return 0;
}

static int ref_doc(const unsigned char *name, size_t len)
{
    int k;
    for (k = 0; k < PB_NMACROS; k++)
        if (strlen(pb_macro_names[k]) == len && memcmp(pb_macro_names[k], name, len) == 0)
            return k;
    return -1;
}

/* Checks core's parse of s against the reference. */
static void check_parse(const pb_template *t, const unsigned char *s, size_t n)
{
    size_t i = 0, lit = 0, seg = 0, nmac = 0, litlen = 0, maxslot = 0, k;
    if (t->src_len != n || memcmp(t->src, s, n) != 0 || t->src[n] != '\0')
        FAIL("source not copied exactly");
    while (i <= n) {
        size_t no = 0, nl = 0, pl = i < n ? ref_placeholder(s, n, i, &no, &nl) : 0;
        if (i < n && !pl) {
            i++;
            continue;
        }
        if (i > lit) { /* the literal before */
            if (seg >= t->nsegs || t->segs[seg].kind != PB_SEG_LITERAL || t->segs[seg].off != lit ||
                t->segs[seg].len != i - lit)
                FAIL("literal segment %zu: expected off %zu len %zu", seg, lit, i - lit);
            litlen += i - lit;
            seg++;
        }
        if (i == n) break;
        {
            const pb_segment *sg;
            const pb_name *nm;
            if (seg >= t->nsegs) FAIL("missing macro segment at %zu", i);
            sg = &t->segs[seg];
            if (sg->kind != PB_SEG_MACRO || sg->off != i || sg->len != pl)
                FAIL("macro segment %zu: expected off %zu len %zu, got kind %d off %zu len %zu",
                     seg, i, pl, sg->kind, sg->off, sg->len);
            if (sg->slot >= t->nnames) FAIL("slot %zu out of range", sg->slot);
            /* names in order of first use: a new slot is the next one */
            if (sg->slot > maxslot) FAIL("slot %zu used before slot %zu", sg->slot, maxslot);
            if (sg->slot == maxslot) maxslot++;
            nm = &t->names[sg->slot];
            if (nm->len != nl || memcmp(t->src + nm->off, s + no, nl) != 0)
                FAIL("segment %zu names the wrong slot", seg);
            if (nm->doc != ref_doc(s + no, nl)) FAIL("doc index of a name is %d", nm->doc);
            nmac++;
            seg++;
        }
        i += pl;
        lit = i;
    }
    if (seg != t->nsegs) FAIL("%zu segments, expected %zu", t->nsegs, seg);
    if (nmac != t->nmacros) FAIL("nmacros %zu, expected %zu", t->nmacros, nmac);
    if (litlen != t->literal_len) FAIL("literal_len %zu, expected %zu", t->literal_len, litlen);
    if (maxslot != t->nnames) FAIL("%zu names, %zu used", t->nnames, maxslot);
    /* distinct names */
    if (t->nnames <= 200)
        for (k = 0; k < t->nnames; k++) {
            size_t m;
            for (m = k + 1; m < t->nnames; m++)
                if (t->names[k].len == t->names[m].len &&
                    memcmp(t->src + t->names[k].off, t->src + t->names[m].off, t->names[k].len) == 0)
                    FAIL("names %zu and %zu are the same", k, m);
        }
}

/* ---- reference renderer --------------------------------------------------- */

typedef struct out {
    unsigned char *p;
    size_t len, cap, limit; /* limit 0 = none */
} out;

/* 0, or 1 when the limit refuses the piece */
static int put(out *o, const void *p, size_t n)
{
    if (n == 0) return 0;
    if (o->limit && o->len + n > o->limit) return 1;
    if (o->len + n > o->cap) {
        size_t nc = (o->len + n) * 2 + 16;
        o->p = (unsigned char *)realloc(o->p, nc);
        if (!o->p) abort();
        o->cap = nc;
    }
    memcpy(o->p + o->len, p, n);
    o->len += n;
    return 0;
}

static int unres(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

static int put_value(out *o, const unsigned char *s, size_t n, int encode)
{
    size_t i, k = 0;
    unsigned char tmp[3 * 64];
    unsigned char *e;
    int rc;
    if (encode != PB_ENCODE_URL) return put(o, s, n);
    e = n <= 64 ? tmp : (unsigned char *)malloc(3 * n);
    for (i = 0; i < n; i++) {
        if (unres(s[i])) {
            e[k++] = s[i];
        } else {
            e[k++] = '%';
            e[k++] = "0123456789ABCDEF"[s[i] >> 4];
            e[k++] = "0123456789ABCDEF"[s[i] & 15];
        }
    }
    rc = put(o, e, k);
    if (e != tmp) free(e);
    return rc;
}

/* Renders like the rules say; returns PB_OK or the error, *slot at fault. */
static int ref_render(const pb_template *t, const pb_value *vals, int missing, int encode, out *o,
                      size_t *slot, size_t *vstart, size_t *vend)
{
    size_t i;
    for (i = 0; i < t->nsegs; i++) {
        const pb_segment *sg = &t->segs[i];
        const pb_value *v;
        char num[64];
        int n = 0;
        vstart[i] = vend[i] = o->len;
        if (sg->kind == PB_SEG_LITERAL) {
            if (put(o, t->src + sg->off, sg->len)) return *slot = 0, PB_ELIMIT;
            continue;
        }
        *slot = sg->slot;
        v = &vals[sg->slot];
        switch (v->kind) {
        case PB_V_NONE:
            if (t->names[sg->slot].doc < 0 || missing == PB_MISSING_KEEP) {
                if (put(o, t->src + sg->off, sg->len)) return PB_ELIMIT;
                continue; /* written as in the source: not a value */
            }
            if (missing == PB_MISSING_ERROR) return PB_RERR_MISSING;
            break;
        case PB_V_STRING:
            if (put_value(o, (const unsigned char *)v->s, v->len, encode)) return PB_ELIMIT;
            break;
        case PB_V_INT:
            n = snprintf(num, sizeof num, "%lld", v->i);
            if (put_value(o, (const unsigned char *)num, (size_t)n, encode)) return PB_ELIMIT;
            break;
        case PB_V_FLOAT:
            if (isnan(v->d) || isinf(v->d)) return PB_RERR_NONFINITE;
            n = snprintf(num, sizeof num, "%.14g", v->d);
            if (put_value(o, (const unsigned char *)num, (size_t)n, encode)) return PB_ELIMIT;
            break;
        case PB_V_BOOL:
            if (put(o, v->i ? "true" : "false", v->i ? 4 : 5)) return PB_ELIMIT;
            break;
        default:
            return PB_RERR_BADTYPE;
        }
        vend[i] = o->len;
    }
    return PB_OK;
}

/* ---- values from the input ------------------------------------------------ */

static uint32_t mix(uint32_t h, uint32_t x)
{
    h ^= x + 0x9e3779b9u + (h << 6) + (h >> 2);
    return h;
}

static const long long ints[] = { 0, 1, -1, 42, 10482, 9007199254740991LL, -9007199254740992LL,
                                  9223372036854775807LL, -9223372036854775807LL - 1 };
static const double floats[] = { 1.25, 0.1, -0.0, 1e20, 1e-7, 123456789012345678.0, 2.0 / 3.0,
                                 1.7976931348623157e308, 4.9406564584124654e-324, 100.0 };

static void make_values(const pb_template *t, unsigned ctl, const unsigned char *s, size_t n,
                        pb_value *vals)
{
    size_t i, k;
    for (i = 0; i < t->nnames; i++) {
        const pb_name *nm = &t->names[i];
        pb_value *v = &vals[i];
        uint32_t h = mix(ctl, (uint32_t)i);
        for (k = 0; k < nm->len; k++) h = mix(h, (unsigned char)t->src[nm->off + k]);
        memset(v, 0, sizeof *v);
        switch (h % 9) {
        case 0:
        case 1:
            v->kind = PB_V_NONE;
            break;
        case 2: /* the name itself */
            v->kind = PB_V_STRING;
            v->s = t->src + nm->off;
            v->len = nm->len;
            break;
        case 3: /* a slice of the input: any bytes */
            v->kind = PB_V_STRING;
            v->len = n ? (h >> 8) % 24 : 0;
            k = n ? (h >> 16) % n : 0;
            if (k + v->len > n) v->len = n - k;
            v->s = (const char *)s + k;
            break;
        case 4:
            v->kind = PB_V_INT;
            v->i = (h >> 4) & 1 ? ints[(h >> 8) % (sizeof ints / sizeof ints[0])]
                                : (long long)(int32_t)h;
            break;
        case 5:
            v->kind = PB_V_FLOAT;
            v->d = floats[(h >> 8) % (sizeof floats / sizeof floats[0])];
            if (ctl & 0x40) v->d = ((h >> 4) & 3) == 0 ? NAN : ((h >> 4) & 3) == 1 ? INFINITY
                                                                                  : v->d;
            break;
        case 6:
            v->kind = PB_V_BOOL;
            v->i = (long long)((h >> 8) & 3);
            break;
        case 7:
            v->kind = (ctl & 0x80) ? PB_V_BAD : PB_V_STRING;
            v->s = "";
            break;
        default:
            v->kind = PB_V_STRING;
            v->s = "a b&c=d/\xC3\xA9%~";
            v->len = strlen(v->s);
            break;
        }
    }
}

/* ---- the harness ---------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const unsigned char *s;
    size_t n, i;
    unsigned ctl;
    track tr;
    pb_alloc a;
    pb_template *t;
    pb_value *vals, *none;
    pb_render_opts ro;
    pb_render_err err;
    pb_buf b;
    int missing, encode, rc;
    out ref;
    size_t slot, *vstart, *vend;

    if (size < 1) return 0;
    ctl = data[0];
    s = data + 1;
    n = size - 1;

    memset(&tr, 0, sizeof tr);
    a.fn = track_fn;
    a.ud = &tr;

    /* A failing allocation somewhere in the parse: NULL, nothing leaked. */
    tr.fail_at = (long)(ctl % 8) + 1;
    t = pb_template_parse((const char *)s, n, &a);
    if (!t && !tr.failed) FAIL("parse returned NULL without an allocation failure");
    if (t && tr.failed) FAIL("parse succeeded past an allocation failure");
    pb_template_free(t);

    tr.fail_at = 0;
    t = pb_template_parse((const char *)s, n, &a);
    if (!t) FAIL("parse failed");
    check_parse(t, s, n);

    vals = (pb_value *)calloc(t->nnames + 1, sizeof *vals);
    none = (pb_value *)calloc(t->nnames + 1, sizeof *none);
    vstart = (size_t *)calloc(t->nsegs + 1, sizeof *vstart);
    vend = (size_t *)calloc(t->nsegs + 1, sizeof *vend);
    make_values(t, ctl, s, n, vals);
    pb_buf_init(&b, &a);

    /* encode=none, nothing given, missing=keep: the source, byte for byte */
    ro.missing = PB_MISSING_KEEP;
    ro.encode = PB_ENCODE_NONE;
    rc = pb_template_render(t, none, &ro, &b, &err);
    if (rc != PB_OK) FAIL("identity render failed: %d", rc);
    if (b.len != n || (n && memcmp(b.data, s, n) != 0)) FAIL("identity render differs from source");
    pb_buf_free(&b);

    for (encode = PB_ENCODE_URL; encode <= PB_ENCODE_NONE; encode++) {
        for (missing = PB_MISSING_EMPTY; missing <= PB_MISSING_ERROR; missing++) {
            int pass;
            for (pass = 0; pass < 2; pass++) { /* 0: no limit, 1: a limit from the input */
                int want;
                memset(&ref, 0, sizeof ref);
                if (pass) ref.limit = (size_t)(ctl * 131u + (unsigned)n) % (n * 2 + 8) + 1;
                slot = 0;
                want = ref_render(t, vals, missing, encode, &ref, &slot, vstart, vend);
                pb_buf_init(&b, &a);
                b.limit = ref.limit;
                ro.missing = missing;
                ro.encode = encode;
                err.code = 0;
                err.slot = 999999;
                rc = pb_template_render(t, vals, &ro, &b, &err);
                if (rc != want)
                    FAIL("render (encode %d, missing %d, limit %zu): rc %d, expected %d", encode,
                         missing, ref.limit, rc, want);
                if (rc != PB_OK && (err.code != rc || err.slot != slot))
                    FAIL("render error: code %d slot %zu, expected slot %zu", err.code, err.slot,
                         slot);
                /* on error too, what was written so far matches */
                if (b.len != ref.len || (ref.len && memcmp(b.data, ref.p, ref.len) != 0))
                    FAIL("render (encode %d, missing %d, limit %zu): output differs (%zu vs %zu bytes)",
                         encode, missing, ref.limit, b.len, ref.len);
                /* a string even when empty (pb_template_render reserves first) */
                if (b.data && b.data[b.len] != '\0') FAIL("output not NUL-terminated");
                if (ref.limit && b.len > ref.limit) FAIL("output past the limit");
                /* values, url-encoded: only unreserved bytes and %XX */
                if (rc == PB_OK && encode == PB_ENCODE_URL) {
                    for (i = 0; i < t->nsegs; i++) {
                        size_t k;
                        for (k = vstart[i]; k < vend[i]; k++) {
                            unsigned char c = (unsigned char)b.data[k];
                            if (c == '%' && k + 2 < vend[i] && pb_hexval((unsigned char)b.data[k + 1]) >= 0 &&
                                !(b.data[k + 1] >= 'a' && b.data[k + 1] <= 'f') &&
                                pb_hexval((unsigned char)b.data[k + 2]) >= 0 &&
                                !(b.data[k + 2] >= 'a' && b.data[k + 2] <= 'f')) {
                                k += 2;
                                continue;
                            }
                            if (!unres(c)) FAIL("value byte 0x%02X not encoded", c);
                        }
                    }
                }
                pb_buf_free(&b);
                free(ref.p);
            }
        }
    }

    /* A failing allocation in the render: PB_ENOMEM and a clean buffer. */
    tr.n = 0;
    tr.failed = 0;
    tr.fail_at = (long)((ctl >> 3) % 4) + 1;
    pb_buf_init(&b, &a);
    ro.missing = PB_MISSING_KEEP;
    ro.encode = PB_ENCODE_URL;
    rc = pb_template_render(t, vals, &ro, &b, &err);
    if (tr.failed && (rc != PB_ENOMEM || err.code != PB_ENOMEM))
        FAIL("render returned %d after an allocation failure", rc);
    if (!tr.failed && rc == PB_ENOMEM) FAIL("PB_ENOMEM without an allocation failure");
    pb_buf_free(&b);

    free(vals);
    free(none);
    free(vstart);
    free(vend);
    pb_template_free(t);
    return 0;
}
