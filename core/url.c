/* url.c - URL checks shared by validation and the HTTP engine, and the
 * ASCII form of a URL that is handed to libcurl. */
#include "url.h"

#include <arpa/inet.h>
#include <idn2.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "template.h"

/* Longest host handed to libidn2 (a DNS name is at most 253 bytes; UTF-8
 * takes up to 4 bytes a character). */
#define MAX_IDN_HOST 1024

static int ieq_prefix(const char *s, size_t n, const char *p)
{
    size_t i, m = strlen(p);
    if (n < m) return 0;
    for (i = 0; i < m; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if (c != p[i]) return 0;
    }
    return 1;
}

/* Length of "http://" or "https://" at the start of s, or 0. */
static size_t scheme_len(const char *s, size_t n)
{
    if (ieq_prefix(s, n, "http://")) return 7;
    if (ieq_prefix(s, n, "https://")) return 8;
    return 0;
}

/* Where the parts of an http(s) URL are (offsets into s). */
typedef struct parts {
    size_t auth, auth_end; /* the authority, after "scheme://", up to / ? # */
    size_t nat;            /* '@' in the authority */
    size_t host, host_end; /* after the last '@', before ":port" */
    int has_port;          /* a ':' follows the host */
    size_t port, port_end; /* after that ':' */
} parts;

static void split(const char *s, size_t n, parts *p)
{
    size_t i, j;
    p->auth = scheme_len(s, n);
    for (j = p->auth; j < n && s[j] != '/' && s[j] != '?' && s[j] != '#'; j++) {}
    p->auth_end = j;
    p->nat = 0;
    p->host = p->auth;
    for (i = p->auth; i < j; i++)
        if (s[i] == '@') {
            p->nat++;
            p->host = i + 1;
        }
    p->host_end = j;
    if (p->host < j && s[p->host] == '[') {
        for (i = p->host; i < j && s[i] != ']'; i++) {}
        p->host_end = i < j ? i + 1 : j;
    } else {
        for (i = p->host; i < j; i++)
            if (s[i] == ':') {
                p->host_end = i;
                break;
            }
    }
    p->has_port = p->host_end < j;
    p->port = p->has_port ? p->host_end + 1 : j;
    p->port_end = j;
}

static int host_char_ok(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

/* Length of a whole macro ({name} or %7Bname%7D) at s[i..end), or 0. */
static size_t macro_at(const char *s, size_t i, size_t end)
{
    size_t noff, nlen;
    return pb_placeholder(s, end, i, &noff, &nlen);
}

/* Converts a UTF-8 host name to ASCII as libcurl does with libidn2:
 * IDNA 2008 non-transitional with NFC, then UTS 46 transitional for names
 * it disallows. Returns IDN2_OK with *out to free with idn2_free, or an
 * IDN2_ error. */
static int idn_convert(const char *h, size_t n, char **out)
{
    char buf[MAX_IDN_HOST + 1];
    int rc;
    *out = NULL;
    if (n > MAX_IDN_HOST) return IDN2_TOO_BIG_DOMAIN;
    memcpy(buf, h, n);
    buf[n] = '\0';
    rc = idn2_to_ascii_8z(buf, out, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL);
    if (rc == IDN2_DISALLOWED) rc = idn2_to_ascii_8z(buf, out, IDN2_TRANSITIONAL);
    if (rc != IDN2_OK) {
        idn2_free(*out);
        *out = NULL;
    }
    return rc;
}

static const char *const bad_idn = "has a host name that is not a valid internationalised domain name";

/* The reason an internationalised name h[0..n) is refused, or NULL. With
 * keep, its ASCII form is left in *keep (to free with idn2_free) when it is
 * fine. */
static const char *check_idn(const char *h, size_t n, char **keep)
{
    char *a = NULL;
    const char *why = NULL, *p;
    int rc = idn_convert(h, n, &a);
    if (rc == IDN2_MALLOC) return "has a host name that could not be checked (out of memory)";
    if (rc == IDN2_TOO_BIG_DOMAIN || rc == IDN2_TOO_BIG_LABEL || rc == IDN2_PUNYCODE_BIG_OUTPUT)
        return "has a host name that is too long";
    if (rc != IDN2_OK) return bad_idn;
    for (p = a; *p; p++)
        if (!host_char_ok((unsigned char)*p)) {
            why = bad_idn; /* a character that maps to '/', '%', ... */
            break;
        }
    if (!*a) why = bad_idn;
    if (keep && !why) *keep = a;
    else idn2_free(a);
    return why;
}

/* The host of a code URL: names and whole macros. An internationalised host
 * is checked with each macro standing for "a": rendered values are
 * percent-encoded, so a macro renders to letters, digits, "-._~" (or to a
 * percent sign, which the check of the rendered URL refuses). */
static const char *check_code_host(const char *s, size_t h, size_t e)
{
    char buf[MAX_IDN_HOST + 1];
    size_t i, m, k = 0;
    int any_wide = 0;
    for (i = h; i < e; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '{' || c == '%') {
            m = macro_at(s, i, e);
            if (!m) return c == '%' ? "has a percent-encoded byte in its host"
                                    : "has an invalid character in its host";
            i += m - 1;
            c = 'a';
        } else if (c >= 0x80) {
            any_wide = 1;
        } else if (!host_char_ok(c)) {
            return "has an invalid character in its host";
        }
        if (k < sizeof buf) buf[k++] = (char)c;
    }
    if (!any_wide) return NULL;
    if (k > MAX_IDN_HOST) return "has a host name that is too long";
    return check_idn(buf, k, NULL);
}

