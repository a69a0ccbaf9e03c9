/* template.c - parse postback code into segments; render from values. */
#include "template.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "encode.h"
#include "json.h"
#include "macros.h"

static int is_name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_';
}

/* Parsing state: growable segment and name arrays plus a hash of names. */
typedef struct parser {
    pb_template *t;
    size_t *hash; /* open addressing; slot+1, 0 = empty */
    size_t hash_cap;
} parser;

static uint32_t name_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    size_t i;
    for (i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

static int grow(const pb_alloc *a, void **p, size_t *cap, size_t need, size_t elem)
{
    size_t ncap;
    void *np;
    if (need <= *cap) return PB_OK;
    ncap = *cap ? *cap * 2 : 8;
    while (ncap < need) ncap *= 2;
    if (ncap > (size_t)-1 / elem) return PB_ENOMEM;
    np = pb_realloc(a, *p, *cap * elem, ncap * elem);
    if (!np) return PB_ENOMEM;
    *p = np;
    *cap = ncap;
    return PB_OK;
}

static int rehash(parser *ps, size_t ncap)
{
    pb_template *t = ps->t;
    size_t *h = pb_malloc(t->alloc, ncap * sizeof *h);
    size_t i;
    if (!h) return PB_ENOMEM;
    memset(h, 0, ncap * sizeof *h);
    for (i = 0; i < t->nnames; i++) {
        size_t j = name_hash(t->src + t->names[i].off, t->names[i].len) & (ncap - 1);
        while (h[j]) j = (j + 1) & (ncap - 1);
        h[j] = i + 1;
    }
    pb_free(t->alloc, ps->hash, ps->hash_cap * sizeof *h);
    ps->hash = h;
    ps->hash_cap = ncap;
    return PB_OK;
}

/* The slot of the name at src[off..off+len), adding it when new. */
static int intern(parser *ps, size_t off, size_t len, size_t *slot)
{
    pb_template *t = ps->t;
    const char *name = t->src + off;
    size_t j;
    int rc;
    if ((t->nnames + 1) * 2 > ps->hash_cap) {
        if ((rc = rehash(ps, ps->hash_cap ? ps->hash_cap * 2 : 16)) != PB_OK) return rc;
    }
    j = name_hash(name, len) & (ps->hash_cap - 1);
    while (ps->hash[j]) {
        pb_name *n = &t->names[ps->hash[j] - 1];
        if (n->len == len && memcmp(t->src + n->off, name, len) == 0) {
            *slot = ps->hash[j] - 1;
            return PB_OK;
        }
        j = (j + 1) & (ps->hash_cap - 1);
    }
    if ((rc = grow(t->alloc, (void **)&t->names, &t->names_cap, t->nnames + 1,
                   sizeof *t->names)) != PB_OK)
        return rc;
    t->names[t->nnames].off = off;
    t->names[t->nnames].len = len;
    t->names[t->nnames].doc = pb_macro_index(name, len);
    ps->hash[j] = t->nnames + 1;
    *slot = t->nnames++;
    return PB_OK;
}

static int add_segment(parser *ps, int kind, size_t off, size_t len, size_t slot)
{
    pb_template *t = ps->t;
    int rc;
    if (kind == PB_SEG_LITERAL && len == 0) return PB_OK;
    if ((rc = grow(t->alloc, (void **)&t->segs, &t->segs_cap, t->nsegs + 1,
                   sizeof *t->segs)) != PB_OK)
        return rc;
    t->segs[t->nsegs].kind = kind;
    t->segs[t->nsegs].off = off;
    t->segs[t->nsegs].len = len;
    t->segs[t->nsegs].slot = slot;
    t->nsegs++;
    if (kind == PB_SEG_LITERAL)
        t->literal_len += len;
    else
        t->nmacros++;
    return PB_OK;
}

size_t pb_placeholder(const char *s, size_t n, size_t i, size_t *noff, size_t *nlen)
{
    size_t j;
    if (s[i] == '{') {
        for (j = i + 1; j < n && is_name_char((unsigned char)s[j]); j++) {}
        if (j > i + 1 && j < n && s[j] == '}') {
            *noff = i + 1;
            *nlen = j - i - 1;
            return j + 1 - i;
        }
    } else if (s[i] == '%' && n - i >= 3 && s[i + 1] == '7' && (s[i + 2] == 'B' || s[i + 2] == 'b')) {
        for (j = i + 3; j < n && is_name_char((unsigned char)s[j]); j++) {}
        if (j > i + 3 && n - j >= 3 && s[j] == '%' && s[j + 1] == '7' &&
            (s[j + 2] == 'D' || s[j + 2] == 'd')) {
            *noff = i + 3;
            *nlen = j - i - 3;
            return j + 3 - i;
        }
    }
    return 0;
}

pb_template *pb_template_parse(const char *src, size_t len, const pb_alloc *a)
{
    parser ps;
    pb_template *t;
    size_t i = 0, lit = 0;

    t = pb_malloc(a, sizeof *t);
    if (!t) return NULL;
    memset(t, 0, sizeof *t);
    t->alloc = a;
    t->src = pb_malloc(a, len + 1);
    if (!t->src) goto fail_nomem;
    if (len) memcpy(t->src, src, len);
    t->src[len] = '\0';
    t->src_len = len;

    memset(&ps, 0, sizeof ps);
    ps.t = t;
    while (i < len) {
        size_t noff, nlen, slot, plen;
        unsigned char c = (unsigned char)t->src[i];
        if ((c != '{' && c != '%') || !(plen = pb_placeholder(t->src, len, i, &noff, &nlen))) {
            i++;
            continue;
        }
        if (add_segment(&ps, PB_SEG_LITERAL, lit, i - lit, 0) != PB_OK ||
            intern(&ps, noff, nlen, &slot) != PB_OK ||
            add_segment(&ps, PB_SEG_MACRO, i, plen, slot) != PB_OK)
            goto fail;
        i += plen;
        lit = i;
    }
    if (add_segment(&ps, PB_SEG_LITERAL, lit, len - lit, 0) != PB_OK) goto fail;
    pb_free(a, ps.hash, ps.hash_cap * sizeof *ps.hash);
    return t;

fail:
    pb_free(a, ps.hash, ps.hash_cap * sizeof *ps.hash);
    pb_template_free(t);
    return NULL;
fail_nomem:
    pb_free(a, t, sizeof *t);
    return NULL;
}

void pb_template_free(pb_template *t)
{
    const pb_alloc *a;
    if (!t) return;
    a = t->alloc;
    pb_free(a, t->segs, t->segs_cap * sizeof *t->segs);
    pb_free(a, t->names, t->names_cap * sizeof *t->names);
    pb_free(a, t->src, t->src_len + 1);
    pb_free(a, t, sizeof *t);
}

/* Formats d as "%.14g" would, into tmp (at least 40 bytes); returns the
 * length. Numbers with few decimals (payouts, amounts) take a short path:
 * when d * 10^k is an integer m of at most 14 digits and m / 10^k gives d
 * back exactly, d is the double nearest to m / 10^k, and %.14g prints that
 * decimal; anything else goes through snprintf. */
static int format_float(char *tmp, size_t size, double d)
{
    static const double pow10[] = { 1, 10, 100, 1000, 10000, 100000, 1000000 };
    double a = d < 0 ? -d : d;
    int k;
    if (a >= 1e-4 && a < 1e14) {
        /* (from k = 1: an integral d is written by the caller) */
        for (k = 1; k <= 6; k++) {
            double scaled = a * pow10[k], m = floor(scaled);
            if (scaled == m && m < 1e14 && m / pow10[k] == a) {
                char p[PB_JSON_NUMBER_MAX];
                size_t n = pb_json_format_int(p, (long long)m), out = 0, ip;
                if (d < 0) tmp[out++] = '-';
                /* n digits, k of them decimals (zeros in front when n <= k) */
                if (n <= (size_t)k) {
                    tmp[out++] = '0';
                    tmp[out++] = '.';
                    for (ip = n; ip < (size_t)k; ip++) tmp[out++] = '0';
                    memcpy(tmp + out, p, n);
                    out += n;
                } else {
                    memcpy(tmp + out, p, n - (size_t)k);
                    out += n - (size_t)k;
                    tmp[out++] = '.';
                    memcpy(tmp + out, p + n - (size_t)k, (size_t)k);
                    out += (size_t)k;
                }
                while (tmp[out - 1] == '0') out--; /* m/10^k with the smallest k has none */
                if (tmp[out - 1] == '.') out--;
                return (int)out;
            }
        }
    }
    return snprintf(tmp, size, "%.14g", d);
}

int pb_value_format(pb_buf *out, const pb_value *v, int encode)
{
    char tmp[40];
    int n;
    switch (v->kind) {
    case PB_V_STRING:
        return encode == PB_ENCODE_URL ? pb_url_encode(out, v->s, v->len)
                                       : pb_buf_append(out, v->s, v->len);
    case PB_V_INT:
        n = (int)pb_json_format_int(tmp, v->i);
        break;
    case PB_V_FLOAT:
        if (!isfinite(v->d)) return PB_RERR_NONFINITE;
        /* An integral float up to 2^53 is an integer a JSON decoder handed
         * over (Lua 5.4's cjson gives 123456789012345.0): all its digits. */
        if (fabs(v->d) <= PB_JSON_EXACT_MAX && v->d == floor(v->d) && !(v->d == 0 && signbit(v->d))) {
            n = (int)pb_json_format_int(tmp, (long long)v->d);
        } else {
            n = format_float(tmp, sizeof tmp, v->d);
        }
        break;
    case PB_V_BOOL:
        return pb_buf_puts(out, v->i ? "true" : "false");
    default:
        return PB_RERR_BADTYPE;
    }
    if (n < 0 || (size_t)n >= sizeof tmp) return PB_RERR_BADTYPE;
    /* Digits, '-' and '.' are unreserved; only an exponent's '+' needs encoding. */
    return encode == PB_ENCODE_URL ? pb_url_encode(out, tmp, (size_t)n)
                                   : pb_buf_append(out, tmp, (size_t)n);
}

/* Renders one placeholder (ph, phlen as written; its name at name, nlen)
 * with value v. doc is the name's index among the documented macros (-1 for
 * an undocumented one), or -2 when not known yet (then looked up only if
 * needed). */
static int render_macro(pb_buf *out, const char *ph, size_t phlen, const char *name,
                        size_t nlen, int doc, const pb_value *v, const pb_render_opts *opts)
{
    if (v->kind == PB_V_NONE) {
        if (doc == -2) doc = pb_macro_index(name, nlen);
        /* Undocumented names stay literal; documented ones obey `missing`. */
        if (doc < 0 || opts->missing == PB_MISSING_KEEP) return pb_buf_append(out, ph, phlen);
        if (opts->missing == PB_MISSING_ERROR) return PB_RERR_MISSING;
        return PB_OK;
    }
    return pb_value_format(out, v, opts->encode);
}

int pb_template_render(const pb_template *t, const pb_value *vals,
                       const pb_render_opts *opts, pb_buf *out, pb_render_err *err)
{
    size_t i;
    int rc;
    /* One reservation for the literal text and a guess for the values. */
    if ((rc = pb_buf_reserve(out, t->literal_len + t->nmacros * 16)) != PB_OK &&
        rc != PB_ELIMIT) {
        err->code = rc;
        err->slot = 0;
        err->name_off = err->name_len = 0;
        return rc;
    }
    for (i = 0; i < t->nsegs; i++) {
        const pb_segment *sg = &t->segs[i];
        if (sg->kind == PB_SEG_LITERAL) {
            rc = pb_buf_append(out, t->src + sg->off, sg->len);
        } else {
            const pb_name *nm = &t->names[sg->slot];
            rc = render_macro(out, t->src + sg->off, sg->len, t->src + nm->off, nm->len, nm->doc,
                              &vals[sg->slot], opts);
        }
        if (rc != PB_OK) {
            err->code = rc;
            err->slot = sg->kind == PB_SEG_MACRO ? sg->slot : 0;
            err->name_off = sg->kind == PB_SEG_MACRO ? t->names[sg->slot].off : 0;
            err->name_len = sg->kind == PB_SEG_MACRO ? t->names[sg->slot].len : 0;
            return rc;
        }
    }
    return PB_OK;
}

int pb_render_stream(const char *src, size_t len, pb_lookup_fn lookup, void *ud,
                     const pb_render_opts *opts, pb_buf *out, pb_render_err *err)
{
    size_t i = 0, lit = 0;
    int rc;
    err->slot = 0;
    err->name_off = err->name_len = 0;
    if ((rc = pb_buf_reserve(out, len + 32)) != PB_OK && rc != PB_ELIMIT) {
        err->code = rc;
        return rc;
    }
    while (i < len) {
        size_t noff, nlen, plen;
        pb_value v;
        while (i < len && src[i] != '{' && src[i] != '%') i++;
        if (i == len) break;
        if (!(plen = pb_placeholder(src, len, i, &noff, &nlen))) {
            i++;
            continue;
        }
        if ((rc = pb_buf_append(out, src + lit, i - lit)) != PB_OK) goto fail;
        memset(&v, 0, sizeof v);
        lookup(ud, src + noff, nlen, &v);
        rc = render_macro(out, src + i, plen, src + noff, nlen, -2, &v, opts);
        if (rc != PB_OK) {
            err->name_off = noff;
            err->name_len = nlen;
            goto fail;
        }
        i += plen;
        lit = i;
    }
    if ((rc = pb_buf_append(out, src + lit, len - lit)) == PB_OK) return PB_OK;
fail:
    err->code = rc;
    return rc;
}
