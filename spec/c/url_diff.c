/* url_diff.c - postback's URL checks against libcurl's own URL parser.
 *
 *   make build/ctest/url_diff && build/ctest/url_diff [README.md]
 *
 * Generates URLs from a fixed seed (schemes, user info, host names, IPv4 in
 * every form libcurl reads, IPv6 with zones and IPv4-mapped, IDNs, percent
 * signs, ports, paths with dot segments and raw bytes, queries, fragments,
 * macros; plus byte-level mutations of them) and reads each one twice: with
 * core (pb_check_request_url_ex, pb_check_code_url_ex, pb_url_to_ascii) and
 * with curl_url_set(CURLUPART_URL) under the flags libcurl's easy interface
 * uses for CURLOPT_URL when the engine sets CURLOPT_PATH_AS_IS (and
 * CURLOPT_DISALLOW_USERNAME_IN_URL unless user info is allowed):
 * CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME | CURLU_PATH_AS_IS.
 * A URL libcurl accepts must have scheme http or https (CURLOPT_PROTOCOLS_STR).
 *
 * Prints TAP. It fails on
 *   - a URL core accepts and libcurl refuses;
 *   - a URL core refuses and libcurl accepts, unless the difference is one
 *     of the listed ones (each a class below, named in the README section
 *     "URLs that postback and libcurl read differently");
 *   - an accepted URL whose ASCII form (pb_url_to_ascii) libcurl reads with
 *     another host, port, path or query than core does, or reads otherwise
 *     than the original URL (the host in punycode, bytes >= 0x80 encoded);
 *   - a postback code that validates and, rendered, is refused;
 *   - a listed class the README does not name (when given its path). */
#include <curl/curl.h>
#include <locale.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/template.h"
#include "core/url.h"
#include "spec/c/test_helpers.h"

#define NURLS 100000
#define MAX_EXAMPLES 12

/* ---- the listed differences: core refuses, libcurl accepts ---------------- */

enum {
    D_USERINFO,     /* user info without allow_userinfo */
    D_SLASHES,      /* http:/x, http:///x, http:x */
    D_NO_SCHEME,    /* example.com/x: libcurl guesses http */
    D_HOST_PERCENT, /* ex%61mple.com: libcurl decodes the host */
    D_HOST_PIPE,    /* a|b: libcurl allows '|' in a host name */
    D_PORT,         /* an empty port, port 0, more than 5 digits */
    D_ZONE,         /* [fe80::1%25eth0]: an IPv6 zone id */
    D_IDN_NONASCII, /* an IDN whose ASCII form is not a host name */
    ND
};

static const char *const d_names[ND] = {
    "user info", "one or three slashes", "no scheme", "percent-encoded host",
    "vertical bar in a host", "empty port, port 0, long ports", "IPv6 zone id",
    "IDN mapping to a non-name",
};

/* ---- a deterministic generator ------------------------------------------------ */

static uint64_t rng = 0x2545F4914F6CDD1DULL;

static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return n ? (uint32_t)((rng >> 11) % n) : 0;
}

#define PICK(a) (a)[rnd(sizeof(a) / sizeof((a)[0]))]

