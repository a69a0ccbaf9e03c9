/* test_core.c - unit tests of core/ in plain C (no Lua), printing TAP.
 *
 *   make build/ctest/test_core && build/ctest/test_core
 *
 * Built with ASan+UBSan (LeakSanitizer on). Every test is one TAP line; a
 * failing one is followed by "# " lines naming the check, the file:line and
 * what was expected. Exits 1 when anything failed.
 *
 * Sections: pb_buf, percent-encoding, templates (parse + every rendering
 * rule), value formatting, URL checks, macros, validation, spools (real files
 * in a temporary directory, write failures injected), and allocation
 * failure (a counting allocator that fails the Nth request and tracks every
 * block's size, so a leak or a wrong osize shows up at once). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/encode.h"
#include "spec/c/test_helpers.h"
#include "core/json.h"
#include "core/macros.h"
#include "core/suggest.h"
#include "core/spool.h"
#include "core/netpolicy.h"
#include "core/template.h"
#include "core/url.h"
#include "core/validate.h"

/* ---- a tiny TAP harness --------------------------------------------------- */

static int tap_n, tap_failed;
static int cur_fail;
static char diag_buf[16384];
static size_t diag_len;

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static void diagf(const char *fmt, ...)
{
    va_list ap;
    int n;
    if (diag_len >= sizeof diag_buf - 2) return;
    va_start(ap, fmt);
    n = vsnprintf(diag_buf + diag_len, sizeof diag_buf - diag_len - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    diag_len += (size_t)n < sizeof diag_buf - diag_len - 1 ? (size_t)n
                                                           : sizeof diag_buf - diag_len - 2;
    diag_buf[diag_len++] = '\n';
    diag_buf[diag_len] = '\0';
}


static void test_end(const char *name)
{
    tap_n++;
    if (cur_fail) tap_failed++;
    printf("%s %d - %s\n", cur_fail ? "not ok" : "ok", tap_n, name);
    if (diag_len) {
        char *line = diag_buf, *nl;
        while (*line && (nl = strchr(line, '\n')) != NULL) {
            printf("# %.*s\n", (int)(nl - line), line);
            line = nl + 1;
        }
    }
    cur_fail = 0;
    diag_len = 0;
    diag_buf[0] = '\0';
    fflush(stdout);
}

static void run(const char *name, void (*fn)(void))
{
    fn();
    test_end(name);
}

#define CHECK(cond)                                                      \
    do {                                                                 \
        if (!(cond)) {                                                   \
            cur_fail++;                                                  \
            diagf("%s:%d: check failed: %s", __FILE__, __LINE__, #cond); \
        }                                                                \
    } while (0)

#define CHECK_INT(got, exp)                                                            \
    do {                                                                               \
        long long g_ = (long long)(got), e_ = (long long)(exp);                        \
        if (g_ != e_) {                                                                \
            cur_fail++;                                                                \
            diagf("%s:%d: %s: expected %lld, got %lld", __FILE__, __LINE__, #got, e_, g_); \
        }                                                                              \
    } while (0)

/* Compares a byte range with an expected byte range. */
#define CHECK_MEM(got, glen, exp, elen)                                              \
    do {                                                                             \
        const char *gp_ = (got), *ep_ = (exp);                                       \
        size_t gl_ = (glen), el_ = (elen);                                           \
        if (gl_ != el_ || (el_ && memcmp(gp_, ep_, el_) != 0)) {                     \
            cur_fail++;                                                              \
            diagf("%s:%d: %s:", __FILE__, __LINE__, #got);                           \
            diagf("  expected %s (%zu bytes)", show(ep_, el_), el_);                 \
            diagf("  got      %s (%zu bytes)", show(gp_, gl_), gl_);                 \
        }                                                                            \
    } while (0)

#define CHECK_STR(got, exp)                                    \
    do {                                                       \
        const char *gs_ = (got), *es_ = (exp);                 \
        CHECK_MEM(gs_, gs_ ? strlen(gs_) : 0, es_, strlen(es_)); \
    } while (0)

#define CHECK_BUF(b, exp) CHECK_MEM(pb_buf_str(&(b)), (b).len, exp, strlen(exp))

/* The unknown macro a validation error names (pointer + length). */
#define CHECK_MACRO(e, exp) CHECK_MEM((e).macro, (e).macro ? (e).macro_len : 0, exp, strlen(exp))

/* ---- a counting allocator ------------------------------------------------- */

typedef struct blk {
    void *p;
    size_t n;
} blk;

typedef struct counter {
    long nalloc;   /* requests with nsize > 0 so far */
    long fail_at;  /* refuse the request with this number; 0 = never */
    long failed;   /* requests refused */
    size_t live;   /* bytes allocated now */
    size_t peak;
    long bad;      /* frees/reallocs of an unknown pointer or with a wrong osize */
    char why[200]; /* the first bad one */
    blk *blks;
    size_t nblks, cap;
} counter;

static void counter_init(counter *c, long fail_at)
{
    memset(c, 0, sizeof *c);
    c->fail_at = fail_at;
}

static void counter_done(counter *c)
{
    free(c->blks);
    c->blks = NULL;
    c->nblks = c->cap = 0;
}

static void *counter_fn(void *ud, void *ptr, size_t osize, size_t nsize)
{
    counter *c = (counter *)ud;
    size_t k = 0;
    int found = 0;
    void *np;
    if (ptr) {
        for (k = 0; k < c->nblks; k++)
            if (c->blks[k].p == ptr) {
                found = 1;
                break;
            }
        if (!found) {
            if (!c->bad++)
                snprintf(c->why, sizeof c->why, "free/realloc of unknown pointer %p", ptr);
        } else if (c->blks[k].n != osize) {
            if (!c->bad++)
                snprintf(c->why, sizeof c->why,
                         "osize %zu passed for a block of %zu bytes (nsize %zu)", osize,
                         c->blks[k].n, nsize);
        }
    }
    if (nsize == 0) {
        if (found) {
            c->live -= c->blks[k].n;
            c->blks[k] = c->blks[--c->nblks];
        }
        free(ptr);
        return NULL;
    }
    c->nalloc++;
    if (c->fail_at && c->nalloc == c->fail_at) {
        c->failed++;
        return NULL;
    }
    np = realloc(ptr, nsize);
    if (!np) return NULL;
    if (found) {
        c->live -= c->blks[k].n;
        c->blks[k].p = np;
        c->blks[k].n = nsize;
    } else {
        if (c->nblks == c->cap) {
            size_t ncap = c->cap ? c->cap * 2 : 16;
            blk *nb = (blk *)realloc(c->blks, ncap * sizeof *nb);
            if (!nb) abort();
            c->blks = nb;
            c->cap = ncap;
        }
        c->blks[c->nblks].p = np;
        c->blks[c->nblks].n = nsize;
        c->nblks++;
    }
    c->live += nsize;
    if (c->live > c->peak) c->peak = c->live;
    return np;
}

/* Checks that everything allocated through c was given back correctly. */
#define CHECK_CLEAN(c, step)                                                           \
    do {                                                                               \
        if ((c).live != 0 || (c).nblks != 0) {                                         \
            cur_fail++;                                                                \
            diagf("%s:%d: step %ld: %zu bytes in %zu blocks still live", __FILE__,     \
                  __LINE__, (long)(step), (c).live, (c).nblks);                        \
        }                                                                              \
        if ((c).bad) {                                                                 \
            cur_fail++;                                                                \
            diagf("%s:%d: step %ld: %ld bad frees: %s", __FILE__, __LINE__,            \
                  (long)(step), (c).bad, (c).why);                                     \
        }                                                                              \
    } while (0)

/* ---- values --------------------------------------------------------------- */

static pb_value vnone(void)
{
    pb_value v;
    memset(&v, 0, sizeof v);
    return v;
}
static pb_value vstrn(const char *s, size_t n)
{
    pb_value v = vnone();
    v.kind = PB_V_STRING;
    v.s = s;
    v.len = n;
    return v;
}
static pb_value vstr(const char *s)
{
    return vstrn(s, strlen(s));
}
static pb_value vint(long long i)
{
    pb_value v = vnone();
    v.kind = PB_V_INT;
    v.i = i;
    return v;
}
static pb_value vflt(double d)
{
    pb_value v = vnone();
    v.kind = PB_V_FLOAT;
    v.d = d;
    return v;
}
static pb_value vbool(int b)
{
    pb_value v = vnone();
    v.kind = PB_V_BOOL;
    v.i = b;
    return v;
}
static pb_value vbad(void)
{
    pb_value v = vnone();
    v.kind = PB_V_BAD;
    v.s = "table";
    return v;
}

typedef struct kv {
    const char *name;
    pb_value v;
} kv;

/* Renders code with the named values; returns the render code, output in *out
 * (caller frees), err filled. */
static int render_kv(const char *code, size_t clen, const kv *kvs, size_t nkv, int missing,
                     int encode, pb_buf *out, pb_render_err *err, pb_template **tout)
{
    pb_template *t = pb_template_parse(code, clen, NULL);
    pb_value *vals;
    pb_render_opts ro;
    size_t i, k;
    int rc;
    if (!t) return -100;
    vals = (pb_value *)calloc(t->nnames + 1, sizeof *vals);
    for (i = 0; i < t->nnames; i++)
        for (k = 0; k < nkv; k++)
            if (strlen(kvs[k].name) == t->names[i].len &&
                memcmp(kvs[k].name, t->src + t->names[i].off, t->names[i].len) == 0)
                vals[i] = kvs[k].v;
    ro.missing = missing;
    ro.encode = encode;
    pb_buf_init(out, NULL);
    err->code = 12345;
    err->slot = 12345;
    rc = pb_template_render(t, vals, &ro, out, err);
    free(vals);
    if (tout)
        *tout = t;
    else
        pb_template_free(t);
    return rc;
}

/* One rendering rule: the expected output (rc OK) or error (rc and the name
 * of the macro at fault). */
static void rcase(const char *code, const kv *kvs, size_t nkv, int missing, int encode,
                  int exp_rc, const char *exp, const char *exp_name)
{
    pb_buf out;
    pb_render_err err;
    pb_template *t = NULL;
    int rc = render_kv(code, strlen(code), kvs, nkv, missing, encode, &out, &err, &t);
    CHECK_INT(rc, exp_rc);
    if (exp_rc == PB_OK) {
        if (rc == PB_OK) CHECK_BUF(out, exp);
    } else if (rc == exp_rc) {
        CHECK_INT(err.code, exp_rc);
        if (exp_name && t && err.slot < t->nnames)
            CHECK_MEM(t->src + t->names[err.slot].off, t->names[err.slot].len, exp_name,
                      strlen(exp_name));
        else if (exp_name)
            CHECK(err.slot < t->nnames);
    }
    if (cur_fail) diagf("  code %s missing=%d encode=%d", show(code, strlen(code)), missing, encode);
    pb_template_free(t);
    pb_buf_free(&out);
}

#define NKV(a) (sizeof(a) / sizeof((a)[0]))

/* ==== the counting allocator itself ========================================= */

static void t_counter_selftest(void)
{
    counter c;
    pb_alloc a;
    void *p, *q;
    counter_init(&c, 3);
    a.fn = counter_fn;
    a.ud = &c;
    p = pb_malloc(&a, 10);
    q = pb_malloc(&a, 20);
    CHECK(p && q);
    CHECK_INT(c.live, 30);
    CHECK(pb_malloc(&a, 5) == NULL); /* the 3rd request fails */
    CHECK_INT(c.failed, 1);
    p = pb_realloc(&a, p, 10, 100);
    CHECK(p != NULL);
    CHECK_INT(c.live, 120);
    pb_free(&a, q, 19); /* wrong osize: noticed */
    CHECK_INT(c.bad, 1);
    CHECK_INT(c.live, 100);
    CHECK(c.nblks == 1); /* p is still live: a leak would be noticed */
    pb_free(&a, p, 100);
    CHECK_INT(c.live, 0);
    CHECK_INT(c.nblks, 0);
    counter_done(&c);
}

/* ==== pb_buf ================================================================ */

static void t_buf_init(void)
{
    pb_buf b;
    pb_buf_init(&b, NULL);
    CHECK(b.data == NULL);
    CHECK_INT(b.len, 0);
    CHECK_INT(b.cap, 0);
    CHECK_INT(b.limit, 0);
    CHECK_STR(pb_buf_str(&b), "");
    CHECK_INT(pb_buf_append(&b, "x", 0), PB_OK);
    CHECK(b.data == NULL); /* an empty append allocates nothing */
    CHECK_INT(pb_buf_puts(&b, ""), PB_OK);
    CHECK(b.data == NULL);
    pb_buf_reset(&b); /* fine on a buffer that never allocated */
    pb_buf_free(&b);
    pb_buf_free(&b);
    CHECK(b.data == NULL);
}

static void t_buf_growth(void)
{
    pb_buf b;
    char ref[5000];
    size_t i, total = 0, lastcap = 0;
    int grew = 0;
    pb_buf_init(&b, NULL);
    CHECK_INT(pb_buf_putc(&b, 'a'), PB_OK);
    CHECK_INT(b.cap, 64); /* first block */
    CHECK_BUF(b, "a");
    pb_buf_reset(&b);
    /* Appends of every size from 1 to 90: the contents always match and stay
     * NUL-terminated, the capacity doubles. */
    for (i = 1; i <= 90 && total + i < sizeof ref; i++) {
        char chunk[100];
        size_t k;
        for (k = 0; k < i; k++) chunk[k] = (char)('A' + (total + k) % 26);
        memcpy(ref + total, chunk, i);
        total += i;
        if (pb_buf_append(&b, chunk, i) != PB_OK) {
            CHECK(!"append failed");
            break;
        }
        CHECK(b.cap >= b.len + 1);
        CHECK(b.data[b.len] == '\0');
        if (b.cap != lastcap) {
            if (lastcap) CHECK_INT(b.cap, lastcap * 2);
            lastcap = b.cap;
            grew++;
        }
    }
    CHECK_MEM(b.data, b.len, ref, total);
    CHECK(grew >= 6); /* 64 .. 4096 */
    CHECK_INT(strlen(pb_buf_str(&b)), total);
    /* A big single append past a doubling */
    pb_buf_reset(&b);
    {
        char *big = (char *)malloc(100000);
        memset(big, 'z', 100000);
        CHECK_INT(pb_buf_append(&b, big, 100000), PB_OK);
        CHECK_INT(b.len, 100000);
        CHECK(b.cap >= 100001);
        CHECK(b.data[99999] == 'z' && b.data[100000] == '\0');
        free(big);
    }
    /* reserve: room for extra + NUL, len unchanged */
    pb_buf_free(&b);
    CHECK_INT(pb_buf_reserve(&b, 200), PB_OK);
    CHECK(b.cap >= 201);
    CHECK_INT(b.len, 0);
    CHECK_INT(pb_buf_reserve(&b, (size_t)-1), PB_ENOMEM); /* overflow is refused */
    CHECK_INT(b.len, 0);
    pb_buf_free(&b);
    /* a huge request reaches the allocator, whose refusal is PB_ENOMEM */
    {
        counter c;
        pb_alloc a;
        counter_init(&c, 1);
        a.fn = counter_fn;
        a.ud = &c;
        pb_buf_init(&b, &a);
        CHECK_INT(pb_buf_reserve(&b, (size_t)-1 - 1), PB_ENOMEM);
        c.fail_at = c.nalloc + 1;
        CHECK_INT(pb_buf_reserve(&b, (size_t)-1 / 2 + 10), PB_ENOMEM);
        CHECK(b.data == NULL && b.cap == 0);
        pb_buf_free(&b);
        CHECK_CLEAN(c, 0);
        counter_done(&c);
    }
}

static void t_buf_limit(void)
{
    pb_buf b;
    pb_buf_init(&b, NULL);
    b.limit = 10;
    CHECK_INT(pb_buf_append(&b, "0123456789", 10), PB_OK); /* exactly the limit */
    CHECK_INT(pb_buf_putc(&b, 'x'), PB_ELIMIT);
    CHECK_INT(pb_buf_puts(&b, "yz"), PB_ELIMIT);
    CHECK_INT(pb_buf_printf(&b, "%d", 5), PB_ELIMIT);
    CHECK_INT(pb_url_encode(&b, " ", 1), PB_ELIMIT);
    CHECK_INT(pb_url_decode(&b, "a", 1), PB_ELIMIT);
    CHECK_BUF(b, "0123456789"); /* failed appends change nothing */
    CHECK_INT(pb_buf_append(&b, "", 0), PB_OK);
    pb_buf_reset(&b);
    CHECK_INT(pb_buf_append(&b, "01234567890", 11), PB_ELIMIT);
    CHECK_INT(b.len, 0);
    CHECK_INT(pb_buf_reserve(&b, 11), PB_ELIMIT);
    CHECK_INT(pb_buf_reserve(&b, 10), PB_OK);
    CHECK_INT(pb_buf_append(&b, "01234", 5), PB_OK);
    CHECK_INT(pb_buf_reserve(&b, 6), PB_ELIMIT);
    CHECK_INT(pb_buf_append(&b, "56789", 5), PB_OK);
    CHECK_BUF(b, "0123456789");
    pb_buf_free(&b);
}

static void t_buf_printf(void)
{
    pb_buf b;
    char s100[101], exp[64];
    pb_buf_init(&b, NULL);
    CHECK_INT(pb_buf_printf(&b, "%d-%s-%lld", 42, "x", LLONG_MIN), PB_OK);
    CHECK_BUF(b, "42-x--9223372036854775808");
    pb_buf_reset(&b);
    memset(s100, 'q', 100);
    s100[100] = '\0';
    /* at most 64 bytes of output including the NUL: 63 bytes appended */
    CHECK_INT(pb_buf_printf(&b, "%s", s100), PB_OK);
    memset(exp, 'q', 63);
    exp[63] = '\0';
    CHECK_BUF(b, exp);
    pb_buf_reset(&b);
    CHECK_INT(pb_buf_printf(&b, "%.63s", s100), PB_OK);
    CHECK_INT(b.len, 63);
    pb_buf_reset(&b);
    CHECK_INT(pb_buf_printf(&b, "%.64s", s100), PB_OK);
    CHECK_INT(b.len, 63);
    pb_buf_reset(&b);
    CHECK_INT(pb_buf_printf(&b, "%s", ""), PB_OK);
    CHECK_INT(b.len, 0);
    CHECK_INT(pb_buf_printf(&b, "%.14g", 0.1), PB_OK);
    CHECK_BUF(b, "0.1");
    pb_buf_free(&b);
}

/* buf.h: pb_buf_str is "" when nothing was appended. A reserve alone
 * allocates the first block without writing its NUL (core/buf.c,
 * pb_buf_reserve), and pb_buf_str then returns uninitialised bytes.
 * pb_template_render reserves up front (core/template.c:231), so rendering an
 * empty result into a fresh buffer shows it. */
static void t_buf_str_after_reserve(void)
{
    pb_buf b;
    pb_template *t;
    pb_value v[1];
    pb_render_opts ro = { PB_MISSING_EMPTY, PB_ENCODE_URL };
    pb_render_err err;
    pb_buf_init(&b, NULL);
    CHECK_INT(pb_buf_reserve(&b, 10), PB_OK);
    CHECK_INT(b.len, 0);
    CHECK_INT((unsigned char)pb_buf_str(&b)[0], 0); /* not strlen: it would run off */
    pb_buf_free(&b);
    t = pb_template_parse("{click_id}", 10, NULL);
    CHECK(t != NULL);
    if (!t) return;
    v[0] = vnone();
    pb_buf_init(&b, NULL);
    CHECK_INT(pb_template_render(t, v, &ro, &b, &err), PB_OK);
    CHECK_INT(b.len, 0);
    CHECK_INT((unsigned char)pb_buf_str(&b)[0], 0); /* not strlen: it would run off */
    pb_buf_free(&b);
    pb_template_free(t);
}

static void t_buf_reset_free(void)
{
    pb_buf b;
    char *p;
    size_t cap;
    pb_buf_init(&b, NULL);
    CHECK_INT(pb_buf_puts(&b, "hello world"), PB_OK);
    p = b.data;
    cap = b.cap;
    pb_buf_reset(&b);
    CHECK_INT(b.len, 0);
    CHECK(b.data == p); /* keeps the memory */
    CHECK_INT(b.cap, cap);
    CHECK_STR(pb_buf_str(&b), "");
    CHECK_INT(pb_buf_puts(&b, "again"), PB_OK);
    CHECK(b.data == p);
    CHECK_BUF(b, "again");
    pb_buf_free(&b);
    CHECK(b.data == NULL);
    CHECK_INT(b.len, 0);
    CHECK_INT(b.cap, 0);
    CHECK_STR(pb_buf_str(&b), "");
    CHECK_INT(pb_buf_puts(&b, "reuse after free"), PB_OK);
    CHECK_BUF(b, "reuse after free");
    pb_buf_free(&b);
}

static void t_buf_allocator(void)
{
    counter c;
    pb_alloc a;
    pb_buf b;
    long n;
    int i;
    counter_init(&c, 0);
    a.fn = counter_fn;
    a.ud = &c;
    pb_buf_init(&b, &a);
    for (i = 0; i < 1000; i++) CHECK_INT(pb_buf_puts(&b, "0123456789"), PB_OK);
    CHECK_INT(b.len, 10000);
    CHECK(c.live == b.cap);
    pb_buf_free(&b);
    CHECK_CLEAN(c, 0);
    counter_done(&c);
    /* A failing growth leaves the buffer as it was. */
    for (n = 1; n <= 3; n++) {
        counter_init(&c, n);
        pb_buf_init(&b, &a);
        for (i = 0; i < 40; i++) {
            size_t before = b.len;
            int rc = pb_buf_puts(&b, "0123456789");
            if (rc != PB_OK) {
                CHECK_INT(rc, PB_ENOMEM);
                CHECK_INT(b.len, before);
                CHECK(before == 0 || (b.data[before] == '\0' && b.data[0] == '0'));
                break;
            }
        }
        CHECK_INT(c.failed, 1);
        pb_buf_free(&b);
        CHECK_CLEAN(c, n);
        counter_done(&c);
    }
    /* pb_malloc of 0 bytes allocates nothing; pb_free(NULL) is a no-op */
    counter_init(&c, 0);
    CHECK(pb_malloc(&a, 0) == NULL);
    pb_free(&a, NULL, 10);
    CHECK_INT(c.nalloc, 0);
    counter_done(&c);
    CHECK(pb_alloc_default() != NULL && pb_alloc_default()->fn != NULL);
}

/* ==== percent-encoding ===================================================== */

static int ref_unreserved(int c)
{
    return strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~", c) != NULL &&
           c != 0;
}

static void t_encode_all_bytes(void)
{
    int c, bad = 0;
    for (c = 0; c < 256; c++) {
        char in = (char)c, exp[4];
        pb_buf b;
        pb_buf_init(&b, NULL);
        if (ref_unreserved(c)) {
            exp[0] = (char)c;
            exp[1] = '\0';
        } else {
            snprintf(exp, sizeof exp, "%%%02X", c);
        }
        if (pb_is_unreserved((unsigned char)c) != ref_unreserved(c)) {
            if (bad++ < 5) diagf("pb_is_unreserved(0x%02X) = %d", c, pb_is_unreserved((unsigned char)c));
            cur_fail++;
        }
        CHECK_INT(pb_url_encode(&b, &in, 1), PB_OK);
        if (b.len != strlen(exp) || memcmp(b.data, exp, b.len) != 0) {
            if (bad++ < 5) diagf("byte 0x%02X encoded as %s, expected %s", c, show(b.data, b.len), exp);
            cur_fail++;
        }
        if (pb_url_encoded_len(&in, 1) != strlen(exp)) {
            if (bad++ < 5) diagf("pb_url_encoded_len of byte 0x%02X = %zu", c, pb_url_encoded_len(&in, 1));
            cur_fail++;
        }
        pb_buf_free(&b);
    }
}

static void t_encode_string(void)
{
    char all[256];
    pb_buf b, d;
    size_t i, unres = 0;
    for (i = 0; i < 256; i++) {
        all[i] = (char)i;
        unres += (size_t)ref_unreserved((int)i);
    }
    pb_buf_init(&b, NULL);
    pb_buf_init(&d, NULL);
    CHECK_INT(pb_url_encode(&b, all, 256), PB_OK);
    CHECK_INT(b.len, unres + (256 - unres) * 3);
    CHECK_INT(pb_url_encoded_len(all, 256), b.len);
    CHECK_INT(unres, 66);
    for (i = 0; i < b.len; i++) {
        unsigned char c = (unsigned char)b.data[i];
        if (c == '%') {
            CHECK(i + 2 < b.len && strchr("0123456789ABCDEF", b.data[i + 1]) &&
                  strchr("0123456789ABCDEF", b.data[i + 2]));
            i += 2;
        } else {
            CHECK(ref_unreserved(c));
        }
    }
    CHECK_INT(pb_url_decode(&d, b.data, b.len), PB_OK);
    CHECK_MEM(d.data, d.len, all, 256);
    pb_buf_reset(&b);
    CHECK_INT(pb_url_encode(&b, "", 0), PB_OK);
    CHECK_INT(b.len, 0);
    CHECK_INT(pb_url_encode(&b, "a b/\xC3\xA9?&=+%~", 12), PB_OK);
    CHECK_BUF(b, "a%20b%2F%C3%A9%3F%26%3D%2B%25~");
    /* appends after what is there */
    CHECK_INT(pb_url_encode(&b, "x y", 3), PB_OK);
    CHECK_BUF(b, "a%20b%2F%C3%A9%3F%26%3D%2B%25~x%20y");
    /* an all-unreserved string is copied as is */
    pb_buf_reset(&b);
    CHECK_INT(pb_url_encode(&b, "Az09-._~", 8), PB_OK);
    CHECK_BUF(b, "Az09-._~");
    pb_buf_free(&b);
    pb_buf_free(&d);
}

static void t_hexval(void)
{
    int c;
    for (c = 0; c < 256; c++) {
        int exp = (c >= '0' && c <= '9') ? c - '0'
                : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
        if (pb_hexval((unsigned char)c) != exp) {
            cur_fail++;
            diagf("pb_hexval(0x%02X) = %d, expected %d", c, pb_hexval((unsigned char)c), exp);
        }
    }
}

static void dcase(const char *in, size_t n, const char *exp, size_t elen)
{
    pb_buf b;
    pb_buf_init(&b, NULL);
    CHECK_INT(pb_url_decode(&b, in, n), PB_OK);
    CHECK_MEM(pb_buf_str(&b), b.len, exp, elen);
    if (b.data) CHECK(b.data[b.len] == '\0');
    pb_buf_free(&b);
}
#define DCASE(in, exp) dcase(in, sizeof(in) - 1, exp, sizeof(exp) - 1)

static void t_url_decode(void)
{
    DCASE("", "");
    DCASE("abc", "abc");
    DCASE("%41", "A");
    DCASE("%4a%4A", "JJ");
    DCASE("%c3%A9", "\xC3\xA9");
    DCASE("a+b", "a+b"); /* not form decoding */
    DCASE("%20", " ");
    DCASE("%00", "\0");
    DCASE("%", "%");
    DCASE("%4", "%4");
    DCASE("ab%", "ab%");
    DCASE("ab%4", "ab%4");
    DCASE("%zz", "%zz");
    DCASE("%4g", "%4g");
    DCASE("%g4", "%g4");
    DCASE("%%41", "%A");
    DCASE("%2541", "%41"); /* decodes once */
    DCASE("%%%", "%%%");
    DCASE("100%25", "100%");
    DCASE("%7Bclick_id%7D", "{click_id}");
    /* appends */
    {
        pb_buf b;
        pb_buf_init(&b, NULL);
        CHECK_INT(pb_buf_puts(&b, "x="), PB_OK);
        CHECK_INT(pb_url_decode(&b, "%31%32", 6), PB_OK);
        CHECK_BUF(b, "x=12");
        pb_buf_free(&b);
    }
}

/* ==== templates: parsing ==================================================== */

static void t_parse_structure(void)
{
    const char *code = "ab{x}cd{y}%7Bx%7D{z}{y}";
    pb_template *t = pb_template_parse(code, strlen(code), NULL);
    CHECK(t != NULL);
    if (!t) return;
    CHECK_INT(t->nnames, 3);
    CHECK_INT(t->nmacros, 5);
    CHECK_INT(t->literal_len, 4);
    CHECK_INT(t->nsegs, 7);
    CHECK_INT(t->src_len, strlen(code));
    CHECK_MEM(t->src, t->src_len, code, strlen(code));
    CHECK(t->src[t->src_len] == '\0');
    if (t->nnames == 3) {
        CHECK_MEM(t->src + t->names[0].off, t->names[0].len, "x", 1);
        CHECK_MEM(t->src + t->names[1].off, t->names[1].len, "y", 1);
        CHECK_MEM(t->src + t->names[2].off, t->names[2].len, "z", 1);
        CHECK_INT(t->names[0].doc, -1);
    }
    if (t->nsegs == 7) {
        static const int kinds[7] = { 0, 1, 0, 1, 1, 1, 1 };
        static const size_t offs[7] = { 0, 2, 5, 7, 10, 17, 20 };
        static const size_t lens[7] = { 2, 3, 2, 3, 7, 3, 3 };
        static const size_t slots[7] = { 0, 0, 0, 1, 0, 2, 1 };
        size_t i;
        for (i = 0; i < 7; i++) {
            CHECK_INT(t->segs[i].kind, kinds[i]);
            CHECK_INT(t->segs[i].off, offs[i]);
            CHECK_INT(t->segs[i].len, lens[i]);
            if (kinds[i]) CHECK_INT(t->segs[i].slot, slots[i]);
        }
    }
    pb_template_free(t);
}

static void t_parse_order_and_doc(void)
{
    const char *code = "{zeta}{payout}{alpha}{payout}%7bzeta%7d{click_id}{Click_ID}";
    pb_template *t = pb_template_parse(code, strlen(code), NULL);
    static const char *const exp[] = { "zeta", "payout", "alpha", "click_id", "Click_ID" };
    size_t i;
    CHECK(t != NULL);
    if (!t) return;
    CHECK_INT(t->nnames, 5);
    CHECK_INT(t->nmacros, 7);
    CHECK_INT(t->literal_len, 0);
    CHECK_INT(t->nsegs, 7); /* no empty literal segments */
    for (i = 0; i < t->nnames && i < 5; i++) {
        CHECK_MEM(t->src + t->names[i].off, t->names[i].len, exp[i], strlen(exp[i]));
        CHECK_INT(t->names[i].doc, pb_macro_index(exp[i], strlen(exp[i])));
    }
    CHECK_INT(t->names[1].doc, 17); /* payout */
    CHECK_INT(t->names[3].doc, 0);  /* click_id */
    CHECK_INT(t->names[4].doc, -1); /* case matters */
    pb_template_free(t);
}

static void t_parse_empty(void)
{
    pb_template *t = pb_template_parse("", 0, NULL);
    pb_buf b;
    pb_render_opts ro = { PB_MISSING_ERROR, PB_ENCODE_URL };
    pb_render_err err;
    CHECK(t != NULL);
    if (!t) return;
    CHECK_INT(t->nsegs, 0);
    CHECK_INT(t->nnames, 0);
    CHECK_INT(t->nmacros, 0);
    CHECK_INT(t->literal_len, 0);
    pb_buf_init(&b, NULL);
    CHECK_INT(pb_template_render(t, NULL, &ro, &b, &err), PB_OK);
    CHECK_INT(b.len, 0);
    pb_buf_free(&b);
    pb_template_free(t);
    t = pb_template_parse(NULL, 0, NULL);
    CHECK(t != NULL);
    pb_template_free(t);
    pb_template_free(NULL);
}

static void t_parse_literal_only(void)
{
    static const char *const lits[] = {
        "plain text", "{}", "{a-b}", "{abc", "abc}", "{ a }", "{a.b}", "{a b}", "{{}}",
        "%7B%7D", "%7Ba-b%7D", "%7Babc", "%7Babc}", "{abc%7D", "%7", "%7B", "%", "{",
        "}", "%7D", "%7Cx%7D", "%8Bx%7D", "%7Bx%7E", "%7Bx%7", "{clické}", "{\xE2\x9C\x93}",
        "%%7B", "%7B{}%7D", "{%7B%7D}",
    };
    size_t i;
    for (i = 0; i < sizeof lits / sizeof lits[0]; i++) {
        pb_template *t = pb_template_parse(lits[i], strlen(lits[i]), NULL);
        CHECK(t != NULL);
        if (!t) continue;
        if (t->nmacros != 0 || t->nsegs != 1 || t->literal_len != strlen(lits[i])) {
            cur_fail++;
            diagf("%s: nmacros %zu nsegs %zu literal_len %zu", show(lits[i], strlen(lits[i])),
                  t->nmacros, t->nsegs, t->literal_len);
        }
        pb_template_free(t);
    }
}

static void t_parse_many_names(void)
{
    /* 100 distinct names, each used twice (both spellings): grows every array
     * and the name hash several times. */
    pb_buf code, exp;
    pb_template *t;
    pb_value vals[100];
    pb_render_opts ro = { PB_MISSING_EMPTY, PB_ENCODE_URL };
    pb_render_err err;
    char names[100][16];
    int i;
    pb_buf_init(&code, NULL);
    pb_buf_init(&exp, NULL);
    for (i = 0; i < 100; i++) {
        snprintf(names[i], sizeof names[i], "n%d", i * 7919 % 1000);
        pb_buf_printf(&code, "/{%s}", names[i]);
        pb_buf_printf(&exp, "/v%d", i);
    }
    for (i = 99; i >= 0; i--) {
        pb_buf_printf(&code, "&%%7B%s%%7D", names[i]);
        pb_buf_printf(&exp, "&v%d", i);
    }
    t = pb_template_parse(code.data, code.len, NULL);
    CHECK(t != NULL);
    if (t) {
        char vs[100][16];
        pb_buf out;
        CHECK_INT(t->nnames, 100);
        CHECK_INT(t->nmacros, 200);
        CHECK_INT(t->literal_len, 200);
        for (i = 0; i < 100 && (size_t)i < t->nnames; i++) {
            CHECK_MEM(t->src + t->names[i].off, t->names[i].len, names[i], strlen(names[i]));
            snprintf(vs[i], sizeof vs[i], "v%d", i);
            vals[i] = vstr(vs[i]);
        }
        pb_buf_init(&out, NULL);
        CHECK_INT(pb_template_render(t, vals, &ro, &out, &err), PB_OK);
        CHECK_MEM(out.data, out.len, exp.data, exp.len);
        pb_buf_free(&out);
        pb_template_free(t);
    }
    pb_buf_free(&code);
    pb_buf_free(&exp);
}

static void t_parse_nul_bytes(void)
{
    static const char code[] = "a\0{x}b\0%7Bx%7D";
    kv kvs[1];
    pb_buf out;
    pb_render_err err;
    kvs[0].name = "x";
    kvs[0].v = vstrn("\0Z", 2);
    CHECK_INT(render_kv(code, sizeof code - 1, kvs, 1, PB_MISSING_EMPTY, PB_ENCODE_NONE, &out,
                        &err, NULL),
              PB_OK);
    CHECK_MEM(out.data, out.len, "a\0\0Zb\0\0Z", 8);
    pb_buf_free(&out);
    CHECK_INT(render_kv(code, sizeof code - 1, kvs, 1, PB_MISSING_EMPTY, PB_ENCODE_URL, &out,
                        &err, NULL),
              PB_OK);
    CHECK_MEM(out.data, out.len, "a\0%00Zb\0%00Z", 12);
    pb_buf_free(&out);
}

/* ==== templates: rendering rules ============================================= */

static void t_render_basic(void)
{
    kv v[] = { { "click_id", vstr("abc-123") }, { "payout", vflt(1.25) },
               { "aff_id", vint(7) }, { "foo", vstr("bar") } };
    rcase("{click_id}", v, NKV(v), PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "abc-123", NULL);
    rcase("https://x.example/pb?c={click_id}&p={payout}&a={aff_id}", v, NKV(v),
          PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "https://x.example/pb?c=abc-123&p=1.25&a=7",
          NULL);
    /* an undocumented name with a value renders it */
    rcase("[{foo}]", v, NKV(v), PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "[bar]", NULL);
    /* repeated names share one slot: the same value everywhere */
    rcase("{aff_id}{aff_id}%7Baff_id%7D", v, NKV(v), PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK,
          "777", NULL);
    /* literal text is never encoded */
    rcase("a b/é?{aff_id}&x=%20", v, NKV(v), PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK,
          "a b/é?7&x=%20", NULL);
}

static void t_render_percent_placeholders(void)
{
    kv v[] = { { "click_id", vstr("C 1") } };
    rcase("%7Bclick_id%7D", v, 1, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "C%201", NULL);
    rcase("%7bclick_id%7d", v, 1, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "C%201", NULL);
    rcase("%7Bclick_id%7d", v, 1, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "C%201", NULL);
    rcase("%7bclick_id%7D", v, 1, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "C%201", NULL);
    rcase("?a=%7Bclick_id%7D&b={click_id}", v, 1, PB_MISSING_EMPTY, PB_ENCODE_NONE, PB_OK,
          "?a=C 1&b=C 1", NULL);
    /* missing = keep writes the placeholder as it was written */
    rcase("%7bclick_id%7D|{click_id}", NULL, 0, PB_MISSING_KEEP, PB_ENCODE_URL, PB_OK,
          "%7bclick_id%7D|{click_id}", NULL);
    rcase("%7bclick_id%7D", NULL, 0, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "", NULL);
    /* mixed forms are literal */
    rcase("%7Bclick_id}", v, 1, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "%7Bclick_id}", NULL);
    rcase("{click_id%7D", v, 1, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "{click_id%7D", NULL);
    /* a percent placeholder right after a literal '%' */
    rcase("%%7Bclick_id%7D", v, 1, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "%C%201", NULL);
}

static void t_render_braces(void)
{
    kv v[] = { { "click_id", vstr("ID") }, { "x", vstr("X") } };
    rcase("{{click_id}}", v, 2, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "{ID}", NULL);
    rcase("{{x}}", NULL, 0, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "{{x}}", NULL);
    rcase("{{x}}", v, 2, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "{X}", NULL);
    rcase("{}", v, 2, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "{}", NULL);
    rcase("{a-b}{x}", v, 2, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "{a-b}X", NULL);
    rcase("{click_id", v, 2, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "{click_id", NULL);
    rcase("click_id}", v, 2, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "click_id}", NULL);
    rcase("{x{click_id}", v, 2, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "{xID", NULL);
    rcase("{ x }{x }", v, 2, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "{ x }{x }", NULL);
    rcase("{x}}", v, 2, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "X}", NULL);
    rcase("{", v, 2, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "{", NULL);
    rcase("}{", v, 2, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "}{", NULL);
    rcase("{click.id}", v, 2, PB_MISSING_ERROR, PB_ENCODE_URL, PB_OK, "{click.id}", NULL);
}

static void t_render_missing(void)
{
    kv v[] = { { "payout", vint(3) } };
    /* documented, no value */
    rcase("a{click_id}b", v, 1, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "ab", NULL);
    rcase("a{click_id}b", v, 1, PB_MISSING_KEEP, PB_ENCODE_URL, PB_OK, "a{click_id}b", NULL);
    rcase("a{payout}{click_id}b", v, 1, PB_MISSING_ERROR, PB_ENCODE_URL, PB_RERR_MISSING, NULL,
          "click_id");
    /* undocumented, no value: literal under every mode */
    rcase("a{foo}b", v, 1, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "a{foo}b", NULL);
    rcase("a{foo}b", v, 1, PB_MISSING_KEEP, PB_ENCODE_URL, PB_OK, "a{foo}b", NULL);
    rcase("a{foo}b", v, 1, PB_MISSING_ERROR, PB_ENCODE_URL, PB_OK, "a{foo}b", NULL);
    rcase("a%7Bfoo%7Db", v, 1, PB_MISSING_ERROR, PB_ENCODE_NONE, PB_OK, "a%7Bfoo%7Db", NULL);
    /* the error names the first missing documented macro */
    rcase("{foo}{payout}{aff_sub2}{click_id}", v, 1, PB_MISSING_ERROR, PB_ENCODE_URL,
          PB_RERR_MISSING, NULL, "aff_sub2");
    /* all present with missing=error is fine */
    rcase("{payout}", v, 1, PB_MISSING_ERROR, PB_ENCODE_URL, PB_OK, "3", NULL);
}

static void t_render_encode(void)
{
    kv v[] = { { "aff_sub1", vstr("a b&c=d/é%41+~") }, { "payout", vflt(1e20) },
               { "aff_id", vint(-5) }, { "ip", vbool(1) } };
    rcase("{aff_sub1}", v, NKV(v), PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK,
          "a%20b%26c%3Dd%2F%C3%A9%2541%2B~", NULL);
    rcase("{aff_sub1}", v, NKV(v), PB_MISSING_EMPTY, PB_ENCODE_NONE, PB_OK, "a b&c=d/é%41+~",
          NULL);
    /* an exponent's '+' is encoded like any other byte */
    rcase("{payout}", v, NKV(v), PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "1e%2B20", NULL);
    rcase("{payout}", v, NKV(v), PB_MISSING_EMPTY, PB_ENCODE_NONE, PB_OK, "1e+20", NULL);
    rcase("{aff_id}|{ip}", v, NKV(v), PB_MISSING_EMPTY, PB_ENCODE_URL, PB_OK, "-5|true", NULL);
}

static void t_render_errors(void)
{
    kv v[] = { { "payout", vflt(NAN) },       { "amount", vflt(INFINITY) },
               { "currency", vflt(-INFINITY) }, { "aff_id", vbad() },
               { "offer_id", vint(1) } };
    rcase("{offer_id}{payout}", v, NKV(v), PB_MISSING_EMPTY, PB_ENCODE_URL, PB_RERR_NONFINITE,
          NULL, "payout");
    rcase("{amount}", v, NKV(v), PB_MISSING_EMPTY, PB_ENCODE_URL, PB_RERR_NONFINITE, NULL,
          "amount");
    rcase("{currency}", v, NKV(v), PB_MISSING_EMPTY, PB_ENCODE_NONE, PB_RERR_NONFINITE, NULL,
          "currency");
    rcase("x{offer_id}{aff_id}", v, NKV(v), PB_MISSING_EMPTY, PB_ENCODE_URL, PB_RERR_BADTYPE,
          NULL, "aff_id");
    rcase("{aff_id}", v, NKV(v), PB_MISSING_KEEP, PB_ENCODE_NONE, PB_RERR_BADTYPE, NULL,
          "aff_id");
    /* an unknown kind is a bad type too */
    {
        pb_value odd = vnone();
        kv v2[1];
        odd.kind = 77;
        v2[0].name = "x";
        v2[0].v = odd;
        rcase("{x}", v2, 1, PB_MISSING_EMPTY, PB_ENCODE_URL, PB_RERR_BADTYPE, NULL, "x");
    }
}

static void t_render_limit_and_append(void)
{
    const char *code = "0123456789{click_id}";
    pb_template *t = pb_template_parse(code, strlen(code), NULL);
    pb_value vals[1];
    pb_render_opts ro = { PB_MISSING_EMPTY, PB_ENCODE_URL };
    pb_render_err err;
    pb_buf b;
    CHECK(t != NULL);
    if (!t) return;
    vals[0] = vstr("abcdef");
    pb_buf_init(&b, NULL);
    CHECK_INT(pb_buf_puts(&b, ">>"), PB_OK);
    CHECK_INT(pb_template_render(t, vals, &ro, &b, &err), PB_OK);
    CHECK_BUF(b, ">>0123456789abcdef"); /* appends */
    pb_buf_free(&b);
    b.limit = 12;
    CHECK_INT(pb_template_render(t, vals, &ro, &b, &err), PB_ELIMIT);
    CHECK_INT(err.code, PB_ELIMIT);
    CHECK_INT(err.slot, 0);
    pb_buf_free(&b);
    b.limit = 16;
    CHECK_INT(pb_template_render(t, vals, &ro, &b, &err), PB_OK); /* exactly fits */
    CHECK_BUF(b, "0123456789abcdef");
    pb_buf_free(&b);
    b.limit = 5;
    CHECK_INT(pb_template_render(t, vals, &ro, &b, &err), PB_ELIMIT);
    pb_buf_free(&b);
    pb_template_free(t);
}

/* ==== value formatting ====================================================== */

static void fcase(pb_value v, int encode, int exp_rc, const char *exp)
{
    pb_buf b;
    int rc;
    pb_buf_init(&b, NULL);
    rc = pb_value_format(&b, &v, encode);
    CHECK_INT(rc, exp_rc);
    if (exp_rc == PB_OK && rc == PB_OK) CHECK_BUF(b, exp);
    if (exp_rc != PB_OK) CHECK_INT(b.len, 0);
    pb_buf_free(&b);
}

static void t_format_ints(void)
{
    fcase(vint(0), PB_ENCODE_URL, PB_OK, "0");
    fcase(vint(-1), PB_ENCODE_URL, PB_OK, "-1");
    fcase(vint(42), PB_ENCODE_NONE, PB_OK, "42");
    fcase(vint(9007199254740993LL), PB_ENCODE_URL, PB_OK, "9007199254740993");
    fcase(vint(LLONG_MAX), PB_ENCODE_URL, PB_OK, "9223372036854775807");
    fcase(vint(LLONG_MIN), PB_ENCODE_URL, PB_OK, "-9223372036854775808");
    fcase(vint(LLONG_MIN), PB_ENCODE_NONE, PB_OK, "-9223372036854775808");
}

static void t_format_floats(void)
{
    fcase(vflt(1.25), PB_ENCODE_URL, PB_OK, "1.25");
    fcase(vflt(0.1), PB_ENCODE_URL, PB_OK, "0.1");
    fcase(vflt(100.0), PB_ENCODE_URL, PB_OK, "100");
    fcase(vflt(-0.0), PB_ENCODE_URL, PB_OK, "-0");
    fcase(vflt(1.0 / 3.0), PB_ENCODE_URL, PB_OK, "0.33333333333333");
    fcase(vflt(2.0 / 3.0), PB_ENCODE_URL, PB_OK, "0.66666666666667");
    fcase(vflt(1e-7), PB_ENCODE_URL, PB_OK, "1e-07");
    fcase(vflt(1e-7), PB_ENCODE_NONE, PB_OK, "1e-07");
    /* integral floats up to 2^53 (JSON-decoded integers): every digit */
    fcase(vflt(123456789012345.0), PB_ENCODE_NONE, PB_OK, "123456789012345");
    fcase(vflt(1234567890123456.0), PB_ENCODE_URL, PB_OK, "1234567890123456");
    fcase(vflt(9007199254740991.0), PB_ENCODE_NONE, PB_OK, "9007199254740991");
    fcase(vflt(-9007199254740992.0), PB_ENCODE_NONE, PB_OK, "-9007199254740992");
    fcase(vflt(9007199254740994.0), PB_ENCODE_NONE, PB_OK, "9.007199254741e+15");
    fcase(vflt(123456789012345678.0), PB_ENCODE_NONE, PB_OK, "1.2345678901235e+17");
    fcase(vflt(123456789012345678.0), PB_ENCODE_URL, PB_OK, "1.2345678901235e%2B17");
    fcase(vflt(-1.7976931348623157e308), PB_ENCODE_NONE, PB_OK, "-1.7976931348623e+308");
    fcase(vflt(4.9406564584124654e-324), PB_ENCODE_NONE, PB_OK, "4.9406564584125e-324");
    fcase(vflt(99999999999999.5), PB_ENCODE_NONE, PB_OK, "1e+14");
    /* the short path for few decimals: 1 to 6 of them, zeros in front */
    fcase(vflt(0.0001), PB_ENCODE_NONE, PB_OK, "0.0001");
    fcase(vflt(-0.000123), PB_ENCODE_NONE, PB_OK, "-0.000123");
    fcase(vflt(12.5), PB_ENCODE_NONE, PB_OK, "12.5");
    fcase(vflt(-1234567.125), PB_ENCODE_NONE, PB_OK, "-1234567.125");
    fcase(vflt(99999999.999999), PB_ENCODE_NONE, PB_OK, "99999999.999999");
    fcase(vflt(9.99e-05), PB_ENCODE_NONE, PB_OK, "9.99e-05");
    fcase(vflt(NAN), PB_ENCODE_URL, PB_RERR_NONFINITE, NULL);
    fcase(vflt(-NAN), PB_ENCODE_NONE, PB_RERR_NONFINITE, NULL);
    fcase(vflt(INFINITY), PB_ENCODE_URL, PB_RERR_NONFINITE, NULL);
    fcase(vflt(-INFINITY), PB_ENCODE_NONE, PB_RERR_NONFINITE, NULL);
}

/* A deterministic generator for the random round trips. */
static unsigned long long rng_next(unsigned long long *st)
{
    unsigned long long x = *st;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *st = x;
}

/* Non-integral floats print as "%.14g" does, short path or not. */
static void t_format_floats_random(void)
{
    static const double pow10[] = { 1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8 };
    unsigned long long st = 0x2545F4914F6CDD1DULL;
    char ref[64];
    int i, bad = 0;
    for (i = 0; i < 200000; i++) {
        unsigned long long r = rng_next(&st);
        double d;
        pb_value v;
        pb_buf b;
        if (r & 1) {
            /* an amount: up to 12 digits, up to 8 of them decimals */
            long long m = (long long)(rng_next(&st) % 1000000000000ULL);
            d = (double)(r & 2 ? -m : m) / pow10[(r >> 2) % 9];
        } else {
            memcpy(&d, &r, sizeof d);
        }
        if (!isfinite(d) || (fabs(d) <= 9007199254740992.0 && d == floor(d))) continue;
        snprintf(ref, sizeof ref, "%.14g", d);
        pb_buf_init(&b, NULL);
        v = vflt(d);
        if (pb_value_format(&b, &v, PB_ENCODE_NONE) != PB_OK ||
            strcmp(pb_buf_str(&b), ref) != 0) {
            if (bad++ < 5) diagf("%.17g: got %s, \"%%.14g\" gives %s", d, pb_buf_str(&b), ref);
        }
        pb_buf_free(&b);
    }
    CHECK_INT(bad, 0);
}

static void t_format_other(void)
{
    fcase(vbool(1), PB_ENCODE_URL, PB_OK, "true");
    fcase(vbool(0), PB_ENCODE_URL, PB_OK, "false");
    fcase(vbool(7), PB_ENCODE_NONE, PB_OK, "true");
    fcase(vstr(""), PB_ENCODE_URL, PB_OK, "");
    fcase(vstr("a b"), PB_ENCODE_URL, PB_OK, "a%20b");
    fcase(vstr("a b"), PB_ENCODE_NONE, PB_OK, "a b");
    fcase(vbad(), PB_ENCODE_URL, PB_RERR_BADTYPE, NULL);
    fcase(vnone(), PB_ENCODE_URL, PB_RERR_BADTYPE, NULL); /* NONE is the renderer's business */
}

/* ==== JSON numbers and strings =============================================== */


static void jint(long long v, const char *exp)
{
    char out[PB_JSON_NUMBER_MAX];
    size_t n = pb_json_format_int(out, v);
    CHECK_MEM(out, n, exp, strlen(exp));
    CHECK_INT(out[n], 0);
}

static void jdbl(double d, const char *exp)
{
    char out[PB_JSON_NUMBER_MAX];
    size_t n = pb_json_format_double(out, d);
    CHECK_MEM(out, n, exp, strlen(exp));
    if (n) CHECK(json_number_ok(out));
}

static void t_json_ints(void)
{
    unsigned long long st = 0x9E3779B97F4A7C15ULL;
    char out[PB_JSON_NUMBER_MAX], ref[32];
    int i, bad = 0;
    jint(0, "0");
    jint(7, "7");
    jint(-1, "-1");
    jint(10, "10");
    jint(9007199254740991LL, "9007199254740991");
    jint(-9007199254740991LL, "-9007199254740991");
    jint(123456789012345LL, "123456789012345");
    jint(LLONG_MAX, "9223372036854775807");
    jint(LLONG_MIN, "-9223372036854775808");
    for (i = 0; i < 100000; i++) {
        long long v = (long long)rng_next(&st) >> (rng_next(&st) % 64);
        size_t n = pb_json_format_int(out, v);
        snprintf(ref, sizeof ref, "%lld", v);
        if (strlen(ref) != n || strcmp(out, ref) != 0) {
            if (!bad++) diagf("  %lld written as %s", v, out);
        }
    }
    CHECK_INT(bad, 0);
}

static void t_json_doubles(void)
{
    unsigned long long st = 0xD1B54A32D192ED03ULL;
    char out[PB_JSON_NUMBER_MAX];
    int i, bad = 0;
    /* integral values up to 2^53: digits, never an exponent */
    jdbl(0.0, "0");
    jdbl(-0.0, "0");
    jdbl(8.0, "8");
    jdbl(-8.0, "-8");
    jdbl(123456789012345.0, "123456789012345");
    jdbl(1234567890123456.0, "1234567890123456");
    jdbl(9007199254740991.0, "9007199254740991");
    jdbl(9007199254740992.0, "9007199254740992");
    jdbl(-9007199254740992.0, "-9007199254740992");
    jdbl(1e15, "1000000000000000");
    /* beyond 2^53, and fractions: the shortest form that reads back */
    jdbl(9007199254740994.0, "9007199254740994");
    jdbl(1e17, "1e+17");
    jdbl(0.1, "0.1");
    jdbl(1.25, "1.25");
    jdbl(-2.5, "-2.5");
    jdbl(1.0 / 3.0, "0.3333333333333333");
    jdbl(2.0 / 3.0, "0.6666666666666666");
    jdbl(0.1 + 0.2, "0.30000000000000004");
    jdbl(1e-7, "1e-07");
    jdbl(1e300, "1e+300");
    jdbl(-1.7976931348623157e308, "-1.7976931348623157e+308");
    jdbl(4.9406564584124654e-324, "4.94065645841247e-324"); /* 15 digits read back */
    jdbl(123456789012345.5, "123456789012345.5");
    /* no JSON form */
    jdbl(NAN, "");
    jdbl(-NAN, "");
    jdbl(INFINITY, "");
    jdbl(-INFINITY, "");
    /* any double: valid JSON that reads back as the same double */
    for (i = 0; i < 200000; i++) {
        unsigned long long bits = rng_next(&st);
        double d;
        size_t n;
        if (i % 2) bits = (bits >> 12) | 0x4330000000000000ULL; /* often 2^52..2^53 */
        memcpy(&d, &bits, sizeof d);
        if (i % 5 == 0) d = (double)(long long)(bits >> (bits % 50)); /* integers */
        n = pb_json_format_double(out, d);
        if (!isfinite(d)) {
            if (n != 0 && !bad++) diagf("  non-finite written as %s", out);
            continue;
        }
        if (n == 0 || !json_number_ok(out) || strtod(out, NULL) != d ||
            (fabs(d) <= 9007199254740992.0 && d == floor(d) && strpbrk(out, ".eE"))) {
            if (!bad++) diagf("  %.17g written as %s", d, out);
        }
    }
    CHECK_INT(bad, 0);
}

/* Reads back a JSON string as pb_json_string writes it (the test's own
 * reader: \" \\ \/ \b \f \n \r \t \u00XX); returns the length or -1. */
static long json_unquote(const char *s, size_t n, char *out)
{
    size_t i = 1;
    long k = 0;
    if (n < 2 || s[0] != '"' || s[n - 1] != '"') return -1;
    while (i < n - 1) {
        unsigned char c = (unsigned char)s[i++];
        if (c < 0x20 || c == 0x7f || c == '"') return -1; /* must have been escaped */
        if (c != '\\') {
            out[k++] = (char)c;
            continue;
        }
        if (i >= n - 1) return -1;
        c = (unsigned char)s[i++];
        switch (c) {
        case '"': out[k++] = '"'; break;
        case '\\': out[k++] = '\\'; break;
        case '/': out[k++] = '/'; break;
        case 'b': out[k++] = '\b'; break;
        case 'f': out[k++] = '\f'; break;
        case 'n': out[k++] = '\n'; break;
        case 'r': out[k++] = '\r'; break;
        case 't': out[k++] = '\t'; break;
        case 'u':
            if (i + 4 > n - 1 || s[i] != '0' || s[i + 1] != '0' || pb_hexval((unsigned char)s[i + 2]) < 0 ||
                pb_hexval((unsigned char)s[i + 3]) < 0)
                return -1;
            out[k++] = (char)(pb_hexval((unsigned char)s[i + 2]) * 16 + pb_hexval((unsigned char)s[i + 3]));
            i += 4;
            break;
        default: return -1;
        }
    }
    return k;
}

static void jstr(const char *s, size_t n, const char *exp)
{
    pb_buf b;
    pb_buf_init(&b, NULL);
    CHECK_INT(pb_json_string(&b, s, n), PB_OK);
    CHECK_MEM(b.data, b.len, exp, strlen(exp));
    CHECK_INT(pb_json_string_len(s, n), b.len);
    pb_buf_free(&b);
}

static void t_json_strings(void)
{
    char all[256], back[256];
    pb_buf b;
    long k;
    int c;
    jstr("", 0, "\"\"");
    jstr("abc", 3, "\"abc\"");
    jstr("a\"b\\c/d", 7, "\"a\\\"b\\\\c/d\""); /* '/' is not escaped */
    jstr("\b\f\n\r\t", 5, "\"\\b\\f\\n\\r\\t\"");
    jstr("\0\1\x1f\x7f", 4, "\"\\u0000\\u0001\\u001f\\u007f\"");
    jstr("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14, "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
    jstr("\xff\xfe\x80", 3, "\"\xff\xfe\x80\""); /* not UTF-8: bytes kept as they are */
    jstr("https://a.example/p?x={click_id}&y=1", 36, "\"https://a.example/p?x={click_id}&y=1\"");
    /* every byte, alone and all together */
    for (c = 0; c < 256; c++) {
        char one = (char)c, got[8];
        pb_buf_init(&b, NULL);
        CHECK_INT(pb_json_string(&b, &one, 1), PB_OK);
        k = json_unquote(b.data, b.len, got);
        CHECK_INT(k, 1);
        if (k == 1) CHECK_INT((unsigned char)got[0], c);
        if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) CHECK_INT(b.len, 3); /* as it is */
        pb_buf_free(&b);
        all[c] = (char)c;
    }
    pb_buf_init(&b, NULL);
    CHECK_INT(pb_json_string(&b, all, 256), PB_OK);
    CHECK_INT(b.len, pb_json_string_len(all, 256));
    k = json_unquote(b.data, b.len, back);
    CHECK_INT(k, 256);
    if (k == 256) CHECK_MEM(back, 256, all, 256);
    pb_buf_free(&b);
}

static void t_json_append(void)
{
    pb_buf b;
    pb_buf_init(&b, NULL);
    CHECK_INT(pb_json_int(&b, -42), PB_OK);
    CHECK_INT(pb_buf_putc(&b, ','), PB_OK);
    CHECK_INT(pb_json_double(&b, 0.5), PB_OK);
    CHECK_INT(pb_buf_putc(&b, ','), PB_OK);
    CHECK_INT(pb_json_string(&b, "x\n", 2), PB_OK);
    CHECK_INT(pb_json_double(&b, NAN), PB_JSON_NONFINITE);
    CHECK_INT(pb_json_double(&b, -INFINITY), PB_JSON_NONFINITE);
    CHECK_BUF(b, "-42,0.5,\"x\\n\"");
    /* a limit refuses the whole piece, the buffer as it was */
    b.limit = b.len + 3;
    CHECK_INT(pb_json_string(&b, "abcd", 4), PB_ELIMIT);
    CHECK_INT(pb_json_int(&b, 12345), PB_ELIMIT);
    CHECK_INT(pb_json_double(&b, 0.25), PB_ELIMIT);
    CHECK_BUF(b, "-42,0.5,\"x\\n\"");
    CHECK_INT(pb_json_string(&b, "a", 1), PB_OK);
    CHECK_BUF(b, "-42,0.5,\"x\\n\"\"a\"");
    pb_buf_free(&b);
}

/* ==== URL checks ============================================================= */

typedef struct urlcase {
    const char *url;
    size_t len;      /* 0 = strlen */
    int code_ok;     /* pb_check_code_url returns NULL */
    int request_ok;  /* pb_check_request_url returns NULL */
    int loopback;    /* -1 = not checked */
    int https;       /* -1 = not checked */
    unsigned flags;  /* PB_URL_ALLOW_USERINFO */
} urlcase;

#define UI PB_URL_ALLOW_USERINFO

static const urlcase urlcases[] = {
    { "http://example.com", 0, 1, 1, 0, 0, 0 },
    { "https://example.com/p?a=1#f", 0, 1, 1, 0, 1, 0 },
    { "HTTPS://EXAMPLE.COM/", 0, 1, 1, 0, 1, 0 },
    { "HtTp://x", 0, 1, 1, 0, 0, 0 },
    { "http://example.com?x=1", 0, 1, 1, 0, 0, 0 },
    { "http://example.com#frag", 0, 1, 1, 0, 0, 0 },
    { "http://ex_ample-1.example.com./x", 0, 1, 1, 0, 0, 0 },
    { "http://\xC3\xA9xample.com/", 0, 1, 1, 0, 0, 0 },
    { "http://example.com/{click_id}?a={aff_id}", 0, 1, 1, 0, 0, 0 },
    /* not http(s), not absolute */
    { "ftp://example.com/", 0, 0, 0, 0, 0, 0 },
    { "example.com/x", 0, 0, 0, 0, 0, 0 },
    { "//example.com/", 0, 0, 0, 0, 0, 0 },
    { "http:/example.com", 0, 0, 0, 0, 0, 0 },
    { "http:example.com", 0, 0, 0, 0, 0, 0 },
    { "https:/", 0, 0, 0, 0, 0, 0 },
    { "httpx://example.com", 0, 0, 0, 0, 0, 0 },
    { "", 0, 0, 0, 0, 0, 0 },
    { "{scheme}://example.com", 0, 0, 0, 0, 0, 0 },
    /* no host */
    { "http://", 0, 0, 0, 0, 0, 0 },
    { "https://", 0, 0, 0, 0, 1, 0 },
    { "http:///path", 0, 0, 0, 0, 0, 0 },
    { "http://?q", 0, 0, 0, 0, 0, 0 },
    { "http://#f", 0, 0, 0, 0, 0, 0 },
    { "http://user@", 0, 0, 0, 0, 0, 0 },
    { "http://user:pw@/x", 0, 0, 0, 0, 0, 0 },
    { "http://:80/", 0, 0, 0, 0, 0, 0 },
    /* userinfo: refused unless allowed */
    { "http://user:pass@example.com/", 0, 0, 0, 0, 0, 0 },
    { "http://user@example.com:8080/", 0, 0, 0, 0, 0, 0 },
    { "http://@example.com/", 0, 0, 0, 0, 0, 0 },
    { "http://:@example.com/", 0, 0, 0, 0, 0, 0 },
    { "http://user:pass@example.com/", 0, 1, 1, 0, 0, UI },
    { "http://user@example.com:8080/", 0, 1, 1, 0, 0, UI },
    { "http://@example.com/", 0, 1, 1, 0, 0, UI },
    { "http://u%40x:p%3Aw@example.com/", 0, 1, 1, 0, 0, UI },
    { "http://user@/", 0, 0, 0, 0, 0, UI },
    { "http://a@b@example.com/", 0, 0, 0, -1, 0, UI },
    /* an '@' after the authority is not user info */
    { "http://example.com/a@b?c@d#e@f", 0, 1, 1, 0, 0, 0 },
    /* an unencoded '@' in the userinfo: libcurl refuses it (host "b@c"), the
     * check takes the host after the last '@' */
    { "http://a@b@example.com/", 0, 0, 0, -1, 0, 0 },
    /* ports */
    { "http://example.com:80/", 0, 1, 1, 0, 0, 0 },
    { "http://example.com:1", 0, 1, 1, 0, 0, 0 },
    { "http://example.com:65535/", 0, 1, 1, 0, 0, 0 },
    { "http://example.com:0/", 0, 0, 0, 0, 0, 0 },
    { "http://example.com:00000/", 0, 0, 0, 0, 0, 0 },
    { "http://example.com:65536/", 0, 0, 0, 0, 0, 0 },
    { "http://example.com:99999/", 0, 0, 0, 0, 0, 0 },
    { "http://example.com:123456/", 0, 0, 0, 0, 0, 0 },
    { "http://example.com:/", 0, 0, 0, 0, 0, 0 },
    { "http://example.com:8a/", 0, 0, 0, 0, 0, 0 },
    { "http://example.com:-1/", 0, 0, 0, 0, 0, 0 },
    { "http://example.com:80:81/", 0, 0, 0, 0, 0, 0 },
    /* IPv6 */
    { "http://[::1]/", 0, 1, 1, 1, 0, 0 },
    { "https://[::1]:8443/x", 0, 1, 1, 1, 1, 0 },
    { "http://[2001:db8::1]/", 0, 1, 1, 0, 0, 0 },
    { "http://[2001:DB8::A]:65535", 0, 1, 1, 0, 0, 0 },
    { "http://[::ffff:192.0.2.1]/", 0, 1, 1, 0, 0, 0 },
    { "http://[::2]/", 0, 1, 1, 0, 0, 0 },
    { "http://[]/", 0, 0, 0, 0, 0, 0 },
    { "http://[::1/", 0, 0, 0, -1, 0, 0 }, /* loopback host, refused URL */
    { "http://[::1]x/", 0, 0, 0, -1, 0, 0 }, /* loopback host, refused URL */
    { "http://[::g]/", 0, 0, 0, 0, 0, 0 },
    { "http://[::1]:0/", 0, 0, 0, -1, 0, 0 }, /* loopback host, refused URL */
    { "http://[::1]:65536/", 0, 0, 0, -1, 0, 0 }, /* loopback host, refused URL */
    { "http://[::1]:/", 0, 0, 0, -1, 0, 0 }, /* loopback host, refused URL */
    { "http://::1/", 0, 0, 0, 0, 0, 0 },
    /* Not IPv6 addresses, but the bracket check only looks at the characters;
     * libcurl 7.88 refuses all three (CURLE_URL_MALFORMAT), so a request URL
     * that passes here fails only when sent. */
    { "http://[:]/", 0, 0, 0, 0, 0, 0 },
    { "http://[.]/", 0, 0, 0, 0, 0, 0 },
    { "http://[1.2.3.4]/", 0, 0, 0, 0, 0, 0 },
    /* still malformed IPv6 (two "::", ":::", a 5-digit group, 9 groups, a
     * 5-part IPv4 tail): libcurl 7.88 refuses each with CURLE_URL_MALFORMAT */
    { "http://[1::2::3]/", 0, 0, 0, 0, 0, 0 },
    { "http://[:::1]/", 0, 0, 0, 0, 0, 0 },
    { "http://[12345::1]/", 0, 0, 0, 0, 0, 0 },
    { "http://[1:2:3:4:5:6:7:8:9]/", 0, 0, 0, 0, 0, 0 },
    { "http://[::1.2.3.4.5]/", 0, 0, 0, 0, 0, 0 },
    { "http://[1:2:3:4:5:6:7:8]/", 0, 1, 1, 0, 0, 0 },
    { "http://[::ffff:127.0.0.1]:8080/", 0, 1, 1, -1, 0, 0 },
    /* bad bytes */
    { "http://exa mple.com/", 0, 0, 0, 0, 0, 0 },
    { "http://example.com/a b", 0, 0, 0, 0, 0, 0 },
    { "http://example.com/\r\nX-Injected: 1", 0, 0, 0, 0, 0, 0 },
    { "http://example.com/\n", 0, 0, 0, 0, 0, 0 },
    { "http://example.com/\t", 0, 0, 0, 0, 0, 0 },
    { "http://example.com/\x7f", 0, 0, 0, 0, 0, 0 },
    { "http://example.com/\0x", 21, 0, 0, 0, 0, 0 },
    { "http://localhost\0.example.com/", 30, 0, 0, -1, 0, 0 },
    { "http://exa<mple.com/", 0, 0, 0, 0, 0, 0 },
    { "http://exa\"mple.com/", 0, 0, 0, 0, 0, 0 },
    { "http://exa,mple.com/", 0, 0, 0, 0, 0, 0 },
    { "http://exa|mple.com/", 0, 0, 0, 0, 0, 0 },
    /* macros in the host and port: postback code only */
    { "http://{aff_sub1}/x", 0, 1, 0, 0, 0, 0 },
    { "https://{aff_sub1}.example.com/pb?c={click_id}", 0, 1, 0, 0, 1, 0 },
    { "http://{a}{b}/", 0, 1, 0, 0, 0, 0 },
    { "http://example.com:{port}/", 0, 1, 0, 0, 0, 0 },
    { "http://{host}:{port}/{path}", 0, 1, 0, 0, 0, 0 },
    { "http://user@{host}/", 0, 0, 0, 0, 0, 0 },
    { "http://user@{host}/", 0, 1, 0, 0, 0, UI },
    { "http://{a}.{b}.example/", 0, 1, 0, 0, 0, 0 },
    { "http://%7Ba%7D.%7bb%7d.example/", 0, 1, 0, 0, 0, 0 },
    { "http://x{a}y.example/", 0, 1, 0, 0, 0, 0 },
    /* braces and percent signs in a host are whole macros or refused */
    { "http://{a/", 0, 0, 0, 0, 0, 0 },
    { "http://a}/", 0, 0, 0, 0, 0, 0 },
    { "http://{}/", 0, 0, 0, 0, 0, 0 },
    { "http://{a-b}/", 0, 0, 0, 0, 0, 0 },
    { "http://%7Ba/", 0, 0, 0, 0, 0, 0 },
    { "http://%7Ba%7/", 0, 0, 0, 0, 0, 0 },
    { "http://%7B%7D/", 0, 0, 0, 0, 0, 0 },
    { "http://ex%00ample.com/", 0, 0, 0, 0, 0, 0 },
    { "http://good.com%2fevil/", 0, 0, 0, 0, 0, 0 },
    { "http://good.com%2Fevil.example/", 0, 0, 0, 0, 0, 0 },
    { "http://ex%61mple.com/", 0, 0, 0, 0, 0, 0 },
    { "http://example.com%/", 0, 0, 0, 0, 0, 0 },
    { "http://%/", 0, 0, 0, 0, 0, 0 },
    { "http://example.com:{a}{b}/", 0, 0, 0, 0, 0, 0 },
    { "http://example.com:{a/", 0, 0, 0, 0, 0, 0 },
    /* a kept placeholder is fine in the path and query of a request */
    { "http://example.com/%7Bx%7D?y=%7Bz%7D", 0, 1, 1, 0, 0, 0 },
    /* internationalised hosts: valid IDNs only (converted with libidn2) */
    { "http://m\xC3\xBCnchen.de/", 0, 1, 1, 0, 0, 0 },
    { "http://M\xC3\x9CNCHEN.DE/", 0, 1, 1, 0, 0, 0 },
    { "http://\xE2\x98\x83.com/", 0, 1, 1, 0, 0, 0 },        /* UTS 46 transitional */
    { "http://fa\xC3\x9F.de/", 0, 1, 1, 0, 0, 0 },
    { "http://\xEF\xBD\x85x.com/", 0, 1, 1, 0, 0, 0 },       /* fullwidth e: mapped */
    { "http://\xFF.de/", 0, 0, 0, 0, 0, 0 },                   /* not UTF-8 */
    { "http://\xC3.de/", 0, 0, 0, 0, 0, 0 },                   /* cut UTF-8 */
    { "http://\xC0\xAE.de/", 0, 0, 0, 0, 0, 0 },              /* overlong '.' */
    { "http://good.com\xEF\xBC\x8F" "evil/", 0, 0, 0, 0, 0, 0 }, /* fullwidth '/' */
    { "http://good.com\xEF\xBC\x85" "2f/", 0, 0, 0, 0, 0, 0 },   /* fullwidth '%' */
    { "http://a\xE2\x80\x8B" "b.com/", 0, 1, 1, 0, 0, 0 }, /* zero-width space: mapped away */
    { "http://\xD8\xA7" "a.com/", 0, 0, 0, 0, 0, 0 },          /* bidi rule */
    { "http://{sub}.m\xC3\xBCnchen.de/", 0, 1, 0, 0, 0, 0 },
    { "http://{sub}.\xFF.de/", 0, 0, 0, 0, 0, 0 },
    { "http://\xC3\xBC{sub}.de/", 0, 1, 0, 0, 0, 0 },
    { "http://\xFF{sub}.de/", 0, 0, 0, 0, 0, 0 },               /* not UTF-8, whatever the value */
    { "http://xn--mnchen-3ya.de/", 0, 1, 1, 0, 0, 0 },
    /* url.h: "Macros ({name}, %7Bname%7D) may stand anywhere, the host included";
     * templates recognise both spellings, and {port} is accepted in the port,
     * so %7Bport%7D must be too (currently refused: "has an invalid port"). */
    { "http://%7Bhost%7D/", 0, 1, 0, 0, 0, 0 },
    { "http://example.com:%7Bport%7D/", 0, 1, 0, 0, 0, 0 },
    /* loopback */
    { "http://localhost/", 0, 1, 1, 1, 0, 0 },
    { "http://LocalHost:8080/x", 0, 1, 1, 1, 0, 0 },
    { "http://127.0.0.1/", 0, 1, 1, 1, 0, 0 },
    { "http://127.0.0.1:9000/pb", 0, 1, 1, 1, 0, 0 },
    { "http://127.255.255.254/", 0, 1, 1, 1, 0, 0 },
    { "http://user:pw@localhost/", 0, 1, 1, 1, 0, UI },
    { "http://localhost@example.com/", 0, 1, 1, 0, 0, UI },
    { "http://127.0.0.1@example.com/", 0, 1, 1, 0, 0, UI },
    { "http://localhost.example.com/", 0, 1, 1, 0, 0, 0 },
    { "http://127.0.0.1.nip.io/", 0, 1, 1, 0, 0, 0 },
    { "http://128.0.0.1/", 0, 1, 1, 0, 0, 0 },
    { "http://0.0.0.0/", 0, 1, 1, 0, 0, 0 },
    { "http://localhos/", 0, 1, 1, 0, 0, 0 },
    { "http://10.127.0.1/", 0, 1, 1, 0, 0, 0 },
    { "ftp://localhost/", 0, 0, 0, 0, 0, 0 },
    { "localhost", 0, 0, 0, 0, 0, 0 },
};

static void t_urls(void)
{
    size_t i;
    for (i = 0; i < sizeof urlcases / sizeof urlcases[0]; i++) {
        const urlcase *u = &urlcases[i];
        size_t n = u->len ? u->len : strlen(u->url);
        const char *cw = pb_check_code_url_ex(u->url, n, u->flags);
        const char *rw = pb_check_request_url_ex(u->url, n, u->flags);
        char name[300];
        snprintf(name, sizeof name, "URL %s%s", show(u->url, n), u->flags ? " (allow_userinfo)" : "");
        if (!u->flags) {
            /* the plain functions are the _ex ones without flags */
            CHECK(pb_check_code_url(u->url, n) == cw);
            CHECK(pb_check_request_url(u->url, n) == rw);
        }
        if ((cw == NULL) != u->code_ok) {
            cur_fail++;
            diagf("pb_check_code_url: expected %s, got %s", u->code_ok ? "ok" : "a refusal",
                  cw ? cw : "ok");
        }
        if (u->request_ok >= 0 && (rw == NULL) != u->request_ok) {
            cur_fail++;
            diagf("pb_check_request_url: expected %s, got %s", u->request_ok ? "ok" : "a refusal",
                  rw ? rw : "ok");
        }
        if (u->loopback >= 0) CHECK_INT(pb_url_is_loopback(u->url, n), u->loopback);
        if (u->https >= 0) CHECK_INT(pb_url_is_https(u->url, n), u->https);
        /* a refusal is a short sentence */
        if (cw) CHECK(strlen(cw) > 5 && strlen(cw) < 80);
        if (rw) CHECK(strlen(rw) > 5 && strlen(rw) < 80);
        /* request-URL ok implies code-URL ok */
        if (!rw) CHECK(cw == NULL);
        test_end(name);
    }
}

static void t_url_reasons(void)
{
    CHECK_STR(pb_check_code_url("ftp://x", 7), "is not an absolute http:// or https:// URL");
    CHECK_STR(pb_check_code_url("http://", 7), "has no host");
    CHECK_STR(pb_check_code_url("http://a b", 10), "contains whitespace or control characters");
    CHECK_STR(pb_check_code_url("http://[x]", 10), "has a malformed IPv6 host");
    CHECK_STR(pb_check_code_url("http://a:0", 10), "has an invalid port");
    CHECK_STR(pb_check_request_url("http://{h}/", 11), "has an invalid character in its host");
    CHECK_STR(pb_check_request_url("http://a%2e.b/", 14), "has a percent-encoded byte in its host");
    CHECK_STR(pb_check_code_url("http://a%2e.b/", 14), "has a percent-encoded byte in its host");
    CHECK_STR(pb_check_request_url("http://u@h/", 11), "has user info (user:password@), refused unless allowed");
    CHECK_STR(pb_check_request_url("http://\xFF/", 9),
              "has a host name that is not a valid internationalised domain name");
    {
        /* a 64-character label, and a 300-byte name */
        char u[400];
        memset(u, 0, sizeof u);
        strcpy(u, "http://\xC3\xBC");
        memset(u + strlen(u), 'a', 63);
        strcat(u, ".de/");
        CHECK_STR(pb_check_request_url(u, strlen(u)), "has a host name that is too long");
        strcpy(u, "http://\xC3\xBC");
        memset(u + strlen(u), 'a', 300);
        CHECK_STR(pb_check_request_url(u, strlen(u)), "has a host name that is too long");
        strcpy(u, "http://");
        memset(u + strlen(u), 'a', 300);
        CHECK(pb_check_request_url(u, strlen(u)) == NULL); /* ASCII names are not limited */
    }
}

typedef struct asciicase {
    const char *in;
    unsigned flags;
    int rc;          /* 0 unchanged, 1 converted, PB_EINVAL */
    const char *out; /* when rc is 1; the reason when PB_EINVAL */
} asciicase;

static const asciicase asciicases[] = {
    { "http://example.com/", 0, 0, NULL },
    { "HTTP://Example.COM:8080/a/../b/./c?#", 0, 0, NULL }, /* kept byte for byte */
    { "http://x/%2e%2e/%7Bx%7D?", 0, 0, NULL },
    { "http://m\xC3\xBCnchen.de/x", 0, 1, "http://xn--mnchen-3ya.de/x" },
    { "https://M\xC3\x9CNCHEN.DE:8443/?q#f", 0, 1, "https://xn--mnchen-3ya.de:8443/?q#f" },
    { "http://\xE2\x98\x83.com/", 0, 1, "http://xn--n3h.com/" },
    { "http://fa\xC3\x9F.de/", 0, 1, "http://xn--fa-hia.de/" },
    { "http://\xEF\xBC\x91\xEF\xBC\x92\xEF\xBC\x97.0.0.1/", 0, 1, "http://127.0.0.1/" }, /* fullwidth digits */
    /* IPv4 in every form libcurl reads */
    { "http://2130706433/", 0, 1, "http://127.0.0.1/" },
    { "http://0177.0.0.1/", 0, 1, "http://127.0.0.1/" },
    { "http://0x7f.1/", 0, 1, "http://127.0.0.1/" },
    { "http://0X7F.0.0.01:81/", 0, 1, "http://127.0.0.1:81/" },
    { "http://127.1/", 0, 1, "http://127.0.0.1/" },
    { "http://1.2.3/", 0, 1, "http://1.2.0.3/" },
    { "http://4294967295/", 0, 1, "http://255.255.255.255/" },
    { "http://0/", 0, 1, "http://0.0.0.0/" },
    { "http://000000000000000000000000001/", 0, 1, "http://0.0.0.1/" },
    { "http://127.0.0.1/", 0, 0, NULL },
    { "http://4294967296/", 0, 0, NULL }, /* too large: a name */
    { "http://0x100000000/", 0, 0, NULL },
    { "http://999.1.1.1/", 0, 0, NULL },
    { "http://1.2.3.4.5/", 0, 0, NULL },
    { "http://1.2.3.4./", 0, 0, NULL },
    { "http://1..2/", 0, 0, NULL },
    { "http://08/", 0, 0, NULL },
    { "http://0x/", 0, 0, NULL },
    { "http://0xg/", 0, 0, NULL },
    { "http://1.256/", 0, 1, "http://1.0.1.0/" },
    { "http://1.16777216/", 0, 0, NULL },
    { "http://1.2.65536/", 0, 0, NULL },
    /* IPv6 in its RFC 5952 form */
    { "http://[0:0::1]:8080/", 0, 1, "http://[::1]:8080/" },
    { "http://[::FFFF:127.0.0.1]/", 0, 0, NULL }, /* not shorter: kept, as libcurl keeps it */
    { "http://[::FFFF:7F00:1]/", 0, 0, NULL },
    { "http://[0:0:0:0:0:FFFF:7F00:1]/", 0, 1, "http://[::ffff:127.0.0.1]/" },
    { "http://[2001:DB8:0:0:0:0:0:1]/", 0, 1, "http://[2001:db8::1]/" },
    { "http://[::1]/", 0, 0, NULL },
    /* bytes >= 0x80 outside the host */
    { "http://x/\xC3\xA9?\xC3\xA9#\xC3\xA9", 0, 1, "http://x/%C3%A9?%C3%A9#%C3%A9" },
    { "http://x/\x80\xFF", 0, 1, "http://x/%80%FF" },
    { "http://m\xC3\xBCnchen.de/\xC3\xBC", 0, 1, "http://xn--mnchen-3ya.de/%C3%BC" },
    /* user info */
    { "http://u:p@x/", 0, PB_EINVAL, "URL has user info (user:password@), refused unless allowed" },
    { "http://u:p@x/", PB_URL_ALLOW_USERINFO, 0, NULL },
    { "http://u\xC3\xA9:p@2130706433/", PB_URL_ALLOW_USERINFO, 1, "http://u%C3%A9:p@127.0.0.1/" },
    /* refused as check_url refuses */
    { "ftp://x/", 0, PB_EINVAL, "URL is not an absolute http:// or https:// URL" },
    { "http://ex%61mple.com/", 0, PB_EINVAL, "URL has a percent-encoded byte in its host" },
    { "http://{x}/", 0, PB_EINVAL, "URL has an invalid character in its host" },
    { "http://\xFF/", 0, PB_EINVAL, "URL has a host name that is not a valid internationalised domain name" },
    { "http://x/ y", 0, PB_EINVAL, "URL contains whitespace or control characters" },
};

static void t_url_to_ascii(void)
{
    size_t i;
    for (i = 0; i < sizeof asciicases / sizeof asciicases[0]; i++) {
        const asciicase *c = &asciicases[i];
        pb_buf b;
        char why[160];
        int rc;
        pb_buf_init(&b, NULL);
        strcpy(why, "untouched");
        rc = pb_url_to_ascii(c->in, strlen(c->in), c->flags, &b, why, sizeof why);
        CHECK_INT(rc, c->rc);
        if (rc == 1 && c->rc == 1) CHECK_BUF(b, c->out);
        if (rc == 0) CHECK_INT(b.len, 0);
        if (rc == PB_EINVAL && c->rc == PB_EINVAL) CHECK_STR(why, c->out);
        if (rc == 1) {
            /* the converted URL passes the check and is its own ASCII form */
            pb_buf b2;
            size_t k;
            CHECK(pb_check_request_url_ex(b.data, b.len, c->flags) == NULL);
            for (k = 0; k < b.len; k++) CHECK((unsigned char)b.data[k] < 0x80);
            pb_buf_init(&b2, NULL);
            CHECK_INT(pb_url_to_ascii(b.data, b.len, c->flags, &b2, NULL, 0), 0);
            pb_buf_free(&b2);
        }
        if (cur_fail) diagf("  for %s", show(c->in, strlen(c->in)));
        pb_buf_free(&b);
        if (cur_fail) break;
    }
    /* it appends; a limit or a failure leaves the buffer as it was */
    {
        pb_buf b;
        pb_buf_init(&b, NULL);
        CHECK_INT(pb_buf_puts(&b, "url: "), PB_OK);
        CHECK_INT(pb_url_to_ascii("http://127.1/\xC3\xA9", 15, 0, &b, NULL, 0), 1);
        CHECK_BUF(b, "url: http://127.0.0.1/%C3%A9");
        pb_buf_reset(&b);
        CHECK_INT(pb_buf_puts(&b, "url: "), PB_OK);
        b.limit = 20;
        CHECK_INT(pb_url_to_ascii("http://127.1/\xC3\xA9", 15, 0, &b, NULL, 0), PB_ELIMIT);
        CHECK_BUF(b, "url: ");
        b.limit = 22;
        CHECK_INT(pb_url_to_ascii("http://127.1/", 13, 0, &b, NULL, 0), 1);
        CHECK_BUF(b, "url: http://127.0.0.1/");
        pb_buf_free(&b);
    }
}

static void t_oom_url_to_ascii(void)
{
    counter c;
    pb_alloc a;
    long n, steps = 0;
    int done = 0;
    const char *in = "http://2130706433/\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9"
                     "\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9"
                     "/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    a.fn = counter_fn;
    a.ud = &c;
    for (n = 1; n <= 20 && !done; n++) {
        pb_buf b;
        int rc;
        counter_init(&c, n);
        pb_buf_init(&b, &a);
        rc = pb_url_to_ascii(in, strlen(in), 0, &b, NULL, 0);
        steps = n;
        if (c.failed) {
            CHECK_INT(rc, PB_ENOMEM);
            CHECK_INT(b.len, 0);
        } else {
            CHECK_INT(rc, 1);
            CHECK(b.len > 100 && memcmp(b.data, "http://127.0.0.1/%C3%A9", 23) == 0);
            done = 1;
        }
        pb_buf_free(&b);
        CHECK_CLEAN(c, n);
        counter_done(&c);
    }
    CHECK(done);
    CHECK(steps >= 2);
    diagf("pb_url_to_ascii succeeded at allocation step %ld", steps);
}

static void t_url_https(void)
{
    CHECK_INT(pb_url_is_https("https://x", 9), 1);
    CHECK_INT(pb_url_is_https("HTTPS://x", 9), 1);
    CHECK_INT(pb_url_is_https("https://", 8), 1);
    CHECK_INT(pb_url_is_https("http://x", 8), 0);
    CHECK_INT(pb_url_is_https("https:/x", 8), 0);
    CHECK_INT(pb_url_is_https("https", 5), 0);
    CHECK_INT(pb_url_is_https("https://x", 7), 0); /* respects the length */
    CHECK_INT(pb_url_is_https("", 0), 0);
    CHECK_INT(pb_url_is_https("httpsx://", 9), 0);
}

static void hcase(const char *url, const char *host)
{
    size_t off = 99, len = 99;
    int found = pb_url_host(url, strlen(url), &off, &len);
    if (!host) {
        CHECK_INT(found, 0);
        return;
    }
    CHECK_INT(found, 1);
    if (found) CHECK_MEM(url + off, len, host, strlen(host));
}

static void t_url_host(void)
{
    hcase("http://h.example/x", "h.example");
    hcase("HTTPS://h.example:8443?q", "h.example");
    hcase("http://u:p@127.0.0.1:80/a@b", "127.0.0.1");
    hcase("http://a@b@c/", "c");
    hcase("http://[::1]:8080/", "[::1]");
    hcase("http://[::ffff:127.0.0.1]", "[::ffff:127.0.0.1]");
    hcase("http://0x7f.1#f", "0x7f.1");
    hcase("http:///x", "");
    hcase("http://", "");
    hcase("ftp://h/", NULL);
    hcase("h.example", NULL);
}

static void npcase(const char *list, const char *host, int exp)
{
    int got = pb_url_no_proxy(list, host, strlen(host));
    if (got != exp) {
        cur_fail++;
        diagf("no_proxy \"%s\", host \"%s\": expected %d, got %d", list ? list : "(null)", host, exp, got);
    }
}

static void t_url_no_proxy(void)
{
    npcase(NULL, "h.example", 0);
    npcase("", "h.example", 0);
    npcase("*", "h.example", 1);
    npcase("*", "[::1]", 1);
    npcase("*,x", "h.example", 0); /* "*" alone only, as libcurl 7.88 */
    /* names: the host itself or a domain it is in, case ignored */
    npcase("localhost", "localhost", 1);
    npcase("localhost", "LocalHost", 1);
    npcase("LOCALHOST", "localhost", 1);
    npcase("localhost", "localhost.", 1);
    npcase("localhost.", "localhost", 1);
    npcase("example.com", "example.com", 1);
    npcase("example.com", "www.example.com", 1);
    npcase(".example.com", "www.example.com", 1);
    npcase(".example.com", "example.com", 1);
    npcase("example.com", "notexample.com", 0);
    npcase("example.com", "example.com.evil", 0);
    npcase("www.example.com", "example.com", 0);
    npcase(".", "example.com", 0);
    npcase("a.test, b.test", "x.b.test", 1);
    npcase("a.test\tb.test", "b.test", 1);
    npcase(",,a.test,,", "a.test", 1);
    npcase("a.test", "b.test", 0);
    /* addresses: address entries only, whole or with /bits */
    npcase("127.0.0.1", "127.0.0.1", 1);
    npcase("127.0.0.1", "127.0.0.2", 0);
    npcase("127.0.0.0/8", "127.9.8.7", 1);
    npcase("10.0.0.0/8", "127.0.0.1", 0);
    npcase("192.168.1.128/25", "192.168.1.200", 1);
    npcase("192.168.1.128/25", "192.168.1.127", 0);
    npcase("192.168.1.1/0", "192.168.1.1", 1); /* 0: all bits */
    npcase("192.168.1.1/0", "192.168.1.2", 0);
    npcase("127.0.0.1/33", "127.0.0.1", 0);
    npcase("0.1", "127.0.0.1", 0); /* no tail match for addresses */
    npcase("localhost", "127.0.0.1", 0);
    npcase("::1", "[::1]", 1);
    npcase("[::1]", "[::1]", 0);
    npcase("fd00::/8", "[fd12:3456::1]", 1);
    npcase("fd00::/8", "[fe80::1]", 0);
    npcase("2001:db8::/33", "[2001:db8:7fff::1]", 1);
    npcase("2001:db8::/33", "[2001:db8:8000::1]", 0);
    npcase("127.0.0.1", "[::ffff:127.0.0.1]", 0);
    npcase("h.example", "", 0);
}

static void t_find_crlf_nul(void)
{
    CHECK_INT(pb_find_crlf_nul("", 0), -1);
    CHECK_INT(pb_find_crlf_nul("abc", 3), -1);
    CHECK_INT(pb_find_crlf_nul("a\rb", 3), 1);
    CHECK_INT(pb_find_crlf_nul("\n", 1), 0);
    CHECK_INT(pb_find_crlf_nul("ab\0", 3), 2);
    CHECK_INT(pb_find_crlf_nul("a\r\n", 3), 1);
    CHECK_INT(pb_find_crlf_nul("abc\n", 3), -1); /* respects the length */
    CHECK_INT(pb_find_crlf_nul("a\tb\x0b\x0c", 5), -1);
    CHECK_INT(pb_find_crlf_nul("x%0D%0A", 7), -1); /* encoded is fine */
}

/* ==== macros ================================================================ */

static void t_macro_index(void)
{
    int i;
    static const char *const doc[PB_NMACROS] = {
        "click_id", "offer_id", "event_id", "country_id", "aff_id", "adv_id", "adv_sub1",
        "adv_sub2", "adv_sub3", "aff_sub1", "aff_sub2", "aff_sub3", "aff_sub4", "aff_sub5",
        "source_id", "agent", "click_time", "payout", "referer", "accept_lan", "ip",
        "unique_click", "currency", "ios_idfa", "android_id", "google_aid", "conversion_ip",
        "amount",
    };
    CHECK_INT(PB_NMACROS, 28);
    for (i = 0; i < PB_NMACROS; i++) {
        CHECK_STR(pb_macro_names[i], doc[i]);
        CHECK_INT(pb_macro_index(doc[i], strlen(doc[i])), i);
    }
    CHECK_INT(pb_macro_index("Click_id", 8), -1);
    CHECK_INT(pb_macro_index("click_i", 7), -1);
    CHECK_INT(pb_macro_index("click_idx", 9), -1);
    CHECK_INT(pb_macro_index("click_idx", 8), 0); /* length-bounded */
    CHECK_INT(pb_macro_index("ipx", 2), 20);
    CHECK_INT(pb_macro_index("", 0), -1);
    CHECK_INT(pb_macro_index("foo", 3), -1);
}

/* The suggestion among the documented macros. */
static int msuggest(const char *name, size_t len)
{
    return pb_suggest(name, len, pb_macro_names, PB_NMACROS);
}

static void t_macro_suggest(void)
{
    int s;
    CHECK_INT(msuggest("clik_id", 7), 0);
    CHECK_INT(msuggest("click_id", 8), 0);
    CHECK_INT(msuggest("CLICK_ID", 8), 0); /* another case */
    CHECK_INT(msuggest("Click_Id", 8), 0);
    CHECK_INT(msuggest("payot", 5), 17);
    CHECK_INT(msuggest("paayout", 7), 17);
    CHECK_INT(msuggest("curency", 7), 22);
    CHECK_INT(msuggest("IP", 2), 20);
    CHECK_INT(msuggest("conversionip", 12), 26);
    CHECK_INT(msuggest("xyz", 3), -1);
    CHECK_INT(msuggest("totally_unrelated", 17), -1);
    CHECK_INT(msuggest("click_id_click_id_click_id_click_id", 35), -1); /* > 32 */
    s = msuggest("aff_sub6", 8);
    CHECK(s >= 9 && s <= 13); /* one of aff_sub1..5 */
    s = msuggest("adv_sub9", 8);
    CHECK(s >= 6 && s <= 8);
    CHECK_INT(msuggest("offerid", 7), 1);
}

static void t_suggest(void)
{
    static const char *const names[] = { "id", "offer_id", "affiliate_id", "type" };
    static const char *const ties[] = { "abc", "abd", "abe" };
    CHECK_INT(pb_suggest("affilate_id", 11, names, 4), 2);
    CHECK_INT(pb_suggest("AFFILIATE_ID", 12, names, 4), 2);
    CHECK_INT(pb_suggest("ofer_id", 7, names, 4), 1);
    CHECK_INT(pb_suggest("ids", 3, names, 4), 0);
    CHECK_INT(pb_suggest("typo", 4, names, 4), 3);
    CHECK_INT(pb_suggest("status", 6, names, 4), -1);
    CHECK_INT(pb_suggest("", 0, names, 4), -1);  /* 2 edits from "id", but empty */
    CHECK_INT(pb_suggest("x", 1, names, 4), -1); /* as many edits as bytes */
    CHECK_INT(pb_suggest("ix", 2, names, 4), 0);
    CHECK_INT(pb_suggest("x", 1, names, 0), -1);      /* no names */
    CHECK_INT(pb_suggest("abx", 3, ties, 3), 0);      /* a tie: the first */
    CHECK_INT(pb_suggest("a\0c", 3, ties, 3), 0);     /* bytes, NUL included */
}



/* ==== validation ============================================================ */

static pb_field fint(long long i)
{
    pb_field f;
    memset(&f, 0, sizeof f);
    f.kind = PB_F_INT;
    f.i = i;
    return f;
}
static pb_field fnum(double d)
{
    pb_field f;
    memset(&f, 0, sizeof f);
    f.kind = PB_F_NUMBER;
    f.d = d;
    return f;
}
static pb_field fstr(const char *s)
{
    pb_field f;
    memset(&f, 0, sizeof f);
    f.kind = PB_F_STRING;
    f.s = s;
    f.len = strlen(s);
    return f;
}
static pb_field fother(const char *tname)
{
    pb_field f;
    memset(&f, 0, sizeof f);
    f.kind = PB_F_OTHER;
    f.tname = tname;
    return f;
}
static pb_field fabsent(void)
{
    pb_field f;
    memset(&f, 0, sizeof f);
    return f;
}

#define GOOD_CODE "https://t.example.com/pb?c={click_id}&p={payout}"

static pb_record good_record(void)
{
    pb_record r;
    memset(&r, 0, sizeof r);
    r.f[PB_FLD_OFFER_ID] = fint(12);
    r.f[PB_FLD_AFFILIATE_ID] = fint(7);
    r.f[PB_FLD_TYPE] = fint(2);
    r.f[PB_FLD_CODE] = fstr(GOOD_CODE);
    return r;
}

static pb_validate_opts no_opts(void)
{
    pb_validate_opts o;
    memset(&o, 0, sizeof o);
    return o;
}

#define MAXE 32
typedef struct vres {
    long n;
    pb_verror e[MAXE];
} vres;

static vres *validate(const pb_record *r, const pb_validate_opts *o)
{
    static vres v;
    size_t i;
    memset(&v, 0x5a, sizeof v);
    v.n = pb_validate(r, o, v.e, MAXE, NULL);
    for (i = 0; i < (size_t)(v.n > 0 ? (v.n < MAXE ? v.n : MAXE) : 0); i++) {
        const pb_verror *e = &v.e[i];
        /* every error: a known code, a field name, a terminated non-empty message */
        CHECK(e->code >= 0 && e->code < PB_NERRCODES);
        CHECK(e->field_name != NULL);
        CHECK(memchr(e->message, '\0', sizeof e->message) != NULL && e->message[0] != '\0');
        /* .macro: set exactly for unknown_macro, pointing into the record's code */
        if (e->code == PB_E_UNKNOWN_MACRO) {
            const pb_field *code = &r->f[PB_FLD_CODE];
            CHECK(e->macro != NULL && e->macro_len > 0);
            CHECK(code->kind == PB_F_STRING && e->macro >= code->s &&
                  e->macro + e->macro_len <= code->s + code->len);
        } else {
            CHECK(e->macro == NULL && e->macro_len == 0);
        }
        if (e->field >= 0 && e->field < PB_NFIELDS && e->field_name) {
            CHECK_MEM(e->field_name, e->field_len, pb_field_names[e->field],
                      strlen(pb_field_names[e->field]));
        } else if (e->field == PB_FIELD_PROTOCOL && e->field_name) {
            CHECK_MEM(e->field_name, e->field_len, "conversion_protocol", 19);
        } else {
            CHECK(e->field == PB_FIELD_OTHER);
        }
    }
    return &v;
}

/* Expects exactly one error: on field, with code and (when given) message. */
static void one_error(const pb_record *r, const pb_validate_opts *o, int field, int code,
                      const char *message)
{
    vres *v = validate(r, o);
    long i;
    CHECK_INT(v->n, 1);
    if (v->n >= 1) {
        CHECK_INT(v->e[0].field, field);
        CHECK_INT(v->e[0].code, code);
        if (message) CHECK_STR(v->e[0].message, message);
    }
    for (i = 0; i < v->n && i < MAXE; i++)
        diagf("  (error %ld: field %d code %s: %s)", i, v->e[i].field,
              v->e[i].code >= 0 && v->e[i].code < PB_NERRCODES ? pb_error_code_names[v->e[i].code]
                                                               : "?",
              v->e[i].message);
    if (!cur_fail) diag_len = 0, diag_buf[0] = '\0';
}

static void no_error(const pb_record *r, const pb_validate_opts *o)
{
    vres *v = validate(r, o);
    long i;
    CHECK_INT(v->n, 0);
    for (i = 0; i < v->n && i < MAXE; i++) diagf("  (error %ld: %s)", i, v->e[i].message);
}

static void t_validate_good(void)
{
    pb_record r = good_record();
    pb_validate_opts o = no_opts();
    no_error(&r, &o);
    r.f[PB_FLD_ID] = fint(1);
    r.f[PB_FLD_EVENT_ID] = fint(PB_MAX_ID);
    r.f[PB_FLD_STATUS] = fstr("approved");
    r.f[PB_FLD_CREATE_TIME] = fint(0);
    r.f[PB_FLD_UPDATE_TIME] = fint(1700000000);
    no_error(&r, &o);
    r.f[PB_FLD_STATUS] = fstr("rejected");
    no_error(&r, &o);
    CHECK_INT(pb_validate(&r, &o, NULL, 0, NULL), 0);
    /* empty record, partial: nothing to check */
    memset(&r, 0, sizeof r);
    o.partial = 1;
    no_error(&r, &o);
}

static void t_validate_required(void)
{
    pb_record r;
    pb_validate_opts o = no_opts();
    vres *v;
    static const int fields[4] = { PB_FLD_OFFER_ID, PB_FLD_AFFILIATE_ID, PB_FLD_TYPE, PB_FLD_CODE };
    static const char *const msgs[4] = { "offer_id is required", "affiliate_id is required",
                                         "type is required", "code is required" };
    int i;
    memset(&r, 0, sizeof r);
    v = validate(&r, &o);
    CHECK_INT(v->n, 4);
    for (i = 0; i < 4 && i < v->n; i++) {
        CHECK_INT(v->e[i].field, fields[i]);
        CHECK_INT(v->e[i].code, PB_E_REQUIRED);
        CHECK_STR(v->e[i].message, msgs[i]);
    }
    /* one at a time */
    for (i = 0; i < 4; i++) {
        r = good_record();
        r.f[fields[i]] = fabsent();
        one_error(&r, &o, fields[i], PB_E_REQUIRED, msgs[i]);
        o.partial = 1;
        no_error(&r, &o);
        o.partial = 0;
    }
}

static void t_validate_int_fields(void)
{
    static const int fields[] = { PB_FLD_ID, PB_FLD_OFFER_ID, PB_FLD_AFFILIATE_ID,
                                  PB_FLD_EVENT_ID, PB_FLD_TYPE, PB_FLD_CREATE_TIME,
                                  PB_FLD_UPDATE_TIME };
    /* the smallest valid value of each, and the largest */
    static const long long lo[] = { 1, 0, 1, 1, 1, 0, 0 };
    static const long long hi[] = { PB_MAX_ID, PB_MAX_ID, PB_MAX_ID, PB_MAX_ID,
                                    3,         PB_MAX_ID, PB_MAX_ID };
    pb_validate_opts o = no_opts();
    size_t k;
    char msg[200];
    for (k = 0; k < sizeof fields / sizeof fields[0]; k++) {
        int f = fields[k];
        const char *nm = pb_field_names[f];
        pb_record r = good_record();
        r.f[f] = fint(lo[k]);
        no_error(&r, &o);
        r.f[f] = fint(hi[k]);
        no_error(&r, &o);
        r.f[f] = fint(lo[k] - 1);
        if (hi[k] == PB_MAX_ID)
            snprintf(msg, sizeof msg, "%s must be an integer from %lld to 9007199254740991, got %lld",
                     nm, lo[k], lo[k] - 1);
        else
            snprintf(msg, sizeof msg, "%s must be between 1 and 3, got 0", nm);
        one_error(&r, &o, f, PB_E_RANGE, msg);
        r.f[f] = fint(hi[k] + 1);
        if (hi[k] == PB_MAX_ID)
            snprintf(msg, sizeof msg,
                     "%s must be an integer from %lld to 9007199254740991, got 9007199254740992", nm,
                     lo[k]);
        else
            snprintf(msg, sizeof msg, "%s must be between 1 and 3, got 4", nm);
        one_error(&r, &o, f, PB_E_RANGE, msg);
        /* the same values as doubles (what a JSON decoder gives) */
        r.f[f] = fnum((double)lo[k]);
        no_error(&r, &o);
        r.f[f] = fnum((double)hi[k]);
        no_error(&r, &o);
        r.f[f] = fnum(9007199254740992.0);
        one_error(&r, &o, f, PB_E_RANGE, NULL);
        r.f[f] = fnum(1e19); /* beyond a long long: still a range problem */
        if (hi[k] == PB_MAX_ID)
            snprintf(msg, sizeof msg, "%s must be an integer from %lld to 9007199254740991, got 1e+19",
                     nm, lo[k]);
        else
            snprintf(msg, sizeof msg, "%s must be between 1 and 3, got 1e+19", nm);
        one_error(&r, &o, f, PB_E_RANGE, msg);
        r.f[f] = fnum(-1e300);
        one_error(&r, &o, f, PB_E_RANGE, NULL);
        r.f[f] = fnum(INFINITY);
        one_error(&r, &o, f, PB_E_TYPE, NULL);
        r.f[f] = fint(LLONG_MIN);
        one_error(&r, &o, f, PB_E_RANGE, NULL);
        r.f[f] = fint(LLONG_MAX);
        one_error(&r, &o, f, PB_E_RANGE, NULL);
        r.f[f] = fnum(1.5);
        snprintf(msg, sizeof msg, "%s must be an integer, got 1.5", nm);
        one_error(&r, &o, f, PB_E_TYPE, msg);
        r.f[f] = fnum(NAN);
        one_error(&r, &o, f, PB_E_TYPE, NULL);
        r.f[f] = fstr("12");
        snprintf(msg, sizeof msg, "%s must be an integer, got a string", nm);
        one_error(&r, &o, f, PB_E_TYPE, msg);
        r.f[f] = fother("table");
        snprintf(msg, sizeof msg, "%s must be an integer, got a table", nm);
        one_error(&r, &o, f, PB_E_TYPE, msg);
        r.f[f] = fother(NULL);
        snprintf(msg, sizeof msg, "%s must be an integer, got a value", nm);
        one_error(&r, &o, f, PB_E_TYPE, msg);
        if (cur_fail) {
            diagf("  (field %s)", nm);
            return;
        }
    }
}

static void t_validate_status(void)
{
    pb_record r = good_record();
    pb_validate_opts o = no_opts();
    static const char *const bad[] = { "Approved", "", "approved ", "pending", "REJECTED", "rejecte" };
    size_t i;
    char msg[200];
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r.f[PB_FLD_STATUS] = fstr(bad[i]);
        snprintf(msg, sizeof msg, "status must be \"approved\" or \"rejected\", got \"%s\"", bad[i]);
        one_error(&r, &o, PB_FLD_STATUS, PB_E_INVALID_STATUS, msg);
    }
    r.f[PB_FLD_STATUS] = fstr("approved\0x");
    r.f[PB_FLD_STATUS].len = 10;
    one_error(&r, &o, PB_FLD_STATUS, PB_E_INVALID_STATUS, NULL);
    /* a long status is cut to 32 bytes in the message */
    r.f[PB_FLD_STATUS] = fstr("0123456789012345678901234567890123456789");
    one_error(&r, &o, PB_FLD_STATUS, PB_E_INVALID_STATUS,
              "status must be \"approved\" or \"rejected\", got \"01234567890123456789012345678901\"");
    r.f[PB_FLD_STATUS] = fint(1);
    one_error(&r, &o, PB_FLD_STATUS, PB_E_TYPE, "status must be a string, got a number");
    r.f[PB_FLD_STATUS] = fother("boolean");
    one_error(&r, &o, PB_FLD_STATUS, PB_E_TYPE, "status must be a string, got a boolean");
}

static void t_validate_code(void)
{
    pb_record r = good_record();
    pb_validate_opts o = no_opts();
    char *big;
    r.f[PB_FLD_CODE] = fstr("");
    one_error(&r, &o, PB_FLD_CODE, PB_E_REQUIRED, "code must not be empty");
    r.f[PB_FLD_CODE] = fstr(" \t\r\n\f\v");
    one_error(&r, &o, PB_FLD_CODE, PB_E_REQUIRED, "code must not be empty");
    o.partial = 1;
    one_error(&r, &o, PB_FLD_CODE, PB_E_REQUIRED, "code must not be empty");
    o.partial = 0;
    r.f[PB_FLD_CODE] = fint(5);
    one_error(&r, &o, PB_FLD_CODE, PB_E_TYPE, "code must be a string, got a number");
    r.f[PB_FLD_CODE] = fother("table");
    one_error(&r, &o, PB_FLD_CODE, PB_E_TYPE, "code must be a string, got a table");
    /* length: 4096 by default, the option otherwise */
    big = (char *)malloc(5000);
    memset(big, 'a', 5000);
    memcpy(big, "http://example.com/", 19);
    r.f[PB_FLD_CODE] = fstr("");
    r.f[PB_FLD_CODE].s = big;
    r.f[PB_FLD_CODE].len = 4096;
    no_error(&r, &o);
    r.f[PB_FLD_CODE].len = 4097;
    one_error(&r, &o, PB_FLD_CODE, PB_E_TOO_LONG, "code is 4097 bytes long, the limit is 4096");
    /* too long: reported once, nothing else checked (here: a bad URL with an unknown macro) */
    big[0] = 'x';
    memcpy(big + 100, "{foo}", 5);
    one_error(&r, &o, PB_FLD_CODE, PB_E_TOO_LONG, NULL);
    free(big);
    o.max_code_len = 20;
    r.f[PB_FLD_CODE] = fstr("http://example.com/x");
    no_error(&r, &o);
    r.f[PB_FLD_CODE] = fstr("http://example.com/xy");
    one_error(&r, &o, PB_FLD_CODE, PB_E_TOO_LONG, "code is 21 bytes long, the limit is 20");
}

static void t_validate_code_url(void)
{
    pb_record r = good_record();
    pb_validate_opts o = no_opts();
    /* types 1 and 2 must be URLs */
    r.f[PB_FLD_CODE] = fstr("ftp://example.com/");
    one_error(&r, &o, PB_FLD_CODE, PB_E_INVALID_URL,
              "code is not an absolute http:// or https:// URL");
    r.f[PB_FLD_TYPE] = fint(1);
    one_error(&r, &o, PB_FLD_CODE, PB_E_INVALID_URL, NULL);
    r.f[PB_FLD_CODE] = fstr("http://exa mple.com/");
    one_error(&r, &o, PB_FLD_CODE, PB_E_INVALID_URL,
              "code contains whitespace or control characters");
    r.f[PB_FLD_CODE] = fstr("http://{aff_sub1}:{aff_sub2}/x"); /* macros in the host are fine */
    no_error(&r, &o);
    /* type 3 (HTML) is not a URL */
    r.f[PB_FLD_TYPE] = fint(3);
    r.f[PB_FLD_CODE] = fstr("<img src=\"https://x.example/p?c={click_id}\">");
    no_error(&r, &o);
    r.f[PB_FLD_CODE] = fstr("not a url at all");
    no_error(&r, &o);
    /* no usable type: guessed from the code ('<' first = HTML) */
    r.f[PB_FLD_TYPE] = fabsent();
    o.partial = 1;
    r.f[PB_FLD_CODE] = fstr("  \n<iframe src=x></iframe>");
    no_error(&r, &o);
    r.f[PB_FLD_CODE] = fstr("not a url");
    one_error(&r, &o, PB_FLD_CODE, PB_E_INVALID_URL, NULL);
    o.partial = 0;
    r.f[PB_FLD_TYPE] = fint(9); /* range error, then a guess */
    r.f[PB_FLD_CODE] = fstr("<img>");
    one_error(&r, &o, PB_FLD_TYPE, PB_E_RANGE, NULL);
}

static void t_validate_macros(void)
{
    pb_record r = good_record();
    pb_validate_opts o = no_opts();
    vres *v;
    char longname[101];
    char code[200];
    r.f[PB_FLD_CODE] = fstr("http://x.example/?c={clik_id}");
    one_error(&r, &o, PB_FLD_CODE, PB_E_UNKNOWN_MACRO,
              "code uses {clik_id}, which is not a documented macro (did you mean {click_id}?)");
    v = validate(&r, &o);
    CHECK_MACRO(v->e[0], "clik_id");
    r.f[PB_FLD_CODE] = fstr("http://x.example/?c={foo}");
    one_error(&r, &o, PB_FLD_CODE, PB_E_UNKNOWN_MACRO,
              "code uses {foo}, which is not a documented macro");
    r.f[PB_FLD_CODE] = fstr("http://x.example/?c=%7BCLICK_ID%7D");
    one_error(&r, &o, PB_FLD_CODE, PB_E_UNKNOWN_MACRO,
              "code uses {CLICK_ID}, which is not a documented macro (did you mean {click_id}?)");
    /* each unknown name once, in order of first use; documented names pass */
    r.f[PB_FLD_CODE] = fstr("http://x.example/{b}/{payout}/{a}/{b}/%7Ba%7D/{click_id}");
    v = validate(&r, &o);
    CHECK_INT(v->n, 2);
    if (v->n == 2) {
        CHECK_MACRO(v->e[0], "b");
        CHECK_MACRO(v->e[1], "a");
        CHECK_INT(v->e[1].code, PB_E_UNKNOWN_MACRO);
        CHECK_INT(v->e[1].field, PB_FLD_CODE);
    }
    /* literal braces are not macros */
    r.f[PB_FLD_CODE] = fstr("http://x.example/{}/{a-b}/{{click_id}}");
    no_error(&r, &o);
    /* allow_unknown_macros */
    r.f[PB_FLD_CODE] = fstr("http://x.example/{foo}");
    o.allow_unknown_macros = 1;
    no_error(&r, &o);
    o.allow_unknown_macros = 0;
    /* HTML code is checked for macros too */
    r.f[PB_FLD_TYPE] = fint(3);
    r.f[PB_FLD_CODE] = fstr("<img src=\"x?{payot}\">");
    one_error(&r, &o, PB_FLD_CODE, PB_E_UNKNOWN_MACRO, NULL);
    /* a long name: the message holds 48 bytes of it, .macro all of it */
    memset(longname, 'm', 100);
    longname[100] = '\0';
    snprintf(code, sizeof code, "http://x.example/{%s}", longname);
    r.f[PB_FLD_CODE] = fstr(code);
    v = validate(&r, &o);
    CHECK_INT(v->n, 1);
    CHECK_MACRO(v->e[0], longname);
    CHECK(strstr(v->e[0].message, "{mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm}") != NULL);
}

static void t_validate_unknown_fields(void)
{
    pb_record r = good_record();
    pb_validate_opts o = no_opts();
    static const char *const names[] = { "zz", "[1]", "a_very_long_field_name_that_goes_on_and_on_and_on_and_on",
                                         "affilate_id", "Offer_ID", "ids", "stauts" };
    size_t lens[7];
    vres *v;
    size_t i;
    for (i = 0; i < 7; i++) lens[i] = strlen(names[i]);
    r.unknown = names;
    r.unknown_len = lens;
    r.nunknown = 7;
    v = validate(&r, &o);
    CHECK_INT(v->n, 7);
    for (i = 0; i < 7 && i < (size_t)v->n; i++) {
        CHECK_INT(v->e[i].field, PB_FIELD_OTHER);
        CHECK_INT(v->e[i].code, PB_E_UNKNOWN_FIELD);
        CHECK(v->e[i].field_name == names[i]);
        CHECK_INT(v->e[i].field_len, lens[i]);
    }
    CHECK_STR(v->e[0].message, "zz is not a postback field");
    CHECK_STR(v->e[2].message,
              "a_very_long_field_name_that_goes_on_and_on_and_o is not a postback field");
    CHECK_STR(v->e[3].message, "affilate_id is not a postback field (did you mean affiliate_id?)");
    CHECK_STR(v->e[4].message, "Offer_ID is not a postback field (did you mean offer_id?)");
    CHECK_STR(v->e[5].message, "ids is not a postback field (did you mean id?)");
    CHECK_STR(v->e[6].message, "stauts is not a postback field (did you mean status?)");
    /* reported in partial mode too */
    o.partial = 1;
    memset(&r.f, 0, sizeof r.f);
    v = validate(&r, &o);
    CHECK_INT(v->n, 7);
}

static void t_validate_protocol_matrix(void)
{
    pb_validate_opts o = no_opts();
    long long p;
    int type;
    for (p = 1; p <= 3; p++) {
        unsigned allowed = pb_allowed_types(p);
        for (type = 1; type <= 3; type++) {
            pb_record r = good_record();
            int ok = (allowed >> type) & 1;
            r.f[PB_FLD_TYPE] = fint(type);
            if (type == 3) r.f[PB_FLD_CODE] = fstr("<img src=\"x\">");
            o.has_protocol = 1;
            o.protocol = (double)p;
            if (ok) {
                no_error(&r, &o);
            } else {
                one_error(&r, &o, PB_FLD_TYPE, PB_E_TYPE_NOT_ALLOWED, NULL);
            }
            /* global postbacks (offer_id 0) take any type */
            r.f[PB_FLD_OFFER_ID] = fint(0);
            no_error(&r, &o);
            /* no protocol given: no check */
            o.has_protocol = 0;
            o.protocol = 0;
            r.f[PB_FLD_OFFER_ID] = fint(12);
            no_error(&r, &o);
            if (cur_fail) {
                diagf("  (protocol %lld type %d)", p, type);
                return;
            }
        }
    }
    {
        pb_record r = good_record();
        r.f[PB_FLD_TYPE] = fint(1);
        o.has_protocol = 1;
        o.protocol = 2;
        one_error(&r, &o, PB_FLD_TYPE, PB_E_TYPE_NOT_ALLOWED,
                  "type 1 (Image Pixel) is not allowed for an offer with conversion_protocol 2 "
                  "(allowed: 2 Postback URL)");
        r.f[PB_FLD_TYPE] = fint(3);
        r.f[PB_FLD_CODE] = fstr("<img>");
        o.protocol = 1;
        one_error(&r, &o, PB_FLD_TYPE, PB_E_TYPE_NOT_ALLOWED,
                  "type 3 (HTML Pixel) is not allowed for an offer with conversion_protocol 1 "
                  "(allowed: 1 Image Pixel, 2 Postback URL)");
        /* a bad protocol is itself an error, and no type check follows */
        o.protocol = 7;
        one_error(&r, &o, PB_FIELD_PROTOCOL, PB_E_RANGE,
                  "conversion_protocol must be 1, 2 or 3, got 7");
        o.protocol = -1;
        one_error(&r, &o, PB_FIELD_PROTOCOL, PB_E_RANGE,
                  "conversion_protocol must be 1, 2 or 3, got -1");
        o.protocol = 0; /* given as 0: not a protocol */
        one_error(&r, &o, PB_FIELD_PROTOCOL, PB_E_RANGE,
                  "conversion_protocol must be 1, 2 or 3, got 0");
        o.protocol = 2.5;
        one_error(&r, &o, PB_FIELD_PROTOCOL, PB_E_RANGE,
                  "conversion_protocol must be 1, 2 or 3, got 2.5");
        o.protocol = NAN;
        one_error(&r, &o, PB_FIELD_PROTOCOL, PB_E_RANGE, NULL);
        o.protocol = 1e300;
        one_error(&r, &o, PB_FIELD_PROTOCOL, PB_E_RANGE,
                  "conversion_protocol must be 1, 2 or 3, got 1e+300");
        o.protocol = 3.0000000000000004;
        one_error(&r, &o, PB_FIELD_PROTOCOL, PB_E_RANGE, NULL);
        /* an invalid type is not checked against the protocol */
        r.f[PB_FLD_TYPE] = fint(5);
        o.protocol = 2;
        one_error(&r, &o, PB_FLD_TYPE, PB_E_RANGE, NULL);
        /* partial without type: no check */
        r.f[PB_FLD_TYPE] = fabsent();
        o.partial = 1;
        no_error(&r, &o);
    }
}

static void t_allowed_types(void)
{
    CHECK_INT(pb_allowed_types(1), (1u << 1) | (1u << 2));
    CHECK_INT(pb_allowed_types(2), 1u << 2);
    CHECK_INT(pb_allowed_types(3), (1u << 1) | (1u << 2) | (1u << 3));
    CHECK_INT(pb_allowed_types(0), 0);
    CHECK_INT(pb_allowed_types(4), 0);
    CHECK_INT(pb_allowed_types(-1), 0);
    CHECK_INT(pb_allowed_types(LLONG_MAX), 0);
    CHECK_INT(pb_allowed_types(LLONG_MIN), 0);
    CHECK_INT(pb_allowed_types(1LL << 32 | 1), 0);
}

static void t_field_names(void)
{
    int i;
    static const char *const codes[PB_NERRCODES] = { "required", "type", "range", "invalid_url",
        "too_long", "type_not_allowed", "unknown_macro", "invalid_status", "unknown_field" };
    for (i = 0; i < PB_NFIELDS; i++)
        CHECK_INT(pb_field_index(pb_field_names[i], strlen(pb_field_names[i])), i);
    for (i = 0; i < PB_NERRCODES; i++) CHECK_STR(pb_error_code_names[i], codes[i]);
    CHECK_INT(pb_field_index("id", 2), PB_FLD_ID);
    CHECK_INT(pb_field_index("code", 4), PB_FLD_CODE);
    CHECK_INT(pb_field_index("ids", 3), -1);
    CHECK_INT(pb_field_index("i", 1), -1);
    CHECK_INT(pb_field_index("", 0), -1);
    CHECK_INT(pb_field_index("Code", 4), -1);
}

/* A record with an error on every field, in a known order. */
static const char *const all_unknown[] = { "zz" };
static const size_t all_unknown_len[] = { 2 };
static pb_record all_bad_record(pb_validate_opts *o)
{
    pb_record r;
    memset(&r, 0, sizeof r);
    r.f[PB_FLD_ID] = fint(0);
    r.f[PB_FLD_OFFER_ID] = fstr("12");
    /* affiliate_id absent */
    r.f[PB_FLD_EVENT_ID] = fnum(1.5);
    r.f[PB_FLD_TYPE] = fint(9);
    r.f[PB_FLD_STATUS] = fstr("x");
    r.f[PB_FLD_CODE] = fstr("ftp://x/{foo}{aff_sub}");
    r.f[PB_FLD_CREATE_TIME] = fint(-1);
    r.f[PB_FLD_UPDATE_TIME] = fother("table");
    r.unknown = all_unknown;
    r.unknown_len = all_unknown_len;
    r.nunknown = 1;
    *o = no_opts();
    o->has_protocol = 1;
    o->protocol = 7;
    return r;
}

static void t_validate_order(void)
{
    pb_validate_opts o;
    pb_record r = all_bad_record(&o);
    static const int efield[] = { PB_FLD_ID, PB_FLD_OFFER_ID, PB_FLD_AFFILIATE_ID, PB_FLD_EVENT_ID,
                                  PB_FLD_TYPE, PB_FIELD_PROTOCOL, PB_FLD_STATUS, PB_FLD_CODE,
                                  PB_FLD_CODE, PB_FLD_CODE, PB_FLD_CREATE_TIME,
                                  PB_FLD_UPDATE_TIME, PB_FIELD_OTHER };
    static const int ecode[] = { PB_E_RANGE, PB_E_TYPE, PB_E_REQUIRED, PB_E_TYPE, PB_E_RANGE,
                                 PB_E_RANGE, PB_E_INVALID_STATUS, PB_E_INVALID_URL,
                                 PB_E_UNKNOWN_MACRO, PB_E_UNKNOWN_MACRO, PB_E_RANGE, PB_E_TYPE,
                                 PB_E_UNKNOWN_FIELD };
    size_t i, n = sizeof efield / sizeof efield[0];
    vres *v = validate(&r, &o);
    CHECK_INT(v->n, (long)n);
    for (i = 0; i < n && i < (size_t)v->n; i++) {
        if (v->e[i].field != efield[i] || v->e[i].code != ecode[i]) {
            cur_fail++;
            diagf("error %zu: field %d code %d (%s), expected field %d code %d", i, v->e[i].field,
                  v->e[i].code, v->e[i].message, efield[i], ecode[i]);
        }
    }
    if (v->n >= 10) {
        CHECK_MACRO(v->e[8], "foo");
        CHECK_MACRO(v->e[9], "aff_sub");
        CHECK(strstr(v->e[9].message, "did you mean {aff_sub1}?") != NULL);
    }
}

static void t_validate_cap(void)
{
    pb_validate_opts o;
    pb_record r = all_bad_record(&o);
    pb_verror full[MAXE], part[MAXE + 1];
    long total = pb_validate(&r, &o, full, MAXE, NULL);
    size_t cap, i;
    CHECK_INT(total, 13);
    CHECK_INT(pb_validate(&r, &o, NULL, 0, NULL), total);
    for (cap = 0; cap <= (size_t)total + 1; cap++) {
        long n;
        memset(part, 0x77, sizeof part);
        n = pb_validate(&r, &o, part, cap, NULL);
        CHECK_INT(n, total); /* always the total */
        for (i = 0; i < cap && i < (size_t)total; i++) {
            CHECK_INT(part[i].field, full[i].field);
            CHECK_INT(part[i].code, full[i].code);
            CHECK_STR(part[i].message, full[i].message);
            CHECK(part[i].macro == full[i].macro);
            CHECK_INT(part[i].macro_len, full[i].macro_len);
        }
        /* nothing written past cap */
        {
            const unsigned char *p = (const unsigned char *)&part[cap];
            size_t k, dirty = 0;
            for (k = 0; k < sizeof part[0]; k++) dirty += p[k] != 0x77;
            if (dirty) {
                cur_fail++;
                diagf("cap %zu: entry %zu was written (%zu bytes changed)", cap, cap, dirty);
            }
        }
    }
}

/* ==== allocation failure ===================================================== */

#define OOM_MAX_STEPS 2000

static const char oom_code[] =
    "https://{aff_sub1}.example.com/pb?click={click_id}&p={payout}&c=%7Bcurrency%7D"
    "&a={a1}&b={a2}&c={a3}&d={a4}&e={a5}&f={a6}&g={a7}&h={a8}&i={a9}&j={a10}"
    "&k={a11}&l={a12}&m={a13}&n={a14}&o={a15}&p={a16}&q={a17}&r={a18}&s={a19}"
    "&again={a1}{a2}{click_id}{payout}&{{x}}&{}&{a-b}&%7bfoo%7d";

static void t_oom_parse(void)
{
    pb_template *ref = pb_template_parse(oom_code, sizeof oom_code - 1, NULL);
    counter c;
    pb_alloc a;
    long n, steps = 0;
    int done = 0;
    a.fn = counter_fn;
    a.ud = &c;
    for (n = 1; n <= OOM_MAX_STEPS && !done; n++) {
        pb_template *t;
        counter_init(&c, n);
        t = pb_template_parse(oom_code, sizeof oom_code - 1, &a);
        steps = n;
        if (!t) {
            if (c.failed != 1) {
                cur_fail++;
                diagf("step %ld: NULL without a failed allocation", n);
            }
        } else {
            done = 1;
            if (c.failed) {
                cur_fail++;
                diagf("step %ld: an allocation failed but parse succeeded", n);
            }
            CHECK(t->alloc == &a);
            if (ref) {
                CHECK_INT(t->nnames, ref->nnames);
                CHECK_INT(t->nsegs, ref->nsegs);
                CHECK_INT(t->nmacros, ref->nmacros);
                CHECK_INT(t->literal_len, ref->literal_len);
            }
            pb_template_free(t);
        }
        CHECK_CLEAN(c, n);
        counter_done(&c);
        if (cur_fail) break;
    }
    CHECK(done);
    CHECK(steps >= 5); /* the template, its source, segments, names, hash and their growth */
    diagf("parse succeeded at allocation step %ld", steps);
    pb_template_free(ref);
}

static void oom_render_values(const pb_template *t, pb_value *vals, char *long_sub)
{
    size_t i;
    memset(long_sub, 0, 1);
    for (i = 0; i < 900; i++) long_sub[i] = (char)(" \xC3\xA9&abc/"[i % 8]);
    long_sub[900] = '\0';
    for (i = 0; i < t->nnames; i++) {
        const char *nm = t->src + t->names[i].off;
        size_t len = t->names[i].len;
        if (len == 8 && memcmp(nm, "aff_sub1", 8) == 0)
            vals[i] = vstr(long_sub);
        else if (len == 6 && memcmp(nm, "payout", 6) == 0)
            vals[i] = vflt(1.25);
        else if (nm[0] == 'a')
            vals[i] = vint((long long)i * 1000003);
        else
            vals[i] = vstr("3f2b8c1e-9a4d-4e7b-8c2a-1d5e6f7a8b9c");
    }
}

static void t_oom_render(void)
{
    pb_template *t = pb_template_parse(oom_code, sizeof oom_code - 1, NULL);
    pb_value vals[64];
    char long_sub[1000];
    pb_render_opts ro = { PB_MISSING_KEEP, PB_ENCODE_URL };
    pb_render_err err;
    pb_buf ref, b;
    counter c;
    pb_alloc a;
    long n, steps = 0;
    int done = 0, prefill;
    CHECK(t != NULL && t->nnames < 64);
    if (!t || t->nnames >= 64) return;
    oom_render_values(t, vals, long_sub);
    pb_buf_init(&ref, NULL);
    CHECK_INT(pb_template_render(t, vals, &ro, &ref, &err), PB_OK);
    a.fn = counter_fn;
    a.ud = &c;
    /* into an empty buffer, then into one that already holds text */
    for (prefill = 0; prefill < 2; prefill++) {
        done = 0;
        for (n = 1; n <= OOM_MAX_STEPS && !done; n++) {
            int rc;
            size_t before;
            counter_init(&c, 0);
            pb_buf_init(&b, &a);
            if (prefill) CHECK_INT(pb_buf_puts(&b, "prefix:"), PB_OK);
            before = b.len;
            c.fail_at = c.nalloc + n;
            err.code = 999;
            rc = pb_template_render(t, vals, &ro, &b, &err);
            steps = n;
            if (c.failed) {
                CHECK_INT(rc, PB_ENOMEM);
                CHECK_INT(err.code, PB_ENOMEM);
                CHECK(b.len >= before);
                if (b.data) CHECK(b.data[b.len] == '\0');
                if (prefill && b.data) CHECK(memcmp(b.data, "prefix:", 7) == 0);
            } else {
                done = 1;
                CHECK_INT(rc, PB_OK);
                CHECK_MEM(b.data + before, b.len - before, ref.data, ref.len);
            }
            pb_buf_free(&b);
            CHECK_CLEAN(c, n);
            counter_done(&c);
            if (cur_fail) break;
        }
        CHECK(done);
        CHECK(steps >= 2);
        diagf("render%s succeeded at allocation step %ld", prefill ? " (prefilled buffer)" : "",
              steps);
    }
    pb_buf_free(&ref);
    pb_template_free(t);
}

static void t_oom_encode_decode(void)
{
    char chunk[2000];
    counter c;
    pb_alloc a;
    pb_buf b, ref;
    long n;
    int pass, done;
    size_t i;
    for (i = 0; i < sizeof chunk; i++) chunk[i] = (char)(i * 37 % 256);
    a.fn = counter_fn;
    a.ud = &c;
    for (pass = 0; pass < 2; pass++) { /* 0 = encode, 1 = decode */
        /* The reference: 8 growing chunks appended one after the other. */
        pb_buf_init(&ref, NULL);
        for (i = 1; i <= 8; i++)
            CHECK_INT(pass ? pb_url_decode(&ref, chunk, i * 240) : pb_url_encode(&ref, chunk, i * 240),
                      PB_OK);
        done = 0;
        for (n = 1; n <= OOM_MAX_STEPS && !done; n++) {
            int rc = PB_OK;
            counter_init(&c, n);
            pb_buf_init(&b, &a);
            for (i = 1; i <= 8; i++) {
                size_t before = b.len;
                char *olddata = b.data;
                rc = pass ? pb_url_decode(&b, chunk, i * 240) : pb_url_encode(&b, chunk, i * 240);
                if (rc != PB_OK) {
                    CHECK_INT(rc, PB_ENOMEM);
                    CHECK_INT(b.len, before); /* unchanged */
                    CHECK(b.data == olddata);
                    CHECK(c.failed == 1);
                    break;
                }
            }
            if (rc == PB_OK) {
                done = 1;
                CHECK_INT(c.failed, 0);
                CHECK_MEM(b.data, b.len, ref.data, ref.len);
            }
            pb_buf_free(&b);
            CHECK_CLEAN(c, n);
            counter_done(&c);
            if (cur_fail) break;
        }
        CHECK(done);
        diagf("%s of 8 chunks succeeded at allocation step %ld", pass ? "decode" : "encode",
              n - 1);
        pb_buf_free(&ref);
    }
}

static void t_oom_json(void)
{
    char chunk[700];
    counter c;
    pb_alloc a;
    pb_buf b, ref;
    long n;
    int done = 0;
    size_t i;
    for (i = 0; i < sizeof chunk; i++) chunk[i] = (char)(i * 37 % 256);
    a.fn = counter_fn;
    a.ud = &c;
    /* The reference: strings, integers and doubles, one after the other. */
    pb_buf_init(&ref, NULL);
    for (i = 1; i <= 6; i++) {
        CHECK_INT(pb_json_string(&ref, chunk, i * 110), PB_OK);
        CHECK_INT(pb_json_int(&ref, (long long)i * 1234567890123LL), PB_OK);
        CHECK_INT(pb_json_double(&ref, (double)i / 7.0), PB_OK);
    }
    for (n = 1; n <= OOM_MAX_STEPS && !done; n++) {
        int rc = PB_OK, part;
        counter_init(&c, n);
        pb_buf_init(&b, &a);
        for (i = 1; i <= 6 && rc == PB_OK; i++) {
            for (part = 0; part < 3; part++) {
                size_t before = b.len;
                char *olddata = b.data;
                rc = part == 0   ? pb_json_string(&b, chunk, i * 110)
                     : part == 1 ? pb_json_int(&b, (long long)i * 1234567890123LL)
                                 : pb_json_double(&b, (double)i / 7.0);
                if (rc != PB_OK) {
                    CHECK_INT(rc, PB_ENOMEM);
                    CHECK_INT(b.len, before); /* unchanged */
                    CHECK(b.data == olddata);
                    CHECK(c.failed == 1);
                    break;
                }
            }
        }
        if (rc == PB_OK) {
            done = 1;
            CHECK_INT(c.failed, 0);
            CHECK_MEM(b.data, b.len, ref.data, ref.len);
        }
        pb_buf_free(&b);
        CHECK_CLEAN(c, n);
        counter_done(&c);
        if (cur_fail) break;
    }
    CHECK(done);
    diagf("JSON pieces succeeded at allocation step %ld", n - 1);
    pb_buf_free(&ref);
}

static void t_oom_validate(void)
{
    pb_record r = good_record();
    pb_validate_opts o = no_opts();
    pb_verror errs[40];
    counter c;
    pb_alloc a;
    long n, want, got, steps = 0;
    int done = 0;
    r.f[PB_FLD_CODE] = fstr(oom_code); /* 20 unknown macros + the ones documented */
    r.f[PB_FLD_STATUS] = fstr("nope");
    want = pb_validate(&r, &o, errs, 40, NULL);
    CHECK(want > 20);
    a.fn = counter_fn;
    a.ud = &c;
    for (n = 1; n <= OOM_MAX_STEPS && !done; n++) {
        counter_init(&c, n);
        got = pb_validate(&r, &o, errs, 40, &a);
        steps = n;
        if (c.failed) {
            CHECK_INT(got, PB_ENOMEM);
        } else {
            done = 1;
            CHECK_INT(got, want);
        }
        CHECK_CLEAN(c, n);
        counter_done(&c);
        if (cur_fail) break;
    }
    CHECK(done);
    CHECK(steps >= 5);
    /* with unknown macros allowed, validation allocates nothing */
    o.allow_unknown_macros = 1;
    counter_init(&c, 1);
    got = pb_validate(&r, &o, errs, 40, &a);
    CHECK_INT(got, 1);
    CHECK_INT(c.nalloc, 0);
    counter_done(&c);
    diagf("validate succeeded at allocation step %ld", steps);
}

/* ---- spool ------------------------------------------------------------------ */

static char spool_dir[64];

/* A fresh temporary directory per test; the spool path inside it. */
static const char *spool_path(char *buf, size_t n)
{
    strcpy(spool_dir, "/tmp/pb-spool-XXXXXX");
    if (!mkdtemp(spool_dir)) abort();
    snprintf(buf, n, "%s/s", spool_dir);
    return buf;
}

static void spool_cleanup(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", spool_dir);
    if (system(cmd) != 0) diagf("cleanup of %s failed", spool_dir);
}

static void put_file(const char *path, const char *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n)) abort();
    fclose(f);
}

/* The file's contents (malloc'd, NUL-terminated) or NULL; *n its length. */
static char *get_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    char *p;
    long len;
    *n = 0;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    p = malloc((size_t)len + 1);
    if (!p || fread(p, 1, (size_t)len, f) != (size_t)len) abort();
    p[len] = '\0';
    fclose(f);
    *n = (size_t)len;
    return p;
}

