/* netpolicy.c - the destination policy: global unicast only, unless allowed.
 *
 * Every address is seen as 16 bytes: an IPv4 address as its IPv4-mapped
 * form ::ffff:a.b.c.d, an IPv4 network a.b.c.d/n as ::ffff:a.b.c.d/(96+n).
 * Matching an allowed network is then one prefix comparison, whatever the
 * families involved. */
#include "netpolicy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

struct pb_netpolicy {
    const pb_alloc *alloc;
    int allow_private;
    pb_cidr *nets; /* as parsed */
    size_t n, cap;
};

/* ---- small helpers ------------------------------------------------------ */

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void whyf(char *why, size_t whylen, const char *fmt, ...)
{
    va_list ap;
    if (!why || !whylen) return;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
}

/* 1 when the first bits of a and b are equal. */
static int prefix_eq(const unsigned char *a, const unsigned char *b, unsigned bits)
{
    unsigned whole = bits / 8, rest = bits % 8;
    if (memcmp(a, b, whole) != 0) return 0;
    if (rest) {
        unsigned char mask = (unsigned char)(0xff << (8 - rest));
        if ((a[whole] & mask) != (b[whole] & mask)) return 0;
    }
    return 1;
}

static const unsigned char v4mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

static void map4(const unsigned char *v4, unsigned char *out16)
{
    memcpy(out16, v4mapped_prefix, 12);
    memcpy(out16 + 12, v4, 4);
}

static int is_mapped(const unsigned char *a16)
{
    return memcmp(a16, v4mapped_prefix, 12) == 0;
}

/* ---- CIDR parsing ----------------------------------------------------------- */

int pb_cidr_parse(const char *s, size_t n, pb_cidr *out, char *why, size_t whylen)
{
    char text[INET6_ADDRSTRLEN + 8];
    const char *slash;
    size_t alen, i;
    unsigned long bits;
    unsigned maxbits;
    unsigned char addr[16];
    int family;
    pb_cidr c;

    slash = memchr(s, '/', n);
    alen = slash ? (size_t)(slash - s) : n;
    if (alen == 0) {
        whyf(why, whylen, "network \"%.*s\" has no address (expected e.g. 10.1.0.0/16)",
             n > 60 ? 60 : (int)n, s);
        return PB_EINVAL;
    }
    if (alen >= INET6_ADDRSTRLEN || memchr(s, '\0', alen)) {
        whyf(why, whylen, "network \"%.*s\" is not an IPv4 or IPv6 address with a /prefix",
             n > 60 ? 60 : (int)n, s);
        return PB_EINVAL;
    }
    memcpy(text, s, alen);
    text[alen] = '\0';
    memset(addr, 0, sizeof addr);
    if (inet_pton(AF_INET, text, addr) == 1) {
        family = AF_INET;
        maxbits = 32;
    } else if (inet_pton(AF_INET6, text, addr) == 1) {
        family = AF_INET6;
        maxbits = 128;
    } else {
        whyf(why, whylen, "network \"%.*s\" is not an IPv4 or IPv6 address with a /prefix",
             n > 60 ? 60 : (int)n, s);
        return PB_EINVAL;
    }
    bits = maxbits;
    if (slash) {
        const char *p = slash + 1;
        size_t plen = n - alen - 1;
        if (plen == 0 || plen > 3 || (plen > 1 && p[0] == '0')) goto badprefix;
        bits = 0;
        for (i = 0; i < plen; i++) {
            if (p[i] < '0' || p[i] > '9') goto badprefix;
            bits = bits * 10 + (unsigned long)(p[i] - '0');
        }
        if (bits > maxbits) goto badprefix;
    }
    memset(&c, 0, sizeof c);
    c.family = family;
    c.bits = (unsigned)bits;
    memcpy(c.addr, addr, family == AF_INET ? 4 : 16);
    /* host bits must be zero */
    {
        unsigned nbytes = family == AF_INET ? 4 : 16, k;
        for (k = 0; k < nbytes * 8; k++) {
            if (k < c.bits) continue;
            if (c.addr[k / 8] & (0x80 >> (k % 8))) {
                whyf(why, whylen,
                     "network \"%.*s\" has bits set after its /%u prefix (the network "
                     "address has them zero)",
                     n > 60 ? 60 : (int)n, s, c.bits);
                return PB_EINVAL;
            }
        }
    }
    /* ::ffff:a.b.c.d/96+ is the IPv4 network a.b.c.d/(n-96) */
    if (family == AF_INET6 && c.bits >= 96 && is_mapped(c.addr)) {
        unsigned char v4[4];
        memcpy(v4, c.addr + 12, 4);
        memset(c.addr, 0, sizeof c.addr);
        memcpy(c.addr, v4, 4);
        c.family = AF_INET;
        c.bits -= 96;
    }
    *out = c;
    return PB_OK;
badprefix:
    whyf(why, whylen, "network \"%.*s\" has a bad prefix length (0-%u after the /)",
         n > 60 ? 60 : (int)n, s, maxbits);
    return PB_EINVAL;
}