static const char *const schemes[] = {
    "http://", "http://", "http://", "https://", "https://", "HTTP://", "hTtPs://", "http:/",
    "http:///", "http:", "ftp://", "", "//", "javascript:", "file://", "https:\\\\", "ws://",
};
static const char *const userinfos[] = {
    "", "", "", "", "", "", "user@", "user:pw@", "@", ":@", "u%40x:p%3A@", "a@b@", "us er@",
    "u\xC3\xA9:p@", "{aff_sub1}@", "user:{aff_sub2}@", "%7Baff_sub1%7D@", "u:p:q@", "u;x@",
};
static const char *const hosts[] = {
    /* names */
    "example.com", "EXAMPLE.COM", "a.b.c.example", "ex_ample.com", "ex-ample.com", "example.com.",
    "a..b", "-a.com", "a~b", "a|b", "a!b", "a$b", "a'b", "a*b", "a+b", "a,b", "a;b", "a=b", "a&b",
    "a(b)", "a^b", "a`b", "a\"b", "a<b", "a>b", "a\\b", "xn--mnchen-3ya.de", "localhost", "x",
    /* IPv4 in the forms libcurl reads, and near misses */
    "127.0.0.1", "2130706433", "0177.0.0.1", "127.1", "0x7f.1", "0x7F000001", "1.2.3", "999.1.1.1",
    "1.2.3.4.5", "4294967296", "4294967295", "08.1.1.1", "0x", "0.0.0.0", "0", "1.2.3.4.", "1.256",
    "0x100000000", "00000000000000001", "169.254.169.254", "10.0.0.1",
    /* IPv6 */
    "[::1]", "[0:0::1]", "[::ffff:127.0.0.1]", "[::FFFF:7f00:1]", "[fe80::1%25eth0]", "[fe80::1%eth0]",
    "[2001:DB8::1]", "[::]", "[1:2:3:4:5:6:7:8]", "[1::2::3]", "[::1", "[]", "[v1.x]", "[::1]x",
    "[::127.0.0.1]", "[64:ff9b::a00:1]", "[:::1]", "[1.2.3.4]",
    /* internationalised */
    "m\xC3\xBCnchen.de", "M\xC3\x9CNCHEN.DE", "\xE2\x98\x83.com", "fa\xC3\x9F.de",
    "\xEF\xBD\x85xample.com", "good.com\xEF\xBC\x8F" "evil", "good.com\xEF\xBC\x85" "2f", "\xFF.de",
    "\xC3.de", "a\xE2\x80\x8B" "b.com", "\xD8\xA7" "a.com", "\xEF\xBC\x91\xEF\xBC\x92\xEF\xBC\x97.0.0.1",
    "\xE4\xBE\x8B\xE3\x81\x88.\xE3\x83\x86\xE3\x82\xB9\xE3\x83\x88",
    /* percent signs */
    "ex%61mple.com", "ex%00ample.com", "good.com%2fevil", "%7Bx%7D", "ex%2Eample", "%", "a%zz",
    /* macros */
    "{aff_sub1}", "{aff_sub1}.example.com", "%7Baff_sub1%7D.example.com", "{a}{b}", "{a", "x{}",
    "",
};
static const char *const ports[] = {
    "", "", "", "", ":80", ":8080", ":0", ":65535", ":65536", ":", ":08", ":00080", ":000080",
    ":8a", ":-1", ":{aff_sub2}", ":%7Baff_sub2%7D", ":80:81", ": 80", ":+80",
};
static const char *const paths[] = {
    "", "/", "/", "/pb", "/a/../b", "/./a", "/a/./b/../../c", "/%2e%2e/x", "/%2E./x", "/..",
    "/\xC3\xA9", "/\x80\xFF", "//x", "/a b", "/a\tb", "/\\x", "/{click_id}", "/%7Bclick_id%7D",
    "/;x", "/~u", "/a%zz", "/%00", "/a@b", "/a:b", "/[x]", "/a|b", "/\"<>^`{|}",
};
static const char *const queries[] = {
    "", "", "", "?", "?a=b", "?a=\xC3\xA9", "?%zz", "?a=b?c", "?{click_id}", "?a=%7Bx%7D", "?a b",
    "?a=/../b", "?\x80", "?a=1&b=2", "?#",
};
static const char *const fragments[] = {
    "", "", "", "", "#", "#f", "#a#b", "#\xC3\xA9", "#{x}", "#a b",
};

/* hosts that fire, for the half of the URLs that should pass */
static const char *const good_hosts[] = {
    "example.com", "EXAMPLE.COM", "a.b.c.example", "ex_ample.com", "example.com.", "x",
    "127.0.0.1", "2130706433", "0177.0.0.1", "127.1", "0x7f.1", "1.2.3", "4294967295", "0",
    "[::1]", "[0:0::1]", "[::ffff:127.0.0.1]", "[0:0:0:0:0:ffff:7f00:1]", "[2001:DB8::1]",
    "m\xC3\xBCnchen.de", "M\xC3\x9CNCHEN.DE", "\xE2\x98\x83.com", "fa\xC3\x9F.de",
    "\xEF\xBD\x85xample.com", "\xEF\xBC\x91\xEF\xBC\x92\xEF\xBC\x97.0.0.1",
    "\xE4\xBE\x8B\xE3\x81\x88.\xE3\x83\x86\xE3\x82\xB9\xE3\x83\x88", "xn--mnchen-3ya.de",
    "{aff_sub1}.example.com", "%7Baff_sub1%7D.example.com",
};

