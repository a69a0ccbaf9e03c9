/* url.c - URL checks shared by validation and the HTTP engine. */
#include "url.h"

#include <arpa/inet.h>
#include <string.h>

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

/* The authority (after "scheme://", up to / ? #) of s. */
static void authority(const char *s, size_t n, size_t *off, size_t *len)
{
    size_t i = scheme_len(s, n), j = i;
    while (j < n && s[j] != '/' && s[j] != '?' && s[j] != '#') j++;
    *off = i;
    *len = j - i;
}

/* The host inside an authority: after the last '@', before ":port". */
static void host_of(const char *a, size_t n, size_t *off, size_t *len, size_t *port_off)
{
    size_t i, start = 0, end;
    for (i = 0; i < n; i++)
        if (a[i] == '@') start = i + 1;
    end = n;
    if (start < n && a[start] == '[') {
        for (i = start; i < n && a[i] != ']'; i++) {}
        end = i < n ? i + 1 : n;
    } else {
        for (i = start; i < n; i++)
            if (a[i] == ':') {
                end = i;
                break;
            }
    }
    *off = start;
    *len = end - start;
    *port_off = end;
}

static int host_char_ok(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~' || c == '%' || c == '{' || c == '}' ||
           c >= 0x80; /* internationalised names */
}

static const char *check_common(const char *s, size_t n, int allow_macros)
{
    size_t i, aoff, alen, hoff, hlen, poff;
    const char *a;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == 0x7f) return "contains whitespace or control characters";
    }
    if (!scheme_len(s, n)) return "is not an absolute http:// or https:// URL";
    authority(s, n, &aoff, &alen);
    a = s + aoff;
    {
        size_t ats = 0;
        for (i = 0; i < alen; i++) ats += a[i] == '@';
        if (ats > 1) return "has an '@' in its user info";
    }
    host_of(a, alen, &hoff, &hlen, &poff);
    if (hlen == 0) return "has no host";
    if (a[hoff] == '[') {
        /* An IPv6 literal, as inet_pton reads it (e.g. [::1]). */
        char addr[INET6_ADDRSTRLEN];
        unsigned char bin[16];
        size_t alen6 = hlen - 2;
        if (a[hoff + hlen - 1] != ']' || hlen < 4 || alen6 >= sizeof addr)
            return "has a malformed IPv6 host";
        memcpy(addr, a + hoff + 1, alen6);
        addr[alen6] = '\0';
        if (inet_pton(AF_INET6, addr, bin) != 1) return "has a malformed IPv6 host";
    } else {
        for (i = hoff; i < hoff + hlen; i++) {
            unsigned char c = (unsigned char)a[i];
            if (!host_char_ok(c) || (!allow_macros && (c == '{' || c == '}')))
                return "has an invalid character in its host";
        }
    }
    if (poff < alen) {
        /* ":port": digits (at most 65535), or a macro in postback code */
        const char *p = a + poff + 1;
        size_t plen = alen - poff - 1;
        unsigned long port = 0;
        if (a[poff] != ':') return "has an invalid character in its host";
        if (allow_macros && plen > 2 && p[0] == '{' && p[plen - 1] == '}') return NULL;
        if (allow_macros && plen > 6 && p[0] == '%' && p[1] == '7' && (p[2] == 'B' || p[2] == 'b') &&
            p[plen - 3] == '%' && p[plen - 2] == '7' && (p[plen - 1] == 'D' || p[plen - 1] == 'd'))
            return NULL;
        if (plen == 0 || plen > 5) return "has an invalid port";
        for (i = 0; i < plen; i++) {
            if (p[i] < '0' || p[i] > '9') return "has an invalid port";
            port = port * 10 + (unsigned long)(p[i] - '0');
        }
        if (port == 0 || port > 65535) return "has an invalid port";
    }
    return NULL;
}

const char *pb_check_code_url(const char *s, size_t n)
{
    return check_common(s, n, 1);
}

const char *pb_check_request_url(const char *s, size_t n)
{
    return check_common(s, n, 0);
}

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

int pb_url_is_loopback(const char *s, size_t n)
{
    size_t aoff, alen, hoff, hlen, poff, i;
    const char *h;
    if (!scheme_len(s, n)) return 0;
    authority(s, n, &aoff, &alen);
    host_of(s + aoff, alen, &hoff, &hlen, &poff);
    h = s + aoff + hoff;
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