/* ---- the policy object ---------------------------------------------------- */

pb_netpolicy *pb_netpolicy_new(const pb_alloc *a)
{
    pb_netpolicy *p = pb_malloc(a, sizeof *p);
    if (!p) return NULL;
    memset(p, 0, sizeof *p);
    p->alloc = a;
    return p;
}

void pb_netpolicy_free(pb_netpolicy *p)
{
    if (!p) return;
    pb_free(p->alloc, p->nets, p->cap * sizeof *p->nets);
    pb_free(p->alloc, p, sizeof *p);
}

void pb_netpolicy_set_allow_private(pb_netpolicy *p, int allow)
{
    p->allow_private = allow != 0;
}

int pb_netpolicy_allow_private(const pb_netpolicy *p)
{
    return p->allow_private;
}

int pb_netpolicy_allow(pb_netpolicy *p, const char *cidr, size_t n, char *why, size_t whylen)
{
    pb_cidr c;
    int rc = pb_cidr_parse(cidr, n, &c, why, whylen);
    if (rc != PB_OK) return rc;
    if (p->n == p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 4;
        pb_cidr *nn;
        if (ncap > ((size_t)-1) / sizeof *nn) {
            whyf(why, whylen, "out of memory");
            return PB_ENOMEM;
        }
        nn = pb_realloc(p->alloc, p->nets, p->cap * sizeof *nn, ncap * sizeof *nn);
        if (!nn) {
            whyf(why, whylen, "out of memory");
            return PB_ENOMEM;
        }
        p->nets = nn;
        p->cap = ncap;
    }
    p->nets[p->n++] = c;
    return PB_OK;
}

size_t pb_netpolicy_count(const pb_netpolicy *p)
{
    return p->n;
}

const pb_cidr *pb_netpolicy_network(const pb_netpolicy *p, size_t i)
{
    return i < p->n ? &p->nets[i] : NULL;
}

/* ---- the ranges ------------------------------------------------------------------ */

typedef struct range {
    unsigned char net[16]; /* IPv4 ranges in their mapped form */
    unsigned bits;         /* of the 128 */
    const char *text;      /* the range as people write it */
    const char *what;      /* "a loopback address" */
} range;

#define V4(a, b, c, d) { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d }

/* Most specific first: the first match names the range. */
static const range v4_ranges[] = {
    { V4(255, 255, 255, 255), 128, "255.255.255.255/32", "the broadcast address" },
    { V4(0, 0, 0, 0), 104, "0.0.0.0/8", "a \"this network\" address" },
    { V4(10, 0, 0, 0), 104, "10.0.0.0/8", "a private address" },
    { V4(100, 64, 0, 0), 106, "100.64.0.0/10", "a shared (carrier-grade NAT) address" },
    { V4(127, 0, 0, 0), 104, "127.0.0.0/8", "a loopback address" },
    { V4(169, 254, 0, 0), 112, "169.254.0.0/16", "a link-local address" },
    { V4(172, 16, 0, 0), 108, "172.16.0.0/12", "a private address" },
    { V4(192, 0, 0, 0), 120, "192.0.0.0/24", "an IETF protocol assignment" },
    { V4(192, 0, 2, 0), 120, "192.0.2.0/24", "a documentation address" },
    { V4(192, 88, 99, 0), 120, "192.88.99.0/24", "a 6to4 relay address (deprecated)" },
    { V4(192, 168, 0, 0), 112, "192.168.0.0/16", "a private address" },
    { V4(198, 18, 0, 0), 111, "198.18.0.0/15", "a benchmarking address" },
    { V4(198, 51, 100, 0), 120, "198.51.100.0/24", "a documentation address" },
    { V4(203, 0, 113, 0), 120, "203.0.113.0/24", "a documentation address" },
    { V4(224, 0, 0, 0), 100, "224.0.0.0/4", "a multicast address" },
    { V4(240, 0, 0, 0), 100, "240.0.0.0/4", "a reserved address" },
};