static const char *check_request_host(const char *s, size_t h, size_t e, char **keep)
{
    size_t i;
    int wide = 0;
    for (i = h; i < e; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') return "has a percent-encoded byte in its host";
        if (c >= 0x80) wide = 1;
        else if (!host_char_ok(c)) return "has an invalid character in its host";
    }
    return wide ? check_idn(s + h, e - h, keep) : NULL;
}

/* The checks of both kinds of URL. With keep, an internationalised host's
 * ASCII form is left in *keep (see check_idn), even when a later check
 * refuses the URL. */
static const char *check_common(const char *s, size_t n, int allow_macros, unsigned flags,
                                char **keep)
{
    size_t i;
    parts p;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == 0x7f) return "contains whitespace or control characters";
    }
    if (!scheme_len(s, n)) return "is not an absolute http:// or https:// URL";
    split(s, n, &p);
    if (p.nat > 1) return "has an '@' in its user info";
    if (p.host == p.host_end) return "has no host";
    if (p.nat && !(flags & PB_URL_ALLOW_USERINFO))
        return "has user info (user:password@), refused unless allowed";
    if (s[p.host] == '[') {
        /* An IPv6 literal, as inet_pton reads it (e.g. [::1]), no zone. */
        char addr[INET6_ADDRSTRLEN];
        unsigned char bin[16];
        size_t hlen = p.host_end - p.host, alen6 = hlen - 2;
        if (hlen < 4 || s[p.host_end - 1] != ']' || alen6 >= sizeof addr)
            return "has a malformed IPv6 host";
        memcpy(addr, s + p.host + 1, alen6);
        addr[alen6] = '\0';
        if (inet_pton(AF_INET6, addr, bin) != 1) return "has a malformed IPv6 host";
    } else {
        const char *why = allow_macros ? check_code_host(s, p.host, p.host_end)
                                       : check_request_host(s, p.host, p.host_end, keep);
        if (why) return why;
    }
    if (p.has_port) {
        /* ":port": digits (at most 65535), or a whole macro in postback code */
        const char *pt = s + p.port;
        size_t plen = p.port_end - p.port;
        unsigned long port = 0;
        if (s[p.host_end] != ':') return "has an invalid character in its host";
        if (allow_macros && plen && macro_at(s, p.port, p.port_end) == plen) return NULL;
        if (plen == 0 || plen > 5) return "has an invalid port";
        for (i = 0; i < plen; i++) {
            if (pt[i] < '0' || pt[i] > '9') return "has an invalid port";
            port = port * 10 + (unsigned long)(pt[i] - '0');
        }
        if (port == 0 || port > 65535) return "has an invalid port";
    }
    return NULL;
}

const char *pb_check_code_url_ex(const char *s, size_t n, unsigned flags)
{
    return check_common(s, n, 1, flags, NULL);
}

const char *pb_check_code_url(const char *s, size_t n)
{
    return check_common(s, n, 1, 0, NULL);
}

const char *pb_check_request_url_ex(const char *s, size_t n, unsigned flags)
{
    return check_common(s, n, 0, flags, NULL);
}

const char *pb_check_request_url(const char *s, size_t n)
{
    return check_common(s, n, 0, 0, NULL);
}

/* ---- the ASCII form ----------------------------------------------------- */

/* libcurl's reading of a host as an IPv4 address: one to four parts
 * separated by dots, each decimal, octal (leading 0) or hex (0x), the last
 * one filling the remaining bytes. Returns 1 with the address in *out, 0 when
 * the host is a name. */
