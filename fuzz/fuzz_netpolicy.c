/* fuzz_netpolicy.c - libFuzzer harness for core/netpolicy.c.
 *
 * Input: a first byte of flags, then up to 4 CIDRs separated by '\n', then
 * (after a '\t') 16 or 4 address bytes; or the whole input as a text
 * address when no '\t'. Checks that nothing crashes or reads past the
 * input, and that:
 *   - a parsed CIDR has its family's prefix range and no host bits;
 *   - an IPv4 address and its IPv4-mapped IPv6 form get the same verdict;
 *   - allow_private allows everything; an address inside an allowed network
 *     is allowed; adding networks never turns an allowed address down;
 *   - a refusal reason starts with the address as inet_ntop writes it;
 *   - text addresses get the verdict of their parsed bytes;
 *   - every allocation failure leaves the policy usable and unchanged.
 *
 *   make build/fuzz/fuzz_netpolicy && build/fuzz/fuzz_netpolicy fuzz/seeds/fuzz_netpolicy */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/netpolicy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_NAME "fuzz_netpolicy"
#include "fuzz/fuzz_common.h"

static int check4(const pb_netpolicy *p, const unsigned char *a4, char *why, size_t n)
{
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    memcpy(&sin.sin_addr, a4, 4);
    return pb_netpolicy_check(p, (const struct sockaddr *)&sin, sizeof sin, why, n);
}

static int check6(const pb_netpolicy *p, const unsigned char *a16, char *why, size_t n)
{
    struct sockaddr_in6 sin6;
    memset(&sin6, 0, sizeof sin6);
    sin6.sin6_family = AF_INET6;
    memcpy(&sin6.sin6_addr, a16, 16);
    return pb_netpolicy_check(p, (const struct sockaddr *)&sin6, sizeof sin6, why, n);
}

static int in_cidr(const pb_cidr *c, int family, const unsigned char *a)
{
    unsigned k;
    if (c->family != family) return 0;
    for (k = 0; k < c->bits; k++)
        if ((a[k / 8] ^ c->addr[k / 8]) & (0x80 >> (k % 8))) return 0;
    return 1;
}