static const range v6_ranges[] = {
    { { 0 }, 128, "::/128", "the unspecified address" },
    { { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 }, 128, "::1/128", "the loopback address" },
    { { 0 }, 96, "::/96", "an IPv4-compatible address (deprecated)" },
    { { 0, 0x64, 0xff, 0x9b, 0, 1 }, 48, "64:ff9b:1::/48", "a local-use NAT64 address" },
    { { 0x01, 0x00 }, 64, "100::/64", "a discard-only address" },
    { { 0x20, 0x01, 0x00, 0x02, 0, 0 }, 48, "2001:2::/48", "a benchmarking address" },
    { { 0x20, 0x01, 0x00, 0x10 }, 28, "2001:10::/28", "an ORCHID address (deprecated)" },
    { { 0x20, 0x01, 0x0d, 0xb8 }, 32, "2001:db8::/32", "a documentation address" },
    { { 0x3f, 0xff }, 20, "3fff::/20", "a documentation address" },
    { { 0x5f, 0x00 }, 16, "5f00::/16", "an SRv6 segment identifier" },
    { { 0xfc }, 7, "fc00::/7", "a unique local (private) address" },
    { { 0xfe, 0x80 }, 10, "fe80::/10", "a link-local address" },
    { { 0xfe, 0xc0 }, 10, "fec0::/10", "a site-local address (deprecated)" },
    { { 0xff }, 8, "ff00::/8", "a multicast address" },
};

static const unsigned char global_unicast[16] = { 0x20 }; /* 2000::/3 */

/* IPv6 forms that carry an IPv4 address. */
enum { EMB_NONE, EMB_MAPPED, EMB_NAT64, EMB_6TO4, EMB_TEREDO };

static const char *const emb_names[] = { "", "IPv4-mapped", "NAT64 for", "6to4 for",
                                         "Teredo for client" };

/* Finds the IPv4 address an IPv6 address carries; returns its EMB_ kind. */
static int embedded_v4(const unsigned char *a, unsigned char *v4)
{
    static const unsigned char nat64[12] = { 0, 0x64, 0xff, 0x9b };
    int k;
    if (is_mapped(a)) {
        memcpy(v4, a + 12, 4);
        return EMB_MAPPED;
    }
    if (memcmp(a, nat64, 12) == 0) {
        memcpy(v4, a + 12, 4);
        return EMB_NAT64;
    }
    if (a[0] == 0x20 && a[1] == 0x02) {
        memcpy(v4, a + 2, 4);
        return EMB_6TO4;
    }
    if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0 && a[3] == 0) {
        for (k = 0; k < 4; k++) v4[k] = (unsigned char)(a[12 + k] ^ 0xff);
        return EMB_TEREDO;
    }
    return EMB_NONE;
}

static const range *find_range(const unsigned char *a16, const range *t, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (prefix_eq(a16, t[i].net, t[i].bits)) return &t[i];
    return NULL;
}

static int allowed_by(const pb_netpolicy *p, const unsigned char *a16)
{
    size_t i;
    for (i = 0; i < p->n; i++) {
        const pb_cidr *c = &p->nets[i];
        unsigned char net[16];
        unsigned bits = c->bits;
        if (c->family == AF_INET) {
            map4(c->addr, net);
            bits += 96;
        } else {
            memcpy(net, c->addr, 16);
        }
        if (prefix_eq(a16, net, bits)) return 1;
    }
    return 0;
}

/* The verdict for an address in its 16-byte form; v4only = it came as an
 * IPv4 address (not as IPv4-mapped IPv6); shown = how to name it. */
static int check16(const pb_netpolicy *p, const unsigned char *a16, int v4only, const char *shown,
                   char *why, size_t whylen)
{
    unsigned char v4[4], m[16];
    const range *r;
    int emb;
    if (p->allow_private) return PB_NET_ALLOWED;
    if (allowed_by(p, a16)) return PB_NET_ALLOWED;
    if (v4only) {
        r = find_range(a16, v4_ranges, sizeof v4_ranges / sizeof v4_ranges[0]);
        if (!r) return PB_NET_ALLOWED;
        whyf(why, whylen, "%s is %s (%s)", shown, r->what, r->text);
        return PB_NET_REFUSED;
    }
    emb = embedded_v4(a16, v4);
    if (emb != EMB_NONE) {
        char v4text[INET_ADDRSTRLEN];
        map4(v4, m);
        if (allowed_by(p, m)) return PB_NET_ALLOWED;
        r = find_range(m, v4_ranges, sizeof v4_ranges / sizeof v4_ranges[0]);
        if (!r) return PB_NET_ALLOWED;
        if (!inet_ntop(AF_INET, v4, v4text, sizeof v4text)) v4text[0] = '\0';
        whyf(why, whylen, "%s is %s %s, %s (%s)", shown, emb_names[emb], v4text, r->what,
             r->text);
        return PB_NET_REFUSED;
    }
    r = find_range(a16, v6_ranges, sizeof v6_ranges / sizeof v6_ranges[0]);
    if (r) {
        whyf(why, whylen, "%s is %s (%s)", shown, r->what, r->text);
        return PB_NET_REFUSED;
    }
    if (!prefix_eq(a16, global_unicast, 3)) {
        whyf(why, whylen, "%s is not a global unicast address (outside 2000::/3)", shown);
        return PB_NET_REFUSED;
    }
    return PB_NET_ALLOWED;
}