static int ipv4_number(const char *h, size_t n, unsigned long *out)
{
    unsigned long part[4];
    size_t i = 0;
    int np = 0;
    for (;;) {
        unsigned long v = 0;
        unsigned base = 10;
        size_t start;
        if (i >= n || h[i] < '0' || h[i] > '9') return 0;
        if (h[i] == '0' && i + 1 < n && (h[i + 1] == 'x' || h[i + 1] == 'X')) {
            base = 16;
            i += 2;
        } else if (h[i] == '0') {
            base = 8;
        }
        start = i;
        for (; i < n; i++) {
            unsigned d;
            char c = h[i];
            if (c >= '0' && c <= '9') d = (unsigned)(c - '0');
            else if (base == 16 && c >= 'a' && c <= 'f') d = (unsigned)(c - 'a' + 10);
            else if (base == 16 && c >= 'A' && c <= 'F') d = (unsigned)(c - 'A' + 10);
            else break;
            if (d >= base) break;
            v = v * base + d;
            if (v > 0xffffffffUL) return 0;
        }
        /* "0x" with no digit reads as 0 followed by 'x': a name */
        if (base == 16 && i == start) return 0;
        part[np++] = v;
        if (i == n) break;
        if (h[i] != '.' || np == 4) return 0;
        i++;
    }
    switch (np) {
    case 1: *out = part[0]; break;
    case 2:
        if (part[0] > 0xff || part[1] > 0xffffff) return 0;
        *out = part[0] << 24 | part[1];
        break;
    case 3:
        if (part[0] > 0xff || part[1] > 0xff || part[2] > 0xffff) return 0;
        *out = part[0] << 24 | part[1] << 16 | part[2];
        break;
    default:
        if (part[0] > 0xff || part[1] > 0xff || part[2] > 0xff || part[3] > 0xff) return 0;
        *out = part[0] << 24 | part[1] << 16 | part[2] << 8 | part[3];
        break;
    }
    return 1;
}

static void set_why(char *why, size_t whylen, const char *a, const char *b)
{
    if (why && whylen) snprintf(why, whylen, "%s%s", a, b);
}

/* Appends s[from..to) with every byte >= 0x80 as %XX. */
static int put_encoded(pb_buf *b, const char *s, size_t from, size_t to)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i, run = from;
    for (i = from; i < to; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[3];
        if (c < 0x80) continue;
        int rc = pb_buf_append(b, s + run, i - run);
        if (rc != PB_OK) return rc;
        e[0] = '%';
        e[1] = hex[c >> 4];
        e[2] = hex[c & 15];
        if ((rc = pb_buf_append(b, e, 3)) != PB_OK) return rc;
        run = i + 1;
    }
    return pb_buf_append(b, s + run, to - run);
}

int pb_url_to_ascii(const char *s, size_t n, unsigned flags, pb_buf *out, char *why,
                    size_t whylen)
{
    char text[INET6_ADDRSTRLEN + 2], *idn = NULL;
    /* the check converts an internationalised host: idn keeps that */
    const char *bad = check_common(s, n, 0, flags, &idn);
    const char *host;
    size_t hlen, i, orig = out->len;
    unsigned long v4;
    int wide_rest = 0, rc;
    parts p;

    if (bad) {
        idn2_free(idn);
        set_why(why, whylen, "URL ", bad);
        return PB_EINVAL;
    }
    split(s, n, &p);
    host = s + p.host;
    hlen = p.host_end - p.host;
    if (host[0] == '[') {
        unsigned char bin[16];
        char addr[INET6_ADDRSTRLEN];
        memcpy(addr, host + 1, hlen - 2);
        addr[hlen - 2] = '\0';
        if (inet_pton(AF_INET6, addr, bin) != 1 || !inet_ntop(AF_INET6, bin, text + 1, INET6_ADDRSTRLEN)) {
            set_why(why, whylen, "URL ", "has a malformed IPv6 host");
            return PB_EINVAL;
        }
        /* as libcurl: the RFC 5952 form only when it is shorter */
        if (strlen(text + 1) < hlen - 2) {
            text[0] = '[';
            i = strlen(text);
            text[i] = ']';
            text[i + 1] = '\0';
            host = text;
        }
    } else {
        if (idn) {
            host = idn;
            hlen = strlen(idn);
        }
        if (ipv4_number(host, hlen, &v4)) {
            snprintf(text, sizeof text, "%lu.%lu.%lu.%lu", v4 >> 24, (v4 >> 16) & 0xff,
                     (v4 >> 8) & 0xff, v4 & 0xff);
            host = text;
        }
    }
    if (host != s + p.host) hlen = strlen(host);
    for (i = 0; i < n && !wide_rest; i++)
        if ((unsigned char)s[i] >= 0x80 && (i < p.host || i >= p.host_end)) wide_rest = 1;
    if (!wide_rest && hlen == p.host_end - p.host && memcmp(host, s + p.host, hlen) == 0) {
        idn2_free(idn);
        return 0;
    }
    rc = put_encoded(out, s, 0, p.host);
    if (rc == PB_OK) rc = pb_buf_append(out, host, hlen);
    if (rc == PB_OK) rc = put_encoded(out, s, p.host_end, n);
    idn2_free(idn);
    if (rc != PB_OK) {
        out->len = orig;
        if (out->data) out->data[orig] = '\0';
        set_why(why, whylen, rc == PB_ELIMIT ? "URL too long" : "out of memory", "");
        return rc;
    }
    return 1;
}