static size_t gen(char *out, size_t cap)
{
    size_t n;
    if (rnd(2))
        n = (size_t)snprintf(out, cap, "%s%s%s%s%s%s", schemes[rnd(5)], PICK(good_hosts),
                             ports[rnd(6)], PICK(paths), PICK(queries), PICK(fragments));
    else
        n = (size_t)snprintf(out, cap, "%s%s%s%s%s%s%s", PICK(schemes), PICK(userinfos), PICK(hosts),
                             PICK(ports), PICK(paths), PICK(queries), PICK(fragments));
    if (n >= cap) n = cap - 1;
    /* one URL in four gets a byte inserted, changed or removed */
    switch (rnd(12)) {
    case 0:
        if (n + 1 < cap) {
            size_t at = rnd((uint32_t)n + 1);
            static const char ins[] = "/?#@:[]%.{}\\\x80\xC3 \t\x00x0";
            memmove(out + at + 1, out + at, n - at + 1);
            out[at] = ins[rnd(sizeof ins - 1)];
            n++;
        }
        break;
    case 1:
        if (n) out[rnd((uint32_t)n)] = (char)rnd(256);
        break;
    case 2:
        if (n) {
            size_t at = rnd((uint32_t)n);
            memmove(out + at, out + at + 1, n - at);
            n--;
        }
        break;
    default: break;
    }
    out[n] = '\0';
    return n;
}

/* ---- TAP ------------------------------------------------------------------- */

static int tap_n, tap_failed;

static void tap(int ok, const char *name)
{
    tap_n++;
    if (!ok) tap_failed++;
    printf("%s %d - %s\n", ok ? "ok" : "not ok", tap_n, name);
    fflush(stdout);
}


/* Collected examples of one kind of failure. */
typedef struct bag {
    long n;
    char text[MAX_EXAMPLES][900];
} bag;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void bag_add(bag *b, const char *fmt, ...)
{
    va_list ap;
    if (b->n < MAX_EXAMPLES) {
        va_start(ap, fmt);
        vsnprintf(b->text[b->n], sizeof b->text[0], fmt, ap);
        va_end(ap);
    }
    b->n++;
}

static void bag_print(const bag *b)
{
    long i;
    for (i = 0; i < b->n && i < MAX_EXAMPLES; i++) printf("# %s\n", b->text[i]);
    if (b->n > MAX_EXAMPLES) printf("# ... and %ld more\n", b->n - MAX_EXAMPLES);
}

/* ---- libcurl's reading --------------------------------------------------- */

typedef struct reading {
    int ok;           /* parsed, scheme http(s) */
    CURLUcode rc;
    char *host;       /* CURLU_PUNYCODE, NULL when it failed */
    char *port, *path, *query, *user;
    int has_query, has_user;
} reading;

static void reading_free(reading *r)
{
    curl_free(r->host);
    curl_free(r->port);
    curl_free(r->path);
    curl_free(r->query);
    curl_free(r->user);
    memset(r, 0, sizeof *r);
}

static void curl_read(const char *u, int disallow_user, reading *r)
{
    CURLU *h = curl_url();
    char *scheme = NULL;
    unsigned flags = CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME | CURLU_PATH_AS_IS;
    memset(r, 0, sizeof *r);
    if (!h) abort();
    if (disallow_user) flags |= CURLU_DISALLOW_USER;
    r->rc = curl_url_set(h, CURLUPART_URL, u, flags);
    if (r->rc == CURLUE_OK && curl_url_get(h, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0)) {
        CURLUcode hrc = curl_url_get(h, CURLUPART_HOST, &r->host, CURLU_PUNYCODE);
        r->ok = hrc == CURLUE_OK;
        if (!r->ok) r->rc = hrc;
        curl_url_get(h, CURLUPART_PORT, &r->port, 0);
        curl_url_get(h, CURLUPART_PATH, &r->path, 0);
        r->has_query = curl_url_get(h, CURLUPART_QUERY, &r->query, 0) == CURLUE_OK;
        r->has_user = curl_url_get(h, CURLUPART_USER, &r->user, 0) == CURLUE_OK;
    } else if (r->rc == CURLUE_OK) {
        r->rc = CURLUE_UNSUPPORTED_SCHEME;
    }
    curl_free(scheme);
    curl_url_cleanup(h);
}

/* ---- core's reading of an accepted URL (as core/url.c splits it) ------------ */

typedef struct split {
    const char *host, *port, *path, *query;
    size_t hlen, portlen, pathlen, qlen;
    int has_port, has_query, has_user;
} split;