static long file_len(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static char *with_suffix(const char *path, const char *suffix)
{
    static char buf[4][128];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s%s", path, suffix);
    return buf[k];
}

/* Collects the owed records: "id:payload;" for each, in order. */
static void owed_text(pb_spool *sp, pb_buf *out)
{
    pb_buf one;
    long long id = 0, after = 0;
    pb_spool_err e;
    pb_buf_init(&one, NULL);
    pb_buf_reset(out);
    while (pb_spool_next(sp, after, &id, &one, &e) == 1) {
        pb_buf_printf(out, "%lld:", id);
        pb_buf_append(out, one.data, one.len);
        pb_buf_putc(out, ';');
        pb_buf_reset(&one);
        after = id;
    }
    pb_buf_free(&one);
}

#define CHECK_OWED(sp, exp)                 \
    do {                                    \
        pb_buf ob_;                         \
        pb_buf_init(&ob_, NULL);            \
        owed_text(sp, &ob_);                \
        CHECK_BUF(ob_, exp);                \
        pb_buf_free(&ob_);                  \
    } while (0)

/* A record line as the spool writes it. */
static size_t make_line(char *out, const char *body)
{
    size_t n = strlen(body);
    sprintf(out, "%08lx %s\n", (unsigned long)pb_crc32(body, n), body);
    return n + 10;
}

static void t_crc32(void)
{
    char line[64];
    CHECK_INT(pb_crc32("123456789", 9), 0xCBF43926u);
    CHECK_INT(pb_crc32("", 0), 0);
    CHECK_INT(make_line(line, "+1 x"), 14);
    CHECK_INT(pb_spool_check(line, 13), 9);
    line[0] = line[0] == 'f' ? 'e' : 'f';
    CHECK_INT(pb_spool_check(line, 13), -1);
    CHECK_INT(pb_spool_check("0000000 x", 9), -1);
    CHECK_INT(pb_spool_check("00000000 ", 9), 9); /* the CRC of "" is 0 */
    CHECK_INT(pb_spool_check("00000000", 8), -1);
    CHECK_INT(pb_spool_check("0000000A ", 9), -1); /* uppercase is not ours */
}

static void t_spool_file(void)
{
    char path[96], *data;
    size_t n;
    int fd;
    spool_path(path, sizeof path);
    fd = pb_spool_file_open(path);
    CHECK(fd >= 0);
    CHECK_INT(pb_spool_file_append(fd, "{\"a\":1}", 7), 0);
    CHECK_INT(pb_spool_file_append(fd, "x\ny", 3), -1);
    CHECK_INT(errno, EINVAL);
    CHECK_INT(pb_spool_file_sync(fd), 0);
    pb_spool_file_close(fd);
    data = get_file(path, &n);
    CHECK_INT(n, 17);
    CHECK(data && pb_spool_check(data, 16) == 9 && memcmp(data + 9, "{\"a\":1}", 7) == 0);
    free(data);
    spool_cleanup();
}

static void t_spool_basic(void)
{
    char path[96];
    pb_spool *sp = NULL, *sp2 = NULL;
    pb_spool_err e;
    pb_spool_stats st;
    pb_spool_event ev[4];
    long long id = 0;
    int i;
    spool_path(path, sizeof path);
    CHECK_INT(pb_spool_open(&sp, path, NULL, &e), PB_SPOOL_OK);
    CHECK_INT(file_len(path), 0);
    CHECK_INT(file_len(with_suffix(path, ".lock")) > 0, 1);
    for (i = 1; i <= 5; i++) {
        char p[16];
        sprintf(p, "p%d", i);
        CHECK_INT(pb_spool_add(sp, p, strlen(p), &id, &e), PB_SPOOL_OK);
        CHECK_INT(id, i);
    }
    CHECK_INT(pb_spool_add(sp, "a\nb", 3, &id, &e), PB_SPOOL_EINVAL);
    CHECK_INT(pb_spool_add(sp, "", 0, &id, &e), PB_SPOOL_OK); /* an empty payload is a record */
    CHECK_INT(id, 6);
    CHECK_INT(pb_spool_done(sp, 2, &e), 1);
    CHECK_INT(pb_spool_done(sp, 2, &e), 0);
    CHECK_INT(pb_spool_done(sp, 99, &e), 0);
    CHECK_INT(pb_spool_done(sp, 6, &e), 1);
    CHECK_OWED(sp, "1:p1;3:p3;4:p4;5:p5;");
    CHECK_INT(pb_spool_sync(sp, &e), PB_SPOOL_OK);
    /* A second opener, in this very process, is refused and told the pid. */
    CHECK_INT(pb_spool_open(&sp2, path, NULL, &e), PB_SPOOL_ELOCKED);
    CHECK(sp2 == NULL);
    CHECK_INT(e.pid, getpid());
    CHECK(strstr(e.msg, "in use by process") != NULL);
    pb_spool_get_stats(sp, &st);
    CHECK_INT(st.owed, 4);
    CHECK_INT(st.added, 6);
    CHECK_INT(st.done, 2);
    CHECK_INT(st.last_id, 6);
    CHECK_INT(st.bytes, file_len(path));
    CHECK_INT(pb_spool_close(sp, &e), PB_SPOOL_OK);
    /* Reopened: the same owed records; the done ones are compacted away and
     * ids go on from the highest used, even with nothing owed above it. */
    CHECK_INT(pb_spool_open(&sp, path, NULL, &e), PB_SPOOL_OK);
    CHECK_OWED(sp, "1:p1;3:p3;4:p4;5:p5;");
    pb_spool_get_stats(sp, &st);
    CHECK_INT(st.compactions, 1);
    CHECK_INT(st.corrupt, 0);
    CHECK_INT(pb_spool_events(sp, ev, 4), 0);
    CHECK_INT(pb_spool_add(sp, "p7", 2, &id, &e), PB_SPOOL_OK);
    CHECK_INT(id, 7);
    for (i = 1; i <= 7; i++) pb_spool_done(sp, i, &e);
    CHECK_INT(pb_spool_compact(sp, &e), PB_SPOOL_OK);
    CHECK_INT(file_len(path), 12); /* "xxxxxxxx =7\n" */
    pb_spool_close(sp, &e);
    CHECK_INT(pb_spool_open(&sp, path, NULL, &e), PB_SPOOL_OK);
    CHECK_INT(pb_spool_add(sp, "p8", 2, &id, &e), PB_SPOOL_OK);
    CHECK_INT(id, 8);
    CHECK_INT(pb_spool_add(sp, "0123456789", 10, &id, &e), PB_SPOOL_OK);
    pb_spool_close(sp, &e);
    /* max_record */
    {
        pb_spool_opts o;
        memset(&o, 0, sizeof o);
        o.max_record = 4;
        CHECK_INT(pb_spool_open(&sp, path, &o, &e), PB_SPOOL_OK);
        CHECK_INT(pb_spool_add(sp, "12345", 5, &id, &e), PB_SPOOL_ETOOBIG);
        CHECK_OWED(sp, "8:p8;"); /* the 10-byte record is too long now: moved out */
        CHECK_INT(pb_spool_events(sp, ev, 4), 1);
        CHECK_INT(ev[0].what, PB_SPOOL_DAMAGED_TOO_LONG);
        CHECK_INT(ev[0].id, 9);
        CHECK_INT(ev[0].saved, 1);
        pb_spool_close(sp, &e);
    }
    spool_cleanup();
}

static void t_spool_bad_paths(void)
{
    char path[96], sub[128];
    pb_spool *sp = NULL;
    pb_spool_err e;
    spool_path(path, sizeof path);
    CHECK_INT(pb_spool_open(&sp, spool_dir, NULL, &e), PB_SPOOL_ESYS); /* a directory */
    CHECK_INT(e.sys, EISDIR);
    CHECK(sp == NULL);
    CHECK_INT(pb_spool_open(&sp, "", NULL, &e), PB_SPOOL_EINVAL);
    snprintf(sub, sizeof sub, "%s/no/such", spool_dir);
    CHECK_INT(pb_spool_open(&sp, sub, NULL, &e), PB_SPOOL_ESYS);
    CHECK_INT(e.sys, ENOENT);
    CHECK(strstr(e.msg, sub) != NULL);
    CHECK_INT(file_len(with_suffix(spool_dir, ".lock")), -1); /* nothing created */
    CHECK_INT(mkfifo(path, 0600), 0);
    CHECK_INT(pb_spool_open(&sp, path, NULL, &e), PB_SPOOL_EINVAL);
    CHECK(strstr(e.msg, "not a regular file") != NULL);
    spool_cleanup();
}

static void t_spool_symlink(void)
{
    char path[96], link[128];
    pb_spool *sp = NULL, *sp2 = NULL;
    pb_spool_err e;
    struct stat st;
    long long id;
    spool_path(path, sizeof path);
    snprintf(link, sizeof link, "%s/link", spool_dir);
    CHECK_INT(symlink("s", link), 0);
    CHECK_INT(pb_spool_open(&sp, link, NULL, &e), PB_SPOOL_OK);
    CHECK_INT(pb_spool_open(&sp2, path, NULL, &e), PB_SPOOL_ELOCKED); /* one lock for both names */
    pb_spool_add(sp, "a", 1, &id, &e);
    pb_spool_add(sp, "b", 1, &id, &e);
    pb_spool_done(sp, 1, &e);
    CHECK_INT(pb_spool_compact(sp, &e), PB_SPOOL_OK);
    pb_spool_close(sp, &e);
    CHECK_INT(lstat(link, &st), 0);
    CHECK(S_ISLNK(st.st_mode)); /* the file it points to was replaced, not the link */
    CHECK_INT(pb_spool_open(&sp, path, NULL, &e), PB_SPOOL_OK);
    CHECK_OWED(sp, "2:b;");
    pb_spool_close(sp, &e);
    spool_cleanup();
}

/* Fault injection through the spool's io hooks. */
typedef struct fault {
    long budget;       /* bytes pwrite may still write (-1: no limit); then ENOSPC */
    int fail_truncate; /* ftruncate fails with EIO */
    long writes;
} fault;

static ssize_t fault_pwrite(void *ud, int fd, const void *p, size_t n, off_t off)
{
    fault *f = (fault *)ud;
    f->writes++;
    if (f->budget >= 0) {
        if (f->budget == 0) {
            errno = ENOSPC;
            return -1;
        }
        if ((long)n > f->budget) n = (size_t)f->budget; /* a short write */
        f->budget -= (long)n;
    }
    return pwrite(fd, p, n, off);
}

static int fault_ftruncate(void *ud, int fd, off_t len)
{
    fault *f = (fault *)ud;
    if (f->fail_truncate) {
        errno = EIO;
        return -1;
    }
    return ftruncate(fd, len);
}

static int fault_fsync(void *ud, int fd, int full)
{
    (void)ud;
    return full ? fsync(fd) : fdatasync(fd);
}

static void t_spool_failed_append(void)
{
    char path[96];
    pb_spool *sp = NULL;
    pb_spool_err e;
    pb_spool_opts o;
    pb_spool_stats st;
    pb_spool_io io;
    fault f;
    long long id = 0;
    long before, k;
    const char *big = "{\"url\":\"http://127.0.0.1/pb?click_id=abcdefghijklmnop\"}";
    spool_path(path, sizeof path);
    memset(&f, 0, sizeof f);
    f.budget = -1;
    io.pwrite = fault_pwrite;
    io.ftruncate = fault_ftruncate;
    io.fsync = fault_fsync;
    io.ud = &f;
    memset(&o, 0, sizeof o);
    o.io = &io;
    CHECK_INT(pb_spool_open(&sp, path, &o, &e), PB_SPOOL_OK);
    CHECK_INT(pb_spool_add(sp, "before", 6, &id, &e), PB_SPOOL_OK);
    before = file_len(path);
    /* Every length of partial write: cut back, the spool goes on. */
    for (k = 0; k < (long)strlen(big) + 12; k++) {
        f.budget = k;
        CHECK_INT(pb_spool_add(sp, big, strlen(big), &id, &e), PB_SPOOL_ESYS);
        CHECK_INT(e.sys, ENOSPC);
        CHECK_INT(file_len(path), before);
    }
    f.budget = -1;
    CHECK_INT(pb_spool_add(sp, "after", 5, &id, &e), PB_SPOOL_OK);
    CHECK_INT(id, 2); /* the failed adds used no id */
    before = file_len(path);
    /* The cut fails too: adds are refused until it works. */
    f.budget = 7;
    f.fail_truncate = 1;
    CHECK_INT(pb_spool_add(sp, big, strlen(big), &id, &e), PB_SPOOL_ESYS);
    CHECK(strstr(e.msg, "could not be cut off") != NULL);
    CHECK_INT(file_len(path), before + 7);
    f.budget = -1;
    CHECK_INT(pb_spool_add(sp, "refused", 7, &id, &e), PB_SPOOL_ETAIL);
    CHECK_INT(pb_spool_done(sp, 1, &e), PB_SPOOL_ETAIL); /* no longer owed here, mark not written */
    pb_spool_get_stats(sp, &st);
    CHECK_INT(st.tail_broken, 1);
    CHECK_INT(file_len(path), before + 7);
    f.fail_truncate = 0;
    CHECK_INT(pb_spool_add(sp, "later", 5, &id, &e), PB_SPOOL_OK);
    CHECK_INT(id, 3);
    pb_spool_get_stats(sp, &st);
    CHECK_INT(st.tail_broken, 0);
    CHECK_INT(st.bytes, file_len(path));
    pb_spool_close(sp, &e);
    /* Reopened: nothing damaged, every record that was accepted is there
     * (1 is owed again: its done mark could not be written). */
    CHECK_INT(pb_spool_open(&sp, path, NULL, &e), PB_SPOOL_OK);
    pb_spool_get_stats(sp, &st);
    CHECK_INT(st.corrupt, 0);
    CHECK_OWED(sp, "1:before;2:after;3:later;");
    pb_spool_close(sp, &e);
    CHECK_INT(file_len(with_suffix(path, ".corrupt")), -1);
    spool_cleanup();
}

/* Writes "=3", +1 a, +2 bb, +3 ccc into path; returns the offsets of the
 * lines in offs[0..4] (offs[4] = the end). */
static size_t three_records(const char *path, char *buf, size_t offs[5])
{
    static const char *const bodies[] = { "=3", "+1 {\"u\":\"a\"}", "+2 {\"u\":\"bb\"}",
                                          "+3 {\"u\":\"ccc\"}" };
    size_t n = 0;
    int i;
    for (i = 0; i < 4; i++) {
        offs[i] = n;
        n += make_line(buf + n, bodies[i]);
    }
    offs[4] = n;
    put_file(path, buf, n);
    return n;
}

static void t_spool_bit_flips(void)
{
    char path[96], buf[256], flipped[256];
    size_t offs[5], n, pos, cn;
    int bit, bad = 0, cases = 0;
    spool_path(path, sizeof path);
    n = three_records(path, buf, offs);
    for (pos = offs[2]; pos < offs[3]; pos++) {
        for (bit = 0; bit < 8; bit++) {
            pb_spool *sp = NULL;
            pb_spool_err e;
            pb_spool_event ev[8];
            pb_spool_stats st;
            pb_buf ob;
            size_t nev, i;
            int named = 0;
            char *corrupt;
            memcpy(flipped, buf, n);
            flipped[pos] = (char)(flipped[pos] ^ (1 << bit));
            put_file(path, flipped, n);
            unlink(with_suffix(path, ".corrupt"));
            cases++;
            if (pb_spool_open(&sp, path, NULL, &e) != PB_SPOOL_OK) {
                bad++;
                diagf("flip %lu.%d: open failed: %s", (unsigned long)pos, bit, e.msg);
                continue;
            }
            pb_buf_init(&ob, NULL);
            owed_text(sp, &ob);
            nev = pb_spool_events(sp, ev, 8);
            pb_spool_get_stats(sp, &st);
            for (i = 0; i < nev; i++)
                if (ev[i].line == 3 && ev[i].saved && ev[i].offset == offs[2]) named = 1;
            corrupt = get_file(with_suffix(path, ".corrupt"), &cn);
            if (strcmp(pb_buf_str(&ob), "1:{\"u\":\"a\"};3:{\"u\":\"ccc\"};") != 0 || !named ||
                st.corrupt != nev || !corrupt || cn < 10 || st.compactions != 1) {
                bad++;
                if (bad < 5)
                    diagf("flip %lu.%d: owed %s, %lu events, named %d, corrupt %lu bytes",
                          (unsigned long)pos, bit, pb_buf_str(&ob), (unsigned long)nev, named,
                          (unsigned long)cn);
            }
            free(corrupt);
            pb_buf_free(&ob);
            pb_spool_close(sp, &e);
            /* compacted: opening again finds nothing damaged */
            if (pb_spool_open(&sp, path, NULL, &e) != PB_SPOOL_OK ||
                pb_spool_events(sp, ev, 8) != 0)
                bad++;
            pb_spool_close(sp, &e);
        }
    }
    CHECK_INT(bad, 0);
    CHECK_INT(cases, 8 * (offs[3] - offs[2]));
    spool_cleanup();
}

static void t_spool_truncations(void)
{
    char path[96], buf[256];
    size_t offs[5], n, cut;
    int bad = 0;
    spool_path(path, sizeof path);
    n = three_records(path, buf, offs);
    for (cut = offs[3]; cut <= n; cut++) {
        pb_spool *sp = NULL;
        pb_spool_err e;
        pb_spool_event ev[8];
        pb_buf ob;
        size_t nev;
        long long id;
        int torn = cut > offs[3] && cut < n;
        put_file(path, buf, cut);
        unlink(with_suffix(path, ".corrupt"));
        if (pb_spool_open(&sp, path, NULL, &e) != PB_SPOOL_OK) {
            bad++;
            continue;
        }
        nev = pb_spool_events(sp, ev, 8);
        pb_buf_init(&ob, NULL);
        owed_text(sp, &ob);
        if (torn) {
            if (nev != 1 || ev[0].what != PB_SPOOL_DAMAGED_TORN || ev[0].line != 4 ||
                ev[0].offset != offs[3] || ev[0].length != cut - offs[3] || !ev[0].saved ||
                (unsigned long)file_len(with_suffix(path, ".corrupt")) != cut - offs[3] + 1 ||
                strcmp(pb_buf_str(&ob), "1:{\"u\":\"a\"};2:{\"u\":\"bb\"};") != 0)
                bad++;
        } else if (nev != 0 || strcmp(pb_buf_str(&ob), cut == n ? "1:{\"u\":\"a\"};2:{\"u\":\"bb\"};3:{\"u\":\"ccc\"};"
                                                               : "1:{\"u\":\"a\"};2:{\"u\":\"bb\"};") != 0) {
            bad++;
        }
        /* What is added next is whole, never glued to the torn line. */
        if (pb_spool_add(sp, "next", 4, &id, &e) != PB_SPOOL_OK) bad++;
        pb_spool_close(sp, &e);
        if (pb_spool_open(&sp, path, NULL, &e) != PB_SPOOL_OK || pb_spool_events(sp, ev, 8) != 0)
            bad++;
        pb_buf_reset(&ob);
        owed_text(sp, &ob);
        if (!strstr(pb_buf_str(&ob), ":next;")) bad++;
        if (cur_fail == 0 && bad) diagf("cut at %lu: owed %s", (unsigned long)cut, pb_buf_str(&ob));
        pb_buf_free(&ob);
        pb_spool_close(sp, &e);
        if (bad) break;
    }
    CHECK_INT(bad, 0);
    spool_cleanup();
}

static void t_spool_damage_kinds(void)
{
    char path[96], buf[1024], line[128];
    size_t n = 0, cn;
    pb_spool *sp = NULL;
    pb_spool_err e;
    pb_spool_event ev[16];
    size_t nev;
    char *corrupt;
    spool_path(path, sizeof path);
    n += make_line(buf + n, "+1 one");
    n += make_line(buf + n, "{\"op\":\"add\",\"id\":2}"); /* checksum right, not ours */
    n += make_line(buf + n, "+1 again");                 /* a repeated id */
    /* two records glued together: the first loses its '\n' */
    make_line(line, "+3 three");
    line[strlen(line) - 1] = '#';
    memcpy(buf + n, line, strlen(line));
    n += strlen(line);
    n += make_line(buf + n, "+4 four");
    buf[n++] = '\n'; /* an empty line: nothing */
    n += make_line(buf + n, "-9");
    put_file(path, buf, n);
    CHECK_INT(pb_spool_open(&sp, path, NULL, &e), PB_SPOOL_OK);
    CHECK_OWED(sp, "1:one;4:four;");
    nev = pb_spool_events(sp, ev, 16);
    CHECK_INT(nev, 3);
    CHECK_INT(ev[0].what, PB_SPOOL_DAMAGED_FORMAT);
    CHECK_INT(ev[0].line, 2);
    CHECK_INT(ev[1].what, PB_SPOOL_DAMAGED_DUPLICATE);
    CHECK_INT(ev[1].id, 1);
    CHECK_INT(ev[2].what, PB_SPOOL_DAMAGED_CHECKSUM);
    CHECK_INT(ev[2].line, 4);
    CHECK_INT(ev[2].id, 3);
    CHECK_INT(ev[2].length, strlen(line));
    pb_spool_close(sp, &e);
    corrupt = get_file(with_suffix(path, ".corrupt"), &cn);
    CHECK(corrupt && strstr(corrupt, "{\"op\":\"add\",\"id\":2}\n") && strstr(corrupt, " +1 again\n") &&
          strstr(corrupt, " +3 three#\n"));
    free(corrupt);
    /* ids go on above every id read, the done of 9 included */
    {
        long long id;
        CHECK_INT(pb_spool_open(&sp, path, NULL, &e), PB_SPOOL_OK);
        CHECK_INT(pb_spool_add(sp, "x", 1, &id, &e), PB_SPOOL_OK);
        CHECK_INT(id, 10);
        CHECK_INT(pb_spool_discard(sp, 4, &e), 1);
        CHECK_INT(pb_spool_discard(sp, 4, &e), 0);
        CHECK_INT(pb_spool_events(sp, ev, 16), 1);
        CHECK_INT(ev[0].what, PB_SPOOL_DISCARDED);
        CHECK_INT(ev[0].id, 4);
        CHECK_OWED(sp, "1:one;10:x;");
        pb_spool_close(sp, &e);
        corrupt = get_file(with_suffix(path, ".corrupt"), &cn);
        CHECK(corrupt && strstr(corrupt, " +4 four\n"));
        free(corrupt);
    }
    spool_cleanup();
}

/* The last id, 2^53 - 1: read, owed once (next after it is none), and no
 * id is given after it. */
static void t_spool_last_id(void)
{
    char path[96], buf[256];
    size_t n = 0;
    long long id = 0;
    pb_spool *sp = NULL;
    pb_spool_err e;
    pb_buf one;
    spool_path(path, sizeof path);
    n += make_line(buf + n, "+5 five");
    n += make_line(buf + n, "+9007199254740991 last");
    put_file(path, buf, n);
    CHECK_INT(pb_spool_open(&sp, path, NULL, &e), PB_SPOOL_OK);
    CHECK_OWED(sp, "5:five;9007199254740991:last;");
    pb_buf_init(&one, NULL);
    CHECK_INT(pb_spool_next(sp, 9007199254740990LL, &id, &one, &e), 1);
    CHECK_INT(id, 9007199254740991LL);
    pb_buf_reset(&one);
    CHECK_INT(pb_spool_next(sp, 9007199254740991LL, &id, &one, &e), 0);
    CHECK_INT(pb_spool_next(sp, 9007199254740992LL, &id, &one, &e), 0);
    CHECK_INT(one.len, 0);
    pb_buf_free(&one);
    CHECK_INT(pb_spool_add(sp, "x", 1, &id, &e), PB_SPOOL_EINVAL);
    pb_spool_close(sp, &e);
    spool_cleanup();
}

/* Lines too long to be records (over max_record and the line's frame):
 * streamed to .corrupt as they are read, with their ids: one longer than a
 * read (16384 bytes), one whose first bytes end a read, one torn at the end
 * of the file; the records around them are kept. */
static void t_spool_long_lines(void)
{
    enum { BIG = 40000, MID = 100, TAIL = 300, EDGE = 3 * 16384 - 5 };
    char path[96], *buf, *corrupt;
    size_t n = 0, cn, i, pad = 0, want;
    size_t off[3];
    const size_t len[3] = { 12 + BIG, 12 + MID, 12 + TAIL };
    pb_spool *sp = NULL;
    pb_spool_err e;
    pb_spool_opts o;
    pb_spool_event ev[8];
    int nev;
    spool_path(path, sizeof path);
    buf = malloc(EDGE + MID + TAIL + 100);
    if (!buf) abort();
    n += make_line(buf + n, "+1 one");
    off[0] = n;
    memcpy(buf + n, "00000000 +2 ", 12);
    n += 12;
    for (i = 0; i < BIG; i++) buf[n++] = 'a';
    buf[n++] = '\n';
    n += make_line(buf + n, "+3 three");
    while (n < EDGE) { /* empty lines, up to 5 bytes before the third read ends */
        buf[n++] = '\n';
        pad++;
    }
    off[1] = n;
    memcpy(buf + n, "00000000 +5 ", 12);
    n += 12;
    for (i = 0; i < MID; i++) buf[n++] = 'c';
    buf[n++] = '\n';
    off[2] = n;
    memcpy(buf + n, "00000000 +4 ", 12);
    n += 12;
    for (i = 0; i < TAIL; i++) buf[n++] = 'b'; /* no '\n': torn */
    put_file(path, buf, n);
    memset(&o, 0, sizeof o);
    o.max_record = 16;
    CHECK_INT(pb_spool_open(&sp, path, &o, &e), PB_SPOOL_OK);
    CHECK_OWED(sp, "1:one;3:three;");
    nev = pb_spool_events(sp, ev, 8);
    CHECK_INT(nev, 3);
    for (i = 0; i < 3 && (int)i < nev; i++) {
        static const long long ids[3] = { 2, 5, 4 };
        const unsigned long long lines[3] = { 2, 4 + pad, 5 + pad };
        CHECK_INT(ev[i].what, PB_SPOOL_DAMAGED_TOO_LONG);
        CHECK_INT(ev[i].line, lines[i]);
        CHECK_INT(ev[i].offset, off[i]);
        CHECK_INT(ev[i].length, len[i]);
        CHECK_INT(ev[i].id, ids[i]);
        CHECK_INT(ev[i].saved, 1);
    }
    pb_spool_close(sp, &e);
    /* the three lines, each ended by a '\n' */
    corrupt = get_file(with_suffix(path, ".corrupt"), &cn);
    want = len[0] + len[1] + len[2] + 3;
    CHECK_INT(cn, want);
    if (corrupt && cn == want) {
        CHECK_MEM(corrupt, len[0] + 1, buf + off[0], len[0] + 1);
        CHECK_MEM(corrupt + len[0] + 1, len[1] + 1, buf + off[1], len[1] + 1);
        CHECK_MEM(corrupt + len[0] + len[1] + 2, len[2], buf + off[2], len[2]);
        CHECK_INT(corrupt[cn - 1], '\n');
    }
    free(corrupt);
    free(buf);
    spool_cleanup();
}

static void t_spool_compaction(void)
{
    char path[96], payload[200];
    pb_spool *sp = NULL;
    pb_spool_err e;
    pb_spool_opts o;
    pb_spool_stats st;
    struct stat sb;
    long long id, oldest = 1;
    long i, peak = 0;
    spool_path(path, sizeof path);
    memset(payload, 'x', sizeof payload);
    memset(&o, 0, sizeof o);
    o.compact_after = 100;
    CHECK_INT(pb_spool_open(&sp, path, &o, &e), PB_SPOOL_OK);
    CHECK_INT(chmod(path, 0640), 0);
    /* 20,000 records, never more than 500 owed: the file follows what is
     * owed (about 2 x 500 x 210 bytes), not what was ever added. */
    for (i = 0; i < 20000; i++) {
        if (pb_spool_add(sp, payload, sizeof payload, &id, &e) != PB_SPOOL_OK) break;
        if (id - oldest >= 500) pb_spool_done(sp, oldest++, &e);
        if (file_len(path) > peak) peak = file_len(path);
        if (i % 10 == 0) pb_spool_sync(sp, &e);
    }
    CHECK_INT(i, 20000);
    pb_spool_get_stats(sp, &st);
    CHECK(st.compactions > 20);
    CHECK_INT(st.compact_failures, 0);
    CHECK(peak < 2 * 501 * 212 + 110 * 212);
    CHECK_INT(st.peak_bytes, peak);
    CHECK_INT(st.owed, 500);
    diagf("20,000 added, 500 owed: %llu compactions, peak %ld bytes", st.compactions, peak);
    CHECK_INT(stat(path, &sb), 0);
    CHECK_INT(sb.st_mode & 07777, 0640);
    CHECK_INT(file_len(with_suffix(path, ".tmp")), -1);
    pb_spool_close(sp, &e);
    CHECK_INT(pb_spool_open(&sp, path, &o, &e), PB_SPOOL_OK);
    pb_spool_get_stats(sp, &st);
    CHECK_INT(st.owed, 500);
    CHECK_INT(st.last_id, 20000);
    CHECK_INT(pb_spool_events(sp, NULL, 0), 0);
    pb_spool_close(sp, &e);
    spool_cleanup();
}

/* Opening and using a spool with the Nth allocation failing: a clean
 * PB_SPOOL_ENOMEM (or a failed compaction event), nothing leaked, and what
 * was accepted is always there. */
static void t_oom_spool(void)
{
    char path[96], buf[512];
    size_t offs[5], n;
    counter c;
    pb_alloc a;
    long step, steps = 0;
    int done = 0;
    spool_path(path, sizeof path);
    a.fn = counter_fn;
    a.ud = &c;
    for (step = 1; step <= OOM_MAX_STEPS && !done; step++) {
        pb_spool *sp = NULL;
        pb_spool_err e;
        pb_spool_opts o;
        pb_spool_event ev[32];
        long long id;
        int i, rc, failed = 0, kept = 0;
        size_t k;
        /* a file with a done record and a damaged one, so the open compacts */
        n = three_records(path, buf, offs);
        n += make_line(buf + n, "-2");
        memcpy(buf + n, "0badc0de +4 x\n", 14);
        n += 14;
        put_file(path, buf, n);
        unlink(with_suffix(path, ".corrupt"));
        memset(&o, 0, sizeof o);
        o.alloc = &a;
        o.compact_after = 5;
        counter_init(&c, step);
        rc = pb_spool_open(&sp, path, &o, &e);
        if (rc != PB_SPOOL_OK) {
            CHECK_INT(rc, PB_SPOOL_ENOMEM);
            CHECK(sp == NULL);
            CHECK_INT(c.failed, 1);
            failed = 1;
        } else {
            for (i = 0; i < 200; i++) {
                char p[32];
                sprintf(p, "record %d", i);
                rc = pb_spool_add(sp, p, strlen(p), &id, &e);
                if (rc == PB_SPOOL_ENOMEM) {
                    failed = 1;
                    continue;
                }
                CHECK_INT(rc, PB_SPOOL_OK);
                if (i % 3) pb_spool_done(sp, id, &e);
                else kept++;
                rc = pb_spool_sync(sp, &e);
                CHECK_INT(rc, PB_SPOOL_OK);
            }
            while ((k = pb_spool_events(sp, ev, 32)) > 0)
                while (k--)
                    if (ev[k].what == PB_SPOOL_COMPACT_FAILED) failed = 1;
            failed |= c.failed > 0;
            pb_spool_close(sp, &e);
        }
        CHECK_CLEAN(c, step);
        counter_done(&c);
        /* whatever failed, what was owed or accepted is there */
        if (pb_spool_open(&sp, path, NULL, &e) == PB_SPOOL_OK) {
            pb_spool_stats st;
            pb_buf ob;
            pb_spool_get_stats(sp, &st);
            CHECK(st.owed >= (size_t)(2 + kept));
            pb_buf_init(&ob, NULL);
            owed_text(sp, &ob);
            CHECK(strncmp(pb_buf_str(&ob), "1:{\"u\":\"a\"};3:{\"u\":\"ccc\"};", 26) == 0);
            pb_buf_free(&ob);
            pb_spool_close(sp, &e);
        } else {
            CHECK(!"reopen failed");
        }
        steps = step;
        if (!failed) done = 1;
        if (cur_fail) {
            diagf("at allocation step %ld", step);
            break;
        }
    }
    CHECK(done);
    CHECK(steps >= 5);
    diagf("spool open + 200 adds succeeded at allocation step %ld", steps);
    spool_cleanup();
}

/* ==== destination policy (core/netpolicy.c) =================================== */

/* The expected verdicts, written out here independently of the module: a
 * range table per family, and a model of which IPv6 forms carry IPv4. */
typedef struct netrange {
    const char *net; /* address */
    unsigned bits;
} netrange;

static const netrange np_v4[] = {
    { "0.0.0.0", 8 },       { "10.0.0.0", 8 },     { "100.64.0.0", 10 },   { "127.0.0.0", 8 },
    { "169.254.0.0", 16 },  { "172.16.0.0", 12 },  { "192.0.0.0", 24 },    { "192.0.2.0", 24 },
    { "192.88.99.0", 24 },  { "192.168.0.0", 16 }, { "198.18.0.0", 15 },   { "198.51.100.0", 24 },
    { "203.0.113.0", 24 },  { "224.0.0.0", 4 },    { "240.0.0.0", 4 },     { "255.255.255.255", 32 },
};

static const netrange np_v6[] = {
    { "::", 128 },          { "::1", 128 },         { "::", 96 },          { "64:ff9b:1::", 48 },
    { "100::", 64 },        { "2001:2::", 48 },     { "2001:10::", 28 },   { "2001:db8::", 32 },
    { "3fff::", 20 },       { "5f00::", 16 },       { "fc00::", 7 },       { "fe80::", 10 },
    { "fec0::", 10 },       { "ff00::", 8 },
};

/* the IPv6 prefixes whose addresses are judged by the IPv4 they carry */
static const netrange np_embedding[] = {
    { "::ffff:0:0", 96 }, { "64:ff9b::", 96 }, { "2002::", 16 }, { "2001::", 32 },
};

static uint32_t np_v4num(const char *s)
{
    unsigned char b[4];
    if (inet_pton(AF_INET, s, b) != 1) abort();
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static void np_v4bytes(uint32_t a, unsigned char *b)
{
    b[0] = (unsigned char)(a >> 24);
    b[1] = (unsigned char)(a >> 16);
    b[2] = (unsigned char)(a >> 8);
    b[3] = (unsigned char)a;
}

static int np_model_v4(uint32_t a)
{
    size_t i;
    for (i = 0; i < sizeof np_v4 / sizeof np_v4[0]; i++) {
        uint32_t net = np_v4num(np_v4[i].net);
        uint32_t mask = np_v4[i].bits ? 0xffffffffu << (32 - np_v4[i].bits) : 0;
        if ((a & mask) == net) return PB_NET_REFUSED;
    }
    return PB_NET_ALLOWED;
}

static int np_in6(const unsigned char *a, const char *net, unsigned bits)
{
    unsigned char n[16];
    unsigned k;
    if (inet_pton(AF_INET6, net, n) != 1) abort();
    for (k = 0; k < bits; k++)
        if ((a[k / 8] ^ n[k / 8]) & (0x80 >> (k % 8))) return 0;
    return 1;
}

static uint32_t np_get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int np_model_v6(const unsigned char *a)
{
    size_t i;
    if (np_in6(a, "::ffff:0:0", 96) || np_in6(a, "64:ff9b::", 96)) return np_model_v4(np_get32(a + 12));
    if (np_in6(a, "2002::", 16)) return np_model_v4(np_get32(a + 2));
    if (np_in6(a, "2001::", 32)) return np_model_v4(np_get32(a + 12) ^ 0xffffffffu);
    for (i = 0; i < sizeof np_v6 / sizeof np_v6[0]; i++)
        if (np_in6(a, np_v6[i].net, np_v6[i].bits)) return PB_NET_REFUSED;
    return np_in6(a, "2000::", 3) ? PB_NET_ALLOWED : PB_NET_REFUSED;
}

static int np_check4(const pb_netpolicy *p, uint32_t a, char *why, size_t n)
{
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons(80);
    np_v4bytes(a, (unsigned char *)&sin.sin_addr);
    return pb_netpolicy_check(p, (const struct sockaddr *)&sin, sizeof sin, why, n);
}

static int np_check6(const pb_netpolicy *p, const unsigned char *a, char *why, size_t n)
{
    struct sockaddr_in6 sin6;
    memset(&sin6, 0, sizeof sin6);
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(443);
    memcpy(&sin6.sin6_addr, a, 16);
    return pb_netpolicy_check(p, (const struct sockaddr *)&sin6, sizeof sin6, why, n);
}

/* a +- 1 in 128-bit arithmetic; returns 0 on wrap */
static int np_step6(unsigned char *a, int up)
{
    int i;
    for (i = 15; i >= 0; i--) {
        if (up) {
            if (++a[i] != 0) return 1;
        } else {
            if (a[i]-- != 0) return 1;
        }
    }
    return 0;
}

static void np_expect4(const pb_netpolicy *p, uint32_t a, const char *range_text)
{
    char why[PB_NETPOLICY_WHY], text[INET_ADDRSTRLEN];
    unsigned char b[4];
    int exp = np_model_v4(a), got;
    why[0] = '\0';
    got = np_check4(p, a, why, sizeof why);
    np_v4bytes(a, b);
    inet_ntop(AF_INET, b, text, sizeof text);
    if (got != exp) {
        cur_fail++;
        diagf("%s: expected %s, got %s (%s)", text, exp ? "refused" : "allowed",
              got ? "refused" : "allowed", why);
        return;
    }
    if (got == PB_NET_REFUSED) {
        /* the reason starts with the address and names a range */
        if (strncmp(why, text, strlen(text)) != 0 || why[strlen(text)] != ' ' || !strchr(why, '/')) {
            cur_fail++;
            diagf("%s: reason %s", text, show(why, strlen(why)));
        }
        if (range_text && !strstr(why, range_text)) {
            cur_fail++;
            diagf("%s: reason %s does not name %s", text, show(why, strlen(why)), range_text);
        }
    }
}

static void np_expect6(const pb_netpolicy *p, const unsigned char *a, const char *must_say)
{
    char why[PB_NETPOLICY_WHY], text[INET6_ADDRSTRLEN];
    int exp = np_model_v6(a), got;
    why[0] = '\0';
    got = np_check6(p, a, why, sizeof why);
    inet_ntop(AF_INET6, a, text, sizeof text);
    if (got != exp) {
        cur_fail++;
        diagf("%s: expected %s, got %s (%s)", text, exp ? "refused" : "allowed",
              got ? "refused" : "allowed", why);
        return;
    }
    if (got == PB_NET_REFUSED) {
        if (strncmp(why, text, strlen(text)) != 0 || why[strlen(text)] != ' ') {
            cur_fail++;
            diagf("%s: reason %s", text, show(why, strlen(why)));
        }
        if (must_say && !strstr(why, must_say)) {
            cur_fail++;
            diagf("%s: reason %s does not say %s", text, show(why, strlen(why)), must_say);
        }
    }
}

/* Each IPv4 range: its first and last address are refused with the range
 * named, the addresses just outside it are judged by the model. */
static void t_np_v4_ranges(void)
{
    pb_netpolicy *p = pb_netpolicy_new(NULL);
    size_t i;
    char range_text[40];
    for (i = 0; i < sizeof np_v4 / sizeof np_v4[0]; i++) {
        uint32_t net = np_v4num(np_v4[i].net);
        uint32_t size = np_v4[i].bits >= 32 ? 0 : (uint32_t)(0xffffffffu >> np_v4[i].bits);
        uint32_t last = net + size;
        snprintf(range_text, sizeof range_text, "%s/%u", np_v4[i].net, np_v4[i].bits);
        CHECK_INT(np_model_v4(net), PB_NET_REFUSED);
        /* 255.255.255.255 is named as the broadcast address, not by 240/4 */
        np_expect4(p, net, range_text);
        np_expect4(p, last, np_v4[i].bits == 4 && net == np_v4num("240.0.0.0") ? NULL : range_text);
        if (net > 0) np_expect4(p, net - 1, NULL);
        if (last < 0xffffffffu) np_expect4(p, last + 1, NULL);
    }
    /* a few public addresses, and the ends of the space */
    CHECK_INT(np_check4(p, np_v4num("8.8.8.8"), NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(np_check4(p, np_v4num("1.1.1.1"), NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(np_check4(p, np_v4num("93.184.216.34"), NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(np_check4(p, np_v4num("1.0.0.0"), NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(np_check4(p, np_v4num("223.255.255.255"), NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(np_check4(p, 0, NULL, 0), PB_NET_REFUSED);
    CHECK_INT(np_check4(p, 0xffffffffu, NULL, 0), PB_NET_REFUSED);
    pb_netpolicy_free(p);
}

static void t_np_v6_ranges(void)
{
    pb_netpolicy *p = pb_netpolicy_new(NULL);
    size_t i;
    unsigned k;
    for (i = 0; i < sizeof np_v6 / sizeof np_v6[0]; i++) {
        unsigned char first[16], last[16], out[16];
        char range_text[48];
        if (inet_pton(AF_INET6, np_v6[i].net, first) != 1) abort();
        memcpy(last, first, 16);
        for (k = np_v6[i].bits; k < 128; k++) last[k / 8] |= (unsigned char)(0x80 >> (k % 8));
        snprintf(range_text, sizeof range_text, "%s/%u", np_v6[i].net, np_v6[i].bits);
        CHECK_INT(np_model_v6(first), PB_NET_REFUSED);
        /* "::" and "::1" are inside ::/96 too, and named by their own entry */
        np_expect6(p, first, np_v6[i].bits == 96 ? NULL : range_text);
        np_expect6(p, last, np_v6[i].bits == 96 ? NULL : range_text);
        memcpy(out, first, 16);
        if (np_step6(out, 0)) np_expect6(p, out, NULL);
        memcpy(out, last, 16);
        if (np_step6(out, 1)) np_expect6(p, out, NULL);
    }
    /* the prefixes that carry IPv4: their ends and just outside */
    for (i = 0; i < sizeof np_embedding / sizeof np_embedding[0]; i++) {
        unsigned char first[16], last[16];
        if (inet_pton(AF_INET6, np_embedding[i].net, first) != 1) abort();
        memcpy(last, first, 16);
        for (k = np_embedding[i].bits; k < 128; k++) last[k / 8] |= (unsigned char)(0x80 >> (k % 8));
        np_expect6(p, first, NULL);
        np_expect6(p, last, NULL);
        if (np_step6(first, 0)) np_expect6(p, first, NULL);
        if (np_step6(last, 1)) np_expect6(p, last, NULL);
    }
    /* the edges of 2000::/3 */
    {
        static const char *const edges[][2] = {
            { "1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "outside 2000::/3" },
            { "2000::", NULL },
            { "3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", NULL }, /* past 3fff::/20 */
            { "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", "3fff::/20" },
            { "3ffe:ffff::1", NULL },
            { "4000::", "outside 2000::/3" },
            { "2a00:1450:4001:82a::200e", NULL },
            { "2606:4700:4700::1111", NULL },
            { "::ffff:0:0:1", "outside 2000::/3" }, /* IPv4-translated (SIIT) */
        };
        for (i = 0; i < sizeof edges / sizeof edges[0]; i++) {
            unsigned char a[16];
            if (inet_pton(AF_INET6, edges[i][0], a) != 1) abort();
            np_expect6(p, a, edges[i][1]);
        }
        CHECK_INT(np_check6(p, (const unsigned char *)"\x2a\x00\x14\x50\x40\x01\x08\x2a\0\0\0\0\0\0\x20\x0e",
                            NULL, 0),
                  PB_NET_ALLOWED);
    }
    pb_netpolicy_free(p);
}

/* Builds the four IPv6 forms carrying v4: mapped, NAT64, 6to4, Teredo. */
static void np_embed(int form, uint32_t v4, unsigned char *a)
{
    unsigned char b[4];
    int k;
    memset(a, 0, 16);
    np_v4bytes(v4, b);
    switch (form) {
    case 0: a[10] = a[11] = 0xff; memcpy(a + 12, b, 4); break;
    case 1: a[1] = 0x64; a[2] = 0xff; a[3] = 0x9b; memcpy(a + 12, b, 4); break;
    case 2:
        a[0] = 0x20; a[1] = 0x02; memcpy(a + 2, b, 4);
        a[15] = 1; /* 2002:V4::1, a host in the 6to4 site */
        break;
    default:
        a[0] = 0x20; a[1] = 0x01;
        /* a public Teredo server 65.54.227.120, flags, obfuscated port */
        a[4] = 65; a[5] = 54; a[6] = 227; a[7] = 120;
        a[8] = 0x80; a[10] = 0xff; a[11] = 0xfe;
        for (k = 0; k < 4; k++) a[12 + k] = (unsigned char)(b[k] ^ 0xff);
        break;
    }
}

static void t_np_embedded(void)
{
    static const char *const words[] = { "IPv4-mapped", "NAT64", "6to4", "Teredo" };
    static const char *const v4s[] = {
        "127.0.0.1", "10.0.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254", "0.0.0.0",
        "255.255.255.255", "224.0.0.1", "172.31.255.255", "8.8.8.8", "1.1.1.1", "93.184.216.34",
        "172.32.0.0", "100.128.0.0",
    };
    pb_netpolicy *p = pb_netpolicy_new(NULL);
    size_t i;
    int form;
    for (i = 0; i < sizeof v4s / sizeof v4s[0]; i++) {
        uint32_t v4 = np_v4num(v4s[i]);
        int exp = np_model_v4(v4);
        for (form = 0; form < 4; form++) {
            unsigned char a[16];
            char why[PB_NETPOLICY_WHY], want[64];
            np_embed(form, v4, a);
            why[0] = '\0';
            CHECK_INT(np_check6(p, a, why, sizeof why), exp);
            if (exp == PB_NET_REFUSED) {
                snprintf(want, sizeof want, " %s", v4s[i]);
                if (!strstr(why, words[form]) || !strstr(why, want)) {
                    cur_fail++;
                    diagf("%s as %s: reason %s", v4s[i], words[form], show(why, strlen(why)));
                }
            }
        }
    }
    /* the text forms of the issue */
    {
        static const char *const refused[] = { "::ffff:127.0.0.1", "::ffff:7f00:1", "::127.0.0.1",
                                               "64:ff9b::a00:1", "2002:7f00:1::", "2002:c0a8:101::1",
                                               "64:ff9b:1::808:808", "::ffff:0.0.0.0" };
        for (i = 0; i < sizeof refused / sizeof refused[0]; i++)
            CHECK_INT(pb_netpolicy_check_text(p, refused[i], strlen(refused[i]), NULL, 0),
                      PB_NET_REFUSED);
        CHECK_INT(pb_netpolicy_check_text(p, "::ffff:8.8.8.8", 14, NULL, 0), PB_NET_ALLOWED);
        CHECK_INT(pb_netpolicy_check_text(p, "64:ff9b::808:808", 16, NULL, 0), PB_NET_ALLOWED);
        CHECK_INT(pb_netpolicy_check_text(p, "2002:808:808::1", 15, NULL, 0), PB_NET_ALLOWED);
        /* IPv4-compatible ::8.8.8.8 is refused whole, not decoded */
        CHECK_INT(pb_netpolicy_check_text(p, "::8.8.8.8", 9, NULL, 0), PB_NET_REFUSED);
    }
    pb_netpolicy_free(p);
}

/* Random addresses against the model; each IPv4 also in its four IPv6 forms. */
static void t_np_random(void)
{
    pb_netpolicy *p = pb_netpolicy_new(NULL);
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    long i, bad = 0, refused4 = 0;
    for (i = 0; i < 40000 && bad < 5; i++) {
        uint32_t v4;
        unsigned char a[16];
        int exp, form, k;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v4 = (uint32_t)(x >> 16);
        /* half of them near a refused range */
        if (i & 1) {
            const netrange *r = &np_v4[(x >> 8) % (sizeof np_v4 / sizeof np_v4[0])];
            v4 = np_v4num(r->net) + (uint32_t)((x >> 40) & 0x1ffff) - 0x10000;
        }
        exp = np_model_v4(v4);
        refused4 += exp;
        if (np_check4(p, v4, NULL, 0) != exp) bad++;
        for (form = 0; form < 4; form++) {
            np_embed(form, v4, a);
            if (np_check6(p, a, NULL, 0) != exp) bad++;
        }
        /* a random IPv6 address, and one in a random range of the table */
        for (k = 0; k < 16; k++) a[k] = (unsigned char)(x >> ((k % 8) * 8)) ^ (unsigned char)(k * 37 + i);
        if (i % 3 == 0) a[0] = (unsigned char)(0x20 + (a[0] & 0x1f)); /* 2000::/3 */
        if (i % 5 == 0) {
            const netrange *r = &np_v6[(x >> 4) % (sizeof np_v6 / sizeof np_v6[0])];
            unsigned char n[16];
            if (inet_pton(AF_INET6, r->net, n) != 1) abort();
            for (k = 0; k < (int)r->bits; k++) {
                unsigned char m = (unsigned char)(0x80 >> (k % 8));
                a[k / 8] = (unsigned char)((a[k / 8] & ~m) | (n[k / 8] & m));
            }
        }
        if (np_check6(p, a, NULL, 0) != np_model_v6(a)) bad++;
        if (bad && !cur_fail) {
            char t[INET6_ADDRSTRLEN];
            inet_ntop(AF_INET6, a, t, sizeof t);
            cur_fail++;
            diagf("disagreement with the model near %s (v4 %08lx)", t, (unsigned long)v4);
        }
    }
    CHECK_INT(bad, 0);
    CHECK(refused4 > 5000 && refused4 < 35000);
    pb_netpolicy_free(p);
}

static void t_np_sockaddr(void)
{
    pb_netpolicy *p = pb_netpolicy_new(NULL);
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;
    struct sockaddr sa;
    char why[PB_NETPOLICY_WHY], out[PB_NETADDR_LEN];
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    CHECK_INT(pb_netpolicy_check(p, (struct sockaddr *)&sin, sizeof sin, why, sizeof why), PB_NET_REFUSED);
    CHECK_STR(why, "127.0.0.1 is a loopback address (127.0.0.0/8)");
    CHECK_STR(pb_netaddr_format((struct sockaddr *)&sin, sizeof sin, out, sizeof out), "127.0.0.1");
    /* too short for its family */
    CHECK_INT(pb_netpolicy_check(p, (struct sockaddr *)&sin, sizeof sin - 1, why, sizeof why), PB_NET_REFUSED);
    CHECK(strstr(why, "not an IPv4 or IPv6 address") != NULL);
    CHECK_STR(pb_netaddr_format((struct sockaddr *)&sin, sizeof sin - 1, out, sizeof out), "(not an IP address)");
    CHECK_INT(pb_netpolicy_check(p, NULL, 0, why, sizeof why), PB_NET_REFUSED);
    CHECK_INT(pb_netpolicy_check(p, (struct sockaddr *)&sin, 1, why, sizeof why), PB_NET_REFUSED);
    /* another family */
    memset(&sa, 0, sizeof sa);
    sa.sa_family = AF_UNIX;
    CHECK_INT(pb_netpolicy_check(p, &sa, sizeof sa, why, sizeof why), PB_NET_REFUSED);
    CHECK(strstr(why, "family") != NULL);
    /* IPv6 with a scope id: the address is named with it */
    memset(&sin6, 0, sizeof sin6);
    sin6.sin6_family = AF_INET6;
    inet_pton(AF_INET6, "fe80::1", &sin6.sin6_addr);
    sin6.sin6_scope_id = 3;
    CHECK_INT(pb_netpolicy_check(p, (struct sockaddr *)&sin6, sizeof sin6, why, sizeof why), PB_NET_REFUSED);
    CHECK_STR(why, "fe80::1%3 is a link-local address (fe80::/10)");
    CHECK_STR(pb_netaddr_format((struct sockaddr *)&sin6, sizeof sin6, out, sizeof out), "fe80::1%3");
    inet_pton(AF_INET6, "::ffff:10.1.2.3", &sin6.sin6_addr);
    sin6.sin6_scope_id = 0;
    CHECK_INT(pb_netpolicy_check(p, (struct sockaddr *)&sin6, sizeof sin6, why, sizeof why), PB_NET_REFUSED);
    CHECK_STR(why, "::ffff:10.1.2.3 is IPv4-mapped 10.1.2.3, a private address (10.0.0.0/8)");
    inet_pton(AF_INET6, "2001:0:4136:e378:8000:63bf:80ff:fffe", &sin6.sin6_addr);
    CHECK_INT(pb_netpolicy_check(p, (struct sockaddr *)&sin6, sizeof sin6, why, sizeof why), PB_NET_REFUSED);
    CHECK_STR(why, "2001:0:4136:e378:8000:63bf:80ff:fffe is Teredo for client 127.0.0.1, a loopback "
                   "address (127.0.0.0/8)");
    /* a short why buffer is cut, still terminated; NULL why is fine */
    CHECK_INT(pb_netpolicy_check(p, (struct sockaddr *)&sin, sizeof sin, why, 10), PB_NET_REFUSED);
    CHECK_STR(why, "127.0.0.1");
    CHECK_INT(pb_netpolicy_check(p, (struct sockaddr *)&sin, sizeof sin, NULL, 0), PB_NET_REFUSED);
    CHECK_STR(pb_netaddr_format((struct sockaddr *)&sin, sizeof sin, out, 4), "127");
    /* text addresses */
    CHECK_INT(pb_netpolicy_check_text(p, "localhost", 9, why, sizeof why), PB_NET_REFUSED);
    CHECK_STR(why, "\"localhost\" is not an IP address");
    CHECK_INT(pb_netpolicy_check_text(p, "127.0.0.1\0", 10, why, sizeof why), PB_NET_REFUSED);
    CHECK_INT(pb_netpolicy_check_text(p, "", 0, why, sizeof why), PB_NET_REFUSED);
    CHECK_INT(pb_netpolicy_check_text(p, "2130706433", 10, why, sizeof why), PB_NET_REFUSED);
    CHECK_INT(pb_netpolicy_check_text(p, "8.8.8.8", 7, why, sizeof why), PB_NET_ALLOWED);
    CHECK_INT(pb_netpolicy_check_text(p, "8.8.8.8x", 7, why, sizeof why), PB_NET_ALLOWED); /* length */
    CHECK_INT(pb_netpolicy_check_raw(p, AF_UNIX, (const unsigned char *)"abcd", why, sizeof why), PB_NET_REFUSED);
    pb_netpolicy_free(p);
    pb_netpolicy_free(NULL);
}

typedef struct cidrcase {
    const char *s;
    int ok;
    int family;      /* expected, when ok */
    const char *net; /* expected network address text, when ok */
    unsigned bits;
} cidrcase;

static const cidrcase cidrcases[] = {
    { "0.0.0.0/0", 1, AF_INET, "0.0.0.0", 0 },
    { "10.0.0.0/8", 1, AF_INET, "10.0.0.0", 8 },
    { "10.1.0.0/16", 1, AF_INET, "10.1.0.0", 16 },
    { "1.2.3.4/32", 1, AF_INET, "1.2.3.4", 32 },
    { "1.2.3.4", 1, AF_INET, "1.2.3.4", 32 },
    { "255.255.255.254/31", 1, AF_INET, "255.255.255.254", 31 },
    { "::/0", 1, AF_INET6, "::", 0 },
    { "::1/128", 1, AF_INET6, "::1", 128 },
    { "::1", 1, AF_INET6, "::1", 128 },
    { "2001:db8::/32", 1, AF_INET6, "2001:db8::", 32 },
    { "FC00::/7", 1, AF_INET6, "fc00::", 7 },
    { "::ffff:10.0.0.0/104", 1, AF_INET, "10.0.0.0", 8 },
    { "::ffff:0:0/96", 1, AF_INET, "0.0.0.0", 0 },
    { "::ffff:127.0.0.1", 1, AF_INET, "127.0.0.1", 32 },
    { "::fffe:0:0/95", 1, AF_INET6, "::fffe:0:0", 95 }, /* more than IPv4: stays IPv6 */
    /* bad */
    { "", 0, 0, NULL, 0 },
    { "/8", 0, 0, NULL, 0 },
    { "10.0.0.0/", 0, 0, NULL, 0 },
    { "10.0.0.0/33", 0, 0, NULL, 0 },
    { "10.0.0.0/100", 0, 0, NULL, 0 },
    { "10.0.0.0/1000", 0, 0, NULL, 0 },
    { "::/129", 0, 0, NULL, 0 },
    { "10.0.0.0/08", 0, 0, NULL, 0 },
    { "10.0.0.0/-1", 0, 0, NULL, 0 },
    { "10.0.0.0/+8", 0, 0, NULL, 0 },
    { "10.0.0.0/8/8", 0, 0, NULL, 0 },
    { "10.0.0.0/ 8", 0, 0, NULL, 0 },
    { " 10.0.0.0/8", 0, 0, NULL, 0 },
    { "10.0.0.1/8", 0, 0, NULL, 0 },   /* host bits set */
    { "::1/64", 0, 0, NULL, 0 },       /* host bits set */
    { "10.0.0/8", 0, 0, NULL, 0 },     /* short forms are names, not networks */
    { "10/8", 0, 0, NULL, 0 },
    { "0x0a.0.0.0/8", 0, 0, NULL, 0 },
    { "010.0.0.0/8", 0, 0, NULL, 0 },
    { "256.0.0.0/8", 0, 0, NULL, 0 },
    { "fe80::1%eth0/128", 0, 0, NULL, 0 },
    { "[::1]/128", 0, 0, NULL, 0 },
    { "localhost", 0, 0, NULL, 0 },
    { "10.0.0.0/8 ", 0, 0, NULL, 0 },
    { "1:2:3:4:5:6:7:8:9/128", 0, 0, NULL, 0 },
    { "0000000000000000000000000000000000000000000000000000000000000000000/8", 0, 0, NULL, 0 },
};

static void t_np_cidr(void)
{
    size_t i;
    for (i = 0; i < sizeof cidrcases / sizeof cidrcases[0]; i++) {
        const cidrcase *c = &cidrcases[i];
        pb_cidr out;
        char why[PB_NETPOLICY_WHY];
        int rc;
        memset(&out, 0x5a, sizeof out);
        why[0] = '\0';
        rc = pb_cidr_parse(c->s, strlen(c->s), &out, why, sizeof why);
        if (c->ok) {
            char text[INET6_ADDRSTRLEN];
            CHECK_INT(rc, PB_OK);
            if (rc != PB_OK) {
                diagf("  %s: %s", show(c->s, strlen(c->s)), why);
                continue;
            }
            CHECK_INT(out.family, c->family);
            CHECK_INT(out.bits, c->bits);
            inet_ntop(out.family, out.addr, text, sizeof text);
            CHECK_STR(text, c->net);
            if (cur_fail) diagf("  %s", show(c->s, strlen(c->s)));
        } else {
            CHECK_INT(rc, PB_EINVAL);
            /* the reason quotes the network and says what is wrong */
            CHECK(strncmp(why, "network \"", 9) == 0);
            if (rc == PB_EINVAL && strlen(c->s) < 40 && !strstr(why, c->s)) {
                cur_fail++;
                diagf("reason %s does not quote %s", show(why, strlen(why)), show(c->s, strlen(c->s)));
            }
        }
    }
    /* an embedded NUL ends nothing: the length rules */
    {
        pb_cidr out;
        CHECK_INT(pb_cidr_parse("10.0.0.0\0/8", 11, &out, NULL, 0), PB_EINVAL);
        CHECK_INT(pb_cidr_parse("10.0.0.0/8\0", 11, &out, NULL, 0), PB_EINVAL);
        CHECK_INT(pb_cidr_parse("10.0.0.0/8xyz", 10, &out, NULL, 0), PB_OK);
    }
    /* the reasons */
    {
        char why[PB_NETPOLICY_WHY];
        pb_cidr out;
        pb_cidr_parse("10.0.0.0/33", 11, &out, why, sizeof why);
        CHECK_STR(why, "network \"10.0.0.0/33\" has a bad prefix length (0-32 after the /)");
        pb_cidr_parse("::/129", 6, &out, why, sizeof why);
        CHECK_STR(why, "network \"::/129\" has a bad prefix length (0-128 after the /)");
        pb_cidr_parse("10.0.0.1/8", 10, &out, why, sizeof why);
        CHECK_STR(why, "network \"10.0.0.1/8\" has bits set after its /8 prefix (the network "
                       "address has them zero)");
        pb_cidr_parse("nope/8", 6, &out, why, sizeof why);
        CHECK_STR(why, "network \"nope/8\" is not an IPv4 or IPv6 address with a /prefix");
    }
}

static void t_np_allow(void)
{
    pb_netpolicy *p = pb_netpolicy_new(NULL);
    char why[PB_NETPOLICY_WHY];
    unsigned char a[16];
    int form;
    CHECK_INT(pb_netpolicy_allow_private(p), 0);
    CHECK_INT(pb_netpolicy_count(p), 0);
    CHECK(pb_netpolicy_network(p, 0) == NULL);
    /* another range does not open loopback */
    CHECK_INT(pb_netpolicy_allow(p, "10.1.0.0/16", 11, why, sizeof why), PB_OK);
    CHECK_INT(np_check4(p, np_v4num("127.0.0.1"), NULL, 0), PB_NET_REFUSED);
    CHECK_INT(np_check4(p, np_v4num("10.1.255.255"), NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(np_check4(p, np_v4num("10.2.0.0"), NULL, 0), PB_NET_REFUSED);
    CHECK_INT(np_check4(p, np_v4num("10.0.255.255"), NULL, 0), PB_NET_REFUSED);
    /* 127/8 opens loopback, in every IPv6 form too */
    CHECK_INT(pb_netpolicy_allow(p, "127.0.0.0/8", 11, why, sizeof why), PB_OK);
    CHECK_INT(np_check4(p, np_v4num("127.0.0.1"), NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(np_check4(p, np_v4num("127.255.255.255"), NULL, 0), PB_NET_ALLOWED);
    for (form = 0; form < 4; form++) {
        np_embed(form, np_v4num("127.0.0.1"), a);
        CHECK_INT(np_check6(p, a, NULL, 0), PB_NET_ALLOWED);
        np_embed(form, np_v4num("192.168.1.1"), a);
        CHECK_INT(np_check6(p, a, NULL, 0), PB_NET_REFUSED);
    }
    /* but not ::1, nor ::127.0.0.1 (not decoded) */
    CHECK_INT(pb_netpolicy_check_text(p, "::1", 3, NULL, 0), PB_NET_REFUSED);
    CHECK_INT(pb_netpolicy_check_text(p, "::127.0.0.1", 11, NULL, 0), PB_NET_REFUSED);
    CHECK_INT(pb_netpolicy_allow(p, "::1", 3, why, sizeof why), PB_OK);
    CHECK_INT(pb_netpolicy_check_text(p, "::1", 3, NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(pb_netpolicy_allow(p, "fd00::/8", 8, why, sizeof why), PB_OK);
    CHECK_INT(pb_netpolicy_check_text(p, "fd12::1", 7, NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(pb_netpolicy_check_text(p, "fc12::1", 7, NULL, 0), PB_NET_REFUSED);
    CHECK_INT(pb_netpolicy_count(p), 4);
    CHECK_INT(pb_netpolicy_network(p, 1)->bits, 8);
    CHECK(pb_netpolicy_network(p, 4) == NULL);
    /* a bad CIDR leaves the policy as it was */
    CHECK_INT(pb_netpolicy_allow(p, "10.0.0.0/33", 11, why, sizeof why), PB_EINVAL);
    CHECK_INT(pb_netpolicy_count(p), 4);
    pb_netpolicy_free(p);

    /* ::ffff:0:0/96 is every IPv4 address; ::/0 is every address */
    p = pb_netpolicy_new(NULL);
    CHECK_INT(pb_netpolicy_allow(p, "::ffff:0:0/96", 13, why, sizeof why), PB_OK);
    CHECK_INT(np_check4(p, 0, NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(np_check4(p, np_v4num("169.254.169.254"), NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(pb_netpolicy_check_text(p, "::1", 3, NULL, 0), PB_NET_REFUSED);
    pb_netpolicy_free(p);
    p = pb_netpolicy_new(NULL);
    CHECK_INT(pb_netpolicy_allow(p, "::/0", 4, why, sizeof why), PB_OK);
    CHECK_INT(np_check4(p, np_v4num("127.0.0.1"), NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(pb_netpolicy_check_text(p, "ff02::1", 7, NULL, 0), PB_NET_ALLOWED);
    pb_netpolicy_free(p);
    p = pb_netpolicy_new(NULL);
    CHECK_INT(pb_netpolicy_allow(p, "0.0.0.0/0", 9, why, sizeof why), PB_OK);
    CHECK_INT(np_check4(p, np_v4num("127.0.0.1"), NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(pb_netpolicy_check_text(p, "::ffff:127.0.0.1", 16, NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(pb_netpolicy_check_text(p, "::1", 3, NULL, 0), PB_NET_REFUSED);
    pb_netpolicy_free(p);

    /* allow_private turns the check off */
    p = pb_netpolicy_new(NULL);
    pb_netpolicy_set_allow_private(p, 7);
    CHECK_INT(pb_netpolicy_allow_private(p), 1);
    CHECK_INT(np_check4(p, np_v4num("127.0.0.1"), NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(np_check4(p, 0xffffffffu, NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(pb_netpolicy_check_text(p, "ff02::1", 7, NULL, 0), PB_NET_ALLOWED);
    CHECK_INT(pb_netpolicy_check_text(p, "::1", 3, NULL, 0), PB_NET_ALLOWED);
    pb_netpolicy_set_allow_private(p, 0);
    CHECK_INT(pb_netpolicy_check_text(p, "::1", 3, NULL, 0), PB_NET_REFUSED);
    pb_netpolicy_free(p);
}

static void t_np_oom(void)
{
    counter c;
    pb_alloc a;
    long n;
    int done = 0;
    a.fn = counter_fn;
    a.ud = &c;
    counter_init(&c, 1);
    CHECK(pb_netpolicy_new(&a) == NULL);
    CHECK_CLEAN(c, 1);
    counter_done(&c);
    /* 40 networks: the list grows 4 times; fail each allocation in turn */
    for (n = 1; n <= 20 && !done; n++) {
        pb_netpolicy *p;
        int i, added = 0, failed = 0;
        counter_init(&c, n);
        p = pb_netpolicy_new(&a);
        if (!p) {
            CHECK_INT(n, 1);
        } else {
            for (i = 0; i < 40; i++) {
                char cidr[32], why[PB_NETPOLICY_WHY];
                int rc;
                snprintf(cidr, sizeof cidr, "10.%d.0.0/16", i);
                rc = pb_netpolicy_allow(p, cidr, strlen(cidr), why, sizeof why);
                if (rc == PB_ENOMEM) {
                    failed++;
                    CHECK_STR(why, "out of memory");
                    CHECK_INT(pb_netpolicy_count(p), added);
                } else {
                    CHECK_INT(rc, PB_OK);
                    added++;
                }
            }
            /* what was added works */
            CHECK_INT(np_check4(p, np_v4num("10.0.0.1"), NULL, 0),
                      pb_netpolicy_count(p) && pb_netpolicy_network(p, 0)->addr[1] == 0 ? PB_NET_ALLOWED
                                                                                      : PB_NET_REFUSED);
            if (!failed && !c.failed) done = 1;
            CHECK_INT(failed, c.failed);
            pb_netpolicy_free(p);
        }
        CHECK_CLEAN(c, n);
        counter_done(&c);
    }
    CHECK(done);
    CHECK(n >= 5);
}

int main(void)
{
    printf("TAP version 13\n");
    run("counting allocator: fails the Nth request, catches wrong osize", t_counter_selftest);
    run("pb_buf: init, empty appends, free twice", t_buf_init);
    run("pb_buf: growth keeps contents, doubles capacity, refuses overflow", t_buf_growth);
    run("pb_buf: limit -> PB_ELIMIT, contents unchanged", t_buf_limit);
    run("pb_buf: printf formats, truncates to 63 bytes", t_buf_printf);
    run("pb_buf: reset keeps memory, free releases it", t_buf_reset_free);
    run("pb_buf: pb_buf_str is \"\" after a reserve / an empty render", t_buf_str_after_reserve);
    run("pb_buf: custom allocator, failed growth leaves buffer intact", t_buf_allocator);
    run("encode: all 256 bytes, %XX uppercase, unreserved kept", t_encode_all_bytes);
    run("encode: whole strings, round trip of all bytes", t_encode_string);
    run("pb_hexval: all 256 bytes", t_hexval);
    run("pb_url_decode: cases", t_url_decode);
    run("template: segments, offsets, slots", t_parse_structure);
    run("template: names in order of first use, doc index", t_parse_order_and_doc);
    run("template: empty source", t_parse_empty);
    run("template: brace text that is literal", t_parse_literal_only);
    run("template: 100 names, both spellings", t_parse_many_names);
    run("template: NUL bytes in source and values", t_parse_nul_bytes);
    run("render: placeholders, shared slots, literal text not encoded", t_render_basic);
    run("render: percent-encoded placeholders in any hex case", t_render_percent_placeholders);
    run("render: {{x}}, {}, {a-b}, unclosed braces", t_render_braces);
    run("render: missing = empty | keep | error, undocumented stay literal", t_render_missing);
    run("render: encode = url | none", t_render_encode);
    run("render: NaN/inf -> NONFINITE, bad -> BADTYPE, slot named", t_render_errors);
    run("render: appends; buffer limit -> PB_ELIMIT", t_render_limit_and_append);
    run("format: integers incl. LLONG_MIN/MAX", t_format_ints);
    run("format: floats %.14g, integral ones up to 2^53 in digits, non-finite refused", t_format_floats);
    run("format: 200000 random non-integral floats as \"%.14g\" prints them", t_format_floats_random);
    run("format: booleans, strings, bad kinds", t_format_other);
    run("JSON: integers in plain digits, LLONG_MIN/MAX, 100000 random", t_json_ints);
    run("JSON: doubles exact (integral <= 2^53 as digits), 200000 random read back", t_json_doubles);
    run("JSON: strings escaped, every byte read back, UTF-8 and '/' kept", t_json_strings);
    run("JSON: appends; a limit refuses the whole piece", t_json_append);
    t_urls();
    run("URL: refusal reasons", t_url_reasons);
    run("pb_url_to_ascii: IDN, IPv4 and IPv6 forms, bytes >= 0x80, refusals", t_url_to_ascii);
    run("pb_url_is_https", t_url_https);
    run("pb_url_host: user info, port, IPv6 brackets, no host, other schemes", t_url_host);
    run("pb_url_no_proxy: *, names and their domains, addresses and networks", t_url_no_proxy);
    run("pb_find_crlf_nul", t_find_crlf_nul);
    run("macros: the 28 names and pb_macro_index", t_macro_index);
    run("macros: suggestions (pb_suggest over the macro names)", t_macro_suggest);
    run("pb_suggest: any list, case, ties, no names", t_suggest);
    run("validate: good records", t_validate_good);
    run("validate: required fields", t_validate_required);
    run("validate: integer fields: range and type", t_validate_int_fields);
    run("validate: status", t_validate_status);
    run("validate: code: empty, type, too_long", t_validate_code);
    run("validate: code: URL check by type, HTML guess", t_validate_code_url);
    run("validate: code: unknown macros, suggestions", t_validate_macros);
    run("validate: unknown fields", t_validate_unknown_fields);
    run("validate: conversion_protocol x type matrix", t_validate_protocol_matrix);
    run("pb_allowed_types", t_allowed_types);
    run("validate: field and code names", t_field_names);
    run("validate: error order", t_validate_order);
    run("validate: cap: total returned, only cap filled", t_validate_cap);
    run("OOM: pb_template_parse fails cleanly at every allocation", t_oom_parse);
    run("OOM: pb_template_render into a counting buffer", t_oom_render);
    run("OOM: pb_url_encode / pb_url_decode", t_oom_encode_decode);
    run("OOM: pb_json_string / pb_json_int / pb_json_double", t_oom_json);
    run("OOM: pb_validate", t_oom_validate);
    run("spool: CRC-32 and pb_spool_check", t_crc32);
    run("spool: record files (the journal)", t_spool_file);
    run("spool: ids, done, owed, lock with the holder's pid, reopen, max_record", t_spool_basic);
    run("spool: a directory, an empty or missing path, a FIFO", t_spool_bad_paths);
    run("spool: opened through a symlink, compaction replaces its target", t_spool_symlink);
    run("spool: failed appends are cut back; refused while the cut fails", t_spool_failed_append);
    run("spool: every bit flip of a record is found, moved out, the others kept", t_spool_bit_flips);
    run("spool: the last record cut at every byte", t_spool_truncations);
    run("spool: unknown format, repeated id, glued lines, discard", t_spool_damage_kinds);
    run("spool: the last id, 2^53 - 1, is owed once", t_spool_last_id);
    run("spool: lines too long to be records go to .corrupt whole, with their ids", t_spool_long_lines);
    run("spool: online compaction keeps the file small and its mode", t_spool_compaction);
    run("OOM: pb_spool open, add, done, sync, compaction", t_oom_spool);
    run("OOM: pb_url_to_ascii", t_oom_url_to_ascii);
    run("netpolicy: IPv4 ranges: first, last, just outside", t_np_v4_ranges);
    run("netpolicy: IPv6 ranges: first, last, just outside; 2000::/3", t_np_v6_ranges);
    run("netpolicy: IPv4 in IPv6 (mapped, NAT64, 6to4, Teredo) judged as IPv4", t_np_embedded);
    run("netpolicy: 40000 random addresses against the model", t_np_random);
    run("netpolicy: sockaddr forms, reasons, pb_netaddr_format, text addresses", t_np_sockaddr);
    run("netpolicy: CIDR parsing: /0 /32 /128, bad prefixes, host bits", t_np_cidr);
    run("netpolicy: allowed networks and allow_private", t_np_allow);
    run("OOM: pb_netpolicy_new / pb_netpolicy_allow", t_np_oom);
    printf("1..%d\n", tap_n);
    if (tap_failed) printf("# %d of %d tests failed\n", tap_failed, tap_n);
    return tap_failed ? 1 : 0;
}