/* ---- small questions ------------------------------------------------------ */

long pb_find_crlf_nul(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') return (long)i;
    return -1;
}

int pb_url_is_https(const char *s, size_t n)
{
    return ieq_prefix(s, n, "https://");
}

int pb_url_host(const char *s, size_t n, size_t *off, size_t *len)
{
    parts p;
    if (!scheme_len(s, n)) return 0;
    split(s, n, &p);
    *off = p.host;
    *len = p.host_end - p.host;
    return 1;
}

/* 1 when a[0..n) and b[0..n) agree, ASCII case ignored. */
static int ieq_n(const char *a, const char *b, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z') x = (char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = (char)(y - 'A' + 'a');
        if (x != y) return 0;
    }
    return 1;
}

/* 1 when the no_proxy entry t[0..n) -- an address, with "/bits" or whole --
 * covers addr, of family af. */
static int entry_covers(int af, const unsigned char *addr, const char *t, size_t n)
{
    char text[INET6_ADDRSTRLEN];
    unsigned char net[16];
    unsigned bits = 0, max = af == AF_INET ? 32 : 128;
    const char *slash = memchr(t, '/', n);
    size_t alen = slash ? (size_t)(slash - t) : n, i;
    if (slash) /* as libcurl reads it: the digits that follow, 0 = all bits */
        for (i = alen + 1; i < n && t[i] >= '0' && t[i] <= '9' && bits <= max; i++)
            bits = bits * 10 + (unsigned)(t[i] - '0');
    if (bits > max || alen >= sizeof text) return 0;
    if (bits == 0) bits = max;
    memcpy(text, t, alen);
    text[alen] = '\0';
    if (inet_pton(af, text, net) != 1) return 0;
    if (memcmp(addr, net, bits / 8) != 0) return 0;
    return bits % 8 == 0 || ((addr[bits / 8] ^ net[bits / 8]) & (0xff00u >> (bits % 8) & 0xffu)) == 0;
}

int pb_url_no_proxy(const char *list, const char *host, size_t n)
{
    char text[INET6_ADDRSTRLEN];
    unsigned char addr[16];
    const char *p = list;
    int af = 0;
    if (!list || n == 0) return 0;
    if (strcmp(list, "*") == 0) return 1;
    if (host[0] == '[') {
        if (n < 2 || n - 2 >= sizeof text) return 0;
        memcpy(text, host + 1, n - 2);
        text[n - 2] = '\0';
        if (inet_pton(AF_INET6, text, addr) != 1) return 0;
        af = AF_INET6;
    } else if (n < sizeof text) {
        memcpy(text, host, n);
        text[n] = '\0';
        if (inet_pton(AF_INET, text, addr) == 1) af = AF_INET;
    }
    if (!af && host[n - 1] == '.') n--; /* a name's trailing dot */
    while (*p) {
        const char *t;
        size_t tn;
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        for (t = p; *p && *p != ' ' && *p != '\t' && *p != ','; p++) {}
        tn = (size_t)(p - t);
        if (tn == 0) continue;
        if (af) {
            if (entry_covers(af, addr, t, tn)) return 1;
            continue;
        }
        /* a name: itself, or a domain it is in; dots around the entry ignored */
        if (t[tn - 1] == '.') tn--;
        if (tn && t[0] == '.') {
            t++;
            tn--;
        }
        if (tn == 0 || tn > n) continue;
        if (tn == n ? ieq_n(t, host, n) : host[n - tn - 1] == '.' && ieq_n(t, host + n - tn, tn))
            return 1;
    }
    return 0;
}