static void split_url(const char *s, split *p)
{
    const char *a = strstr(s, "://") + 3, *e, *h, *q;
    memset(p, 0, sizeof *p);
    for (e = a; *e && *e != '/' && *e != '?' && *e != '#'; e++) {}
    h = a;
    for (q = a; q < e; q++)
        if (*q == '@') h = q + 1;
    p->has_user = h != a;
    p->host = h;
    if (*h == '[') {
        for (q = h; q < e && *q != ']'; q++) {}
        q++;
    } else {
        for (q = h; q < e && *q != ':'; q++) {}
    }
    p->hlen = (size_t)(q - h);
    if (q < e) {
        p->has_port = 1;
        p->port = q + 1;
        p->portlen = (size_t)(e - q - 1);
    }
    p->path = e;
    for (q = e; *q && *q != '?' && *q != '#'; q++) {}
    p->pathlen = (size_t)(q - e);
    if (*q == '?') {
        p->has_query = 1;
        p->query = q + 1;
        for (e = q + 1; *e && *e != '#'; e++) {}
        p->qlen = (size_t)(e - q - 1);
    }
}

static int eq(const char *a, size_t alen, const char *b)
{
    return b && strlen(b) == alen && memcmp(a, b, alen) == 0;
}

/* s with bytes >= 0x80 as %XX (what pb_url_to_ascii does outside the host) */
static const char *enc(const char *s, char *out, size_t cap)
{
    size_t j = 0;
    if (!s) return NULL;
    for (; *s && j + 4 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x80) j += (size_t)sprintf(out + j, "%%%02X", c);
        else out[j++] = (char)c;
    }
    out[j] = '\0';
    return out;
}

/* ---- classifying a refusal libcurl does not share ------------------------------ */

static int starts_ci(const char *s, const char *p)
{
    for (; *p; s++, p++) {
        char c = *s;
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if (c != *p) return 0;
    }
    return 1;
}

static int classify(const char *u, const char *why)
{
    split p;
    size_t i;
    if (strstr(why, "user info (")) return D_USERINFO;
    if (starts_ci(u, "http:") || starts_ci(u, "https:")) {
        const char *r = u + (starts_ci(u, "http:") ? 5 : 6);
        if (strncmp(r, "//", 2) != 0 || r[2] == '/') return D_SLASHES;
    } else if (strstr(why, "not an absolute")) {
        return D_NO_SCHEME;
    }
    if (!strstr(u, "://")) return -1;
    split_url(u, &p);
    if (strstr(why, "percent-encoded byte in its host")) return D_HOST_PERCENT;
    if (strstr(why, "invalid character in its host")) {
        for (i = 0; i < p.hlen; i++)
            if (p.host[i] == '|') return D_HOST_PIPE;
        return -1;
    }
    if (strstr(why, "invalid port")) return D_PORT;
    if (strstr(why, "malformed IPv6 host") && memchr(p.host, '%', p.hlen)) return D_ZONE;
    if (strstr(why, "not a valid internationalised")) return D_IDN_NONASCII;
    return -1;
}

/* ---- the README ------------------------------------------------------------------ */

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *s;
    long n;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    s = malloc((size_t)n + 1);
    if (!s || fread(s, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(s);
        return NULL;
    }
    s[n] = '\0';
    fclose(f);
    return s;
}