static void verdicts(const pb_netpolicy *p, const unsigned char *addr, size_t alen)
{
    char why[PB_NETPOLICY_WHY], text[INET6_ADDRSTRLEN];
    unsigned char m[16];
    int v;
    size_t i;
    if (alen >= 16) {
        v = check6(p, addr, why, sizeof why);
        if (v != pb_netpolicy_check_raw(p, AF_INET6, addr, NULL, 0)) FAIL("raw and sockaddr disagree");
        inet_ntop(AF_INET6, addr, text, sizeof text);
        if (v == PB_NET_REFUSED && strncmp(why, text, strlen(text)) != 0)
            FAIL("reason %s does not start with %s", why, text);
        if (pb_netpolicy_check_text(p, text, strlen(text), NULL, 0) != v) FAIL("text verdict differs for %s", text);
        for (i = 0; i < pb_netpolicy_count(p); i++)
            if (in_cidr(pb_netpolicy_network(p, i), AF_INET6, addr) && v != PB_NET_ALLOWED)
                FAIL("%s is in an allowed network but refused", text);
        if (pb_netpolicy_allow_private(p) && v != PB_NET_ALLOWED) FAIL("allow_private refused %s", text);
    }
    if (alen >= 4) {
        v = check4(p, addr, why, sizeof why);
        inet_ntop(AF_INET, addr, text, sizeof text);
        if (v == PB_NET_REFUSED && strncmp(why, text, strlen(text)) != 0)
            FAIL("reason %s does not start with %s", why, text);
        memset(m, 0, 10);
        m[10] = m[11] = 0xff;
        memcpy(m + 12, addr, 4);
        if (check6(p, m, NULL, 0) != v) FAIL("%s and ::ffff:%s disagree", text, text);
        if (pb_netpolicy_check_text(p, text, strlen(text), NULL, 0) != v) FAIL("text verdict differs for %s", text);
        for (i = 0; i < pb_netpolicy_count(p); i++)
            if (in_cidr(pb_netpolicy_network(p, i), AF_INET, addr) && v != PB_NET_ALLOWED)
                FAIL("%s is in an allowed network but refused", text);
        if (pb_netpolicy_allow_private(p) && v != PB_NET_ALLOWED) FAIL("allow_private refused %s", text);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    const uint8_t *tab;
    size_t cidrs_len, pos, alen;
    const unsigned char *addr;
    unsigned char before[16];
    pb_netpolicy *p, *bare;
    track tr;
    pb_alloc a;
    int flags, k, before_v4 = 0, before_v6 = 0;

    if (size == 0) return 0;
    flags = data[0];
    s++;
    size--;
    tab = memchr(s, '\t', size);
    if (!tab) {
        /* the whole input as a text address, with the default policy */
        char why[PB_NETPOLICY_WHY];
        bare = pb_netpolicy_new(NULL);
        if (!bare) return 0;
        (void)pb_netpolicy_check_text(bare, s, size, why, sizeof why);
        {
            pb_cidr c;
            if (pb_cidr_parse(s, size, &c, why, sizeof why) == PB_OK) {
                unsigned max = c.family == AF_INET ? 32 : 128, b;
                if (c.family != AF_INET && c.family != AF_INET6) FAIL("family %d", c.family);
                if (c.bits > max) FAIL("prefix %u", c.bits);
                for (b = c.bits; b < max; b++)
                    if (c.addr[b / 8] & (0x80 >> (b % 8))) FAIL("host bit %u set", b);
            } else if (!why[0]) {
                FAIL("a refused CIDR without a reason");
            }
        }
        pb_netpolicy_free(bare);
        return 0;
    }
    cidrs_len = (size_t)((const char *)tab - s);
    addr = (const unsigned char *)tab + 1;
    alen = size - cidrs_len - 1;
    if (alen > 16) alen = 16;
    memset(before, 0, sizeof before);
    memcpy(before, addr, alen);

    /* the verdicts with no networks allowed */
    bare = pb_netpolicy_new(NULL);
    if (!bare) return 0;
    if (alen >= 4) before_v4 = check4(bare, before, NULL, 0);
    if (alen >= 16) before_v6 = check6(bare, before, NULL, 0);
    pb_netpolicy_free(bare);

    /* the same policy built with each allocation failing in turn */
    for (k = 0; k < 4; k++) {
        size_t count_ok;
        memset(&tr, 0, sizeof tr);
        tr.fail_at = k; /* 0 = never */
        a.fn = track_fn;
        a.ud = &tr;
        p = pb_netpolicy_new(&a);
        if (!p) {
            if (k != 1) FAIL("pb_netpolicy_new failed without an allocation failure");
            continue;
        }
        pb_netpolicy_set_allow_private(p, flags & 1);
        pos = 0;
        while (pos < cidrs_len) {
            const char *nl = memchr(s + pos, '\n', cidrs_len - pos);
            size_t len = nl ? (size_t)(nl - (s + pos)) : cidrs_len - pos;
            char why[PB_NETPOLICY_WHY];
            int rc;
            count_ok = pb_netpolicy_count(p);
            why[0] = '\0';
            rc = pb_netpolicy_allow(p, s + pos, len, why, sizeof why);
            if (rc != PB_OK && !why[0]) FAIL("refused without a reason");
            if (rc != PB_OK && pb_netpolicy_count(p) != count_ok) FAIL("a failed allow changed the policy");
            if (rc == PB_ENOMEM && !tr.failed) FAIL("PB_ENOMEM without an allocation failure");
            pos += len + 1;
        }
        verdicts(p, before, alen);
        /* allowing networks only ever lets more through */
        if (alen >= 4 && before_v4 == PB_NET_ALLOWED && check4(p, before, NULL, 0) != PB_NET_ALLOWED)
            FAIL("an allowed network refused an address allowed by default");
        if (alen >= 16 && before_v6 == PB_NET_ALLOWED && check6(p, before, NULL, 0) != PB_NET_ALLOWED)
            FAIL("an allowed network refused an address allowed by default");
        pb_netpolicy_free(p);
    }
    return 0;
}