int pb_netpolicy_check_raw(const pb_netpolicy *p, int family, const unsigned char *addr,
                           char *why, size_t whylen)
{
    unsigned char a16[16];
    char shown[INET6_ADDRSTRLEN];
    if (family == AF_INET) {
        map4(addr, a16);
        if (!inet_ntop(AF_INET, addr, shown, sizeof shown)) shown[0] = '\0';
    } else if (family == AF_INET6) {
        memcpy(a16, addr, 16);
        if (!inet_ntop(AF_INET6, addr, shown, sizeof shown)) shown[0] = '\0';
    } else {
        whyf(why, whylen, "the address is not an IPv4 or IPv6 address (family %d)", family);
        return PB_NET_REFUSED;
    }
    return check16(p, a16, family == AF_INET, shown, why, whylen);
}

int pb_netpolicy_check(const pb_netpolicy *p, const struct sockaddr *sa, socklen_t len, char *why,
                       size_t whylen)
{
    char shown[PB_NETADDR_LEN];
    unsigned char a16[16];
    if (!sa || len < (socklen_t)sizeof sa->sa_family) {
        whyf(why, whylen, "the address is missing");
        return PB_NET_REFUSED;
    }
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in sin;
        memcpy(&sin, sa, sizeof sin);
        map4((const unsigned char *)&sin.sin_addr, a16);
    } else if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, sa, sizeof sin6);
        memcpy(a16, &sin6.sin6_addr, 16);
    } else {
        whyf(why, whylen, "the address is not an IPv4 or IPv6 address (family %d, %u bytes)",
             (int)sa->sa_family, (unsigned)len);
        return PB_NET_REFUSED;
    }
    pb_netaddr_format(sa, len, shown, sizeof shown);
    return check16(p, a16, sa->sa_family == AF_INET, shown, why, whylen);
}

int pb_netpolicy_check_text(const pb_netpolicy *p, const char *ip, size_t n, char *why,
                            size_t whylen)
{
    char text[INET6_ADDRSTRLEN];
    unsigned char a[16];
    if (n == 0 || n >= sizeof text || memchr(ip, '\0', n)) goto bad;
    memcpy(text, ip, n);
    text[n] = '\0';
    if (inet_pton(AF_INET, text, a) == 1) return pb_netpolicy_check_raw(p, AF_INET, a, why, whylen);
    if (inet_pton(AF_INET6, text, a) == 1)
        return pb_netpolicy_check_raw(p, AF_INET6, a, why, whylen);
bad:
    whyf(why, whylen, "\"%.*s\" is not an IP address", n > 64 ? 64 : (int)n, ip);
    return PB_NET_REFUSED;
}

char *pb_netaddr_format(const struct sockaddr *sa, socklen_t len, char *out, size_t outlen)
{
    char text[INET6_ADDRSTRLEN];
    if (!out || !outlen) return out;
    out[0] = '\0';
    if (sa && len >= (socklen_t)sizeof(struct sockaddr_in) && sa->sa_family == AF_INET) {
        struct sockaddr_in sin;
        memcpy(&sin, sa, sizeof sin);
        if (inet_ntop(AF_INET, &sin.sin_addr, text, sizeof text)) {
            snprintf(out, outlen, "%s", text);
            return out;
        }
    } else if (sa && len >= (socklen_t)sizeof(struct sockaddr_in6) && sa->sa_family == AF_INET6) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, sa, sizeof sin6);
        if (inet_ntop(AF_INET6, &sin6.sin6_addr, text, sizeof text)) {
            if (sin6.sin6_scope_id)
                snprintf(out, outlen, "%s%%%lu", text, (unsigned long)sin6.sin6_scope_id);
            else
                snprintf(out, outlen, "%s", text);
            return out;
        }
    }
    snprintf(out, outlen, "(not an IP address)");
    return out;
}