/* ---- main ---------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    static char u[2048];
    static bag core_only, curl_only_unlisted, ascii_diff, code_diff, plain_diff;
    long counts[ND] = { 0 }, n_ok = 0, n_both_refuse = 0, n_converted = 0, n_code = 0, n_plain = 0, i;
    int pass, utf8;
    char name[200];

    printf("TAP version 13\n");
    utf8 = setlocale(LC_ALL, "C.UTF-8") != NULL;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return 2;

    for (i = 0; i < NURLS; i++) {
        size_t n = gen(u, sizeof u);
        /* half with user info allowed (and libcurl's DISALLOW_USER off) */
        for (pass = 0; pass < 2; pass++) {
            unsigned flags = pass ? PB_URL_ALLOW_USERINFO : 0;
            const char *why = pb_check_request_url_ex(u, n, flags);
            const char *cwhy = pb_check_code_url_ex(u, n, flags);
            int has_nul = memchr(u, '\0', n) != NULL;
            reading c;
            if (pb_url_plain(u, n)) {
                /* the firing fast path: must agree with the full checks */
                pb_buf pb;
                int arc;
                n_plain++;
                pb_buf_init(&pb, NULL);
                arc = why ? -1 : pb_url_to_ascii(u, n, flags, &pb, NULL, 0);
                if (arc != 0) bag_add(&plain_diff, "%s: pb_url_plain says plain, full check %s, to_ascii %d",
                                      show(u, n), why ? why : "accepts", arc);
                pb_buf_free(&pb);
            }
            if (has_nul) {
                /* libcurl takes a C string: only check that core refuses it */
                if (!why) bag_add(&core_only, "%s: accepted with a NUL byte", show(u, n));
                continue;
            }
            curl_read(u, !pass, &c);
            if (!why && !c.ok) {
                bag_add(&core_only, "%s%s: core accepts, libcurl says %d (%s)", show(u, n),
                        pass ? " [allow_userinfo]" : "", (int)c.rc, curl_url_strerror(c.rc));
            } else if (why && c.ok) {
                int k = classify(u, why);
                if (k < 0) bag_add(&curl_only_unlisted, "%s%s: core: %s; libcurl accepts", show(u, n),
                                   pass ? " [allow_userinfo]" : "", why);
                else counts[k]++;
            } else if (why) {
                n_both_refuse++;
            }
            if (!why && c.ok) {
                /* the ASCII form: libcurl reads in it what core reads, and what it read in u */
                pb_buf b;
                const char *a = u;
                split p;
                reading ca;
                char e1[4096], e2[4096];
                int rc;
                n_ok++;
                pb_buf_init(&b, NULL);
                rc = pb_url_to_ascii(u, n, flags, &b, NULL, 0);
                if (rc == 1) {
                    a = b.data;
                    n_converted++;
                } else if (rc != 0) {
                    bag_add(&ascii_diff, "%s: pb_url_to_ascii = %d", show(u, n), rc);
                }
                split_url(a, &p);
                curl_read(a, !pass, &ca);
                if (!ca.ok) {
                    bag_add(&ascii_diff, "%s -> %s: libcurl refuses the ASCII form (%d)", show(u, n),
                            show(a, strlen(a)), (int)ca.rc);
                } else {
                    unsigned long cport = ca.port ? strtoul(ca.port, NULL, 10) : 0, port = 0;
                    if (p.has_port) port = strtoul(p.port, NULL, 10);
                    if (!eq(p.host, p.hlen, ca.host))
                        bag_add(&ascii_diff, "%s: host: core %s, libcurl %s", show(a, strlen(a)),
                                show(p.host, p.hlen), show(ca.host, ca.host ? strlen(ca.host) : 0));
                    if (port != cport)
                        bag_add(&ascii_diff, "%s: port: core %lu, libcurl %lu", show(a, strlen(a)), port, cport);
                    /* the request line: the path (or "/"), then "?query" when there is a '?' */
                    if (!(p.pathlen ? eq(p.path, p.pathlen, ca.path) : eq("/", 1, ca.path)))
                        bag_add(&ascii_diff, "%s: path: core %s, libcurl %s", show(a, strlen(a)),
                                show(p.path, p.pathlen), show(ca.path, ca.path ? strlen(ca.path) : 0));
                    if (p.has_query != ca.has_query || (p.has_query && !eq(p.query, p.qlen, ca.query)))
                        bag_add(&ascii_diff, "%s: query: core %s, libcurl %s", show(a, strlen(a)),
                                p.has_query ? show(p.query, p.qlen) : "(none)",
                                ca.has_query ? show(ca.query, strlen(ca.query)) : "(none)");
                    if (p.has_user != ca.has_user)
                        bag_add(&ascii_diff, "%s: user info: core %d, libcurl %d", show(a, strlen(a)),
                                p.has_user, ca.has_user);
                    /* and the original reads the same in libcurl, once in ASCII (an IDN
                     * may map to an IPv4 form, which libcurl reads once it is ASCII) */
                    if (c.host && strcmp(c.host, ca.host) != 0) {
                        char again[600];
                        reading cc;
                        snprintf(again, sizeof again, "http://%s/", c.host);
                        curl_read(again, 0, &cc);
                        if (cc.ok && cc.host && strcmp(cc.host, ca.host) == 0) {
                            curl_free(c.host);
                            c.host = cc.host;
                            cc.host = NULL;
                        }
                        reading_free(&cc);
                    }
                    if (!c.host || strcmp(c.host, ca.host) != 0 || cport != (c.port ? strtoul(c.port, NULL, 10) : 0) ||
                        !c.path || strcmp(enc(c.path, e1, sizeof e1), ca.path) != 0 ||
                        c.has_query != ca.has_query ||
                        (c.has_query && strcmp(enc(c.query, e2, sizeof e2), ca.query) != 0))
                        bag_add(&ascii_diff, "%s -> %s: libcurl reads them differently (host %s/%s path %s/%s)",
                                show(u, n), show(a, strlen(a)), c.host ? c.host : "-", ca.host,
                                c.path ? c.path : "-", ca.path);
                }
                reading_free(&ca);
                pb_buf_free(&b);
            }
            /* postback code: with its macros rendered, what validates is fired */
            if (!cwhy && (memchr(u, '{', n) || strstr(u, "%7B") || strstr(u, "%7b"))) {
                pb_template *t = pb_template_parse(u, n, NULL);
                pb_value *vals;
                pb_render_opts ro;
                pb_render_err err;
                pb_buf r;
                size_t k;
                const char *rwhy;
                reading cr;
                if (!t) abort();
                vals = calloc(t->nnames + 1, sizeof *vals);
                if (!vals) abort();
                for (k = 0; k < t->nnames; k++) {
                    vals[k].kind = PB_V_STRING;
                    vals[k].s = "8080"; /* fits a host, a port, a path */
                    vals[k].len = 4;
                }
                ro.missing = PB_MISSING_EMPTY;
                ro.encode = PB_ENCODE_URL;
                pb_buf_init(&r, NULL);
                if (pb_template_render(t, vals, &ro, &r, &err) != PB_OK) abort();
                n_code++;
                rwhy = pb_check_request_url_ex(pb_buf_str(&r), r.len, flags);
                curl_read(pb_buf_str(&r), !pass, &cr);
                if (rwhy || !cr.ok)
                    bag_add(&code_diff, "code %s validates; rendered %s: core %s, libcurl %s", show(u, n),
                            show(r.data, r.len), rwhy ? rwhy : "ok", cr.ok ? "ok" : curl_url_strerror(cr.rc));
                reading_free(&cr);
                pb_buf_free(&r);
                free(vals);
                pb_template_free(t);
            }
            reading_free(&c);
        }
    }

    snprintf(name, sizeof name, "%d generated URLs read by core and by curl_url() (libcurl %s)%s",
             NURLS, curl_version_info(CURLVERSION_NOW)->version, utf8 ? "" : " -- no C.UTF-8 locale");
    tap(utf8, name);
    printf("# both accept %ld (%ld converted to ASCII), both refuse %ld\n", n_ok, n_converted, n_both_refuse);
    tap(core_only.n == 0, "no URL that core accepts is refused by libcurl");
    bag_print(&core_only);
    tap(curl_only_unlisted.n == 0, "every URL only libcurl accepts is a listed difference");
    bag_print(&curl_only_unlisted);
    for (i = 0; i < ND; i++) printf("# listed: %-32s %ld\n", d_names[i], counts[i]);
    bag_print(&plain_diff);
    snprintf(name, sizeof name, "the firing fast path (pb_url_plain) agrees with the full checks on %ld URLs",
             n_plain);
    tap(plain_diff.n == 0 && n_plain > 1000, name);
    tap(ascii_diff.n == 0, "libcurl reads the ASCII form as core does, and as the original");
    bag_print(&ascii_diff);
    snprintf(name, sizeof name, "code URLs that validate are fired as they read (%ld rendered)", n_code);
    tap(code_diff.n == 0 && n_code > 1000, name);
    bag_print(&code_diff);
    if (argc > 1) {
        char *readme = read_file(argv[1]);
        const char *sec = readme ? strstr(readme, "URLs that postback and libcurl read differently") : NULL;
        int all = sec != NULL;
        for (i = 0; i < ND && sec; i++)
            if (!strstr(sec, d_names[i])) {
                printf("# the README does not name \"%s\"\n", d_names[i]);
                all = 0;
            }
        tap(all, "the README lists every difference");
        free(readme);
    }
    for (i = 0; i < ND; i++)
        if (!counts[i]) printf("# note: no URL fell in \"%s\"\n", d_names[i]);
    curl_global_cleanup();
    printf("1..%d\n", tap_n);
    return tap_failed ? 1 : 0;
}