int pb_url_is_loopback(const char *s, size_t n)
{
    size_t hlen, i;
    const char *h;
    parts p;
    if (!scheme_len(s, n)) return 0;
    split(s, n, &p);
    h = s + p.host;
    hlen = p.host_end - p.host;
    if (hlen == 9 && ieq_prefix(h, hlen, "localhost")) return 1;
    if (hlen == 5 && memcmp(h, "[::1]", 5) == 0) return 1;
    if (hlen >= 7 && hlen <= 15 && memcmp(h, "127.", 4) == 0) {
        int dots = 0;
        for (i = 0; i < hlen; i++) {
            if (h[i] == '.') dots++;
            else if (h[i] < '0' || h[i] > '9') return 0;
        }
        return dots == 3;
    }
    return 0;
}

/* Bytes of a plain host: letters, other name bytes (digits - _ ~), dots. */
enum { H_ALPHA = 1, H_NAME = 2, H_DOT = 3 };
#define HOST_ROW(c) \
    (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z') ? H_ALPHA : \
     ((c) >= '0' && (c) <= '9') || (c) == '-' || (c) == '_' || (c) == '~' ? H_NAME : \
     (c) == '.' ? H_DOT : 0)
#define HOST_ROW4(c) HOST_ROW(c), HOST_ROW((c) + 1), HOST_ROW((c) + 2), HOST_ROW((c) + 3)
#define HOST_ROW16(c) HOST_ROW4(c), HOST_ROW4((c) + 4), HOST_ROW4((c) + 8), HOST_ROW4((c) + 12)
static const unsigned char host_class[256] = {
    HOST_ROW16(0),   HOST_ROW16(16),  HOST_ROW16(32),  HOST_ROW16(48),
    HOST_ROW16(64),  HOST_ROW16(80),  HOST_ROW16(96),  HOST_ROW16(112),
    HOST_ROW16(128), HOST_ROW16(144), HOST_ROW16(160), HOST_ROW16(176),
    HOST_ROW16(192), HOST_ROW16(208), HOST_ROW16(224), HOST_ROW16(240),
};
#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

int pb_url_plain(const char *s, size_t n)
{
    const char *p = s, *end = s + n, *h, *he, *auth_end;
    int label_start = 1, alpha_label = 0, labels = 0, digits = 0;
    unsigned value = 0;
    if (n >= 7 && (p[0] | 0x20) == 'h' && (p[1] | 0x20) == 't' && (p[2] | 0x20) == 't' &&
        (p[3] | 0x20) == 'p') {
        p += 4;
        if ((*p | 0x20) == 's') p++;
        if (end - p < 3 || p[0] != ':' || p[1] != '/' || p[2] != '/') return 0;
        p += 3;
    } else {
        return 0;
    }
    /* the host: letters, digits, '.', '-', '_', '~' (no '%', '@', '[' or macro) */
    for (h = p; p < end; p++) {
        unsigned char k = host_class[(unsigned char)*p];
        if (k == 0) break;
        if (k == H_DOT) {
            label_start = 1;
        } else {
            alpha_label |= label_start & (k == H_ALPHA);
            label_start = 0;
        }
    }
    he = p;
    if (he == h) return 0;
    if (p < end && *p == ':') {
        unsigned long port = 0;
        const char *ps = ++p;
        for (; p < end && *p >= '0' && *p <= '9' && p - ps < 6; p++) port = port * 10 + (unsigned long)(*p - '0');
        if (p == ps || p - ps > 5 || port == 0 || port > 65535) return 0;
    }
    auth_end = p;
    if (auth_end < end && *auth_end != '/' && *auth_end != '?' && *auth_end != '#') return 0;
    /* the rest: no byte outside 0x21-0x7e, eight at a time */
    for (p = auth_end; end - p >= 8; p += 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        if (((w - ONES * 0x21u) & ~w & HIGHS) | (((w + ONES * (127u - 0x7eu)) | w) & HIGHS)) return 0;
    }
    for (; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c >= 0x7f) return 0;
    }
    if (alpha_label) return 1;
    /* else only a dotted quad already in its canonical form */
    for (p = h; p <= he; p++) {
        if (p == he || *p == '.') {
            if (digits == 0 || value > 255) return 0;
            labels++;
            digits = 0;
            value = 0;
        } else if (*p >= '0' && *p <= '9') {
            if (digits == 1 && value == 0) return 0; /* a leading zero: octal */
            if (++digits > 3) return 0;
            value = value * 10 + (unsigned)(*p - '0');
        } else {
            return 0;
        }
    }
    return labels == 4;
}
