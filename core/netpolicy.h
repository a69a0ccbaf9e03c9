/* netpolicy.h - which addresses a postback may connect to.
 *
 * Postback URLs are typed by affiliates, so where they lead is untrusted. The
 * policy refuses every address that is not global unicast: loopback, private
 * and shared ranges, link-local, documentation and benchmarking ranges,
 * multicast, reserved space, and IPv4 hidden in IPv6 (IPv4-mapped, NAT64,
 * 6to4, Teredo), which is checked as the IPv4 address it carries. It is
 * meant to run on each resolved address at connect time (libcurl's
 * CURLOPT_OPENSOCKETFUNCTION, or before a cosocket connects), so neither DNS
 * rebinding nor a redirect gets around it.
 *
 * Refused ranges (the reason names the one that matched):
 *   IPv4: 0/8, 10/8, 100.64/10, 127/8, 169.254/16, 172.16/12, 192.0.0/24,
 *         192.0.2/24, 192.88.99/24, 192.168/16, 198.18/15, 198.51.100/24,
 *         203.0.113/24, 224/4 and 240/4 (255.255.255.255 included).
 *   IPv6: everything outside 2000::/3, the global unicast space, which holds
 *         ::, ::1, ::/96 (IPv4-compatible, deprecated), 64:ff9b:1::/48
 *         (local-use NAT64), 100::/64, fc00::/7, fe80::/10, fec0::/10 and
 *         ff00::/8; inside it 2001:2::/48 (benchmarking), 2001:10::/28
 *         (ORCHID), 2001:db8::/32 and 3fff::/20 (documentation) and
 *         5f00::/16 (SRv6 SIDs).
 *   Checked as the IPv4 they carry: ::ffff:0:0/96 (IPv4-mapped, the last 32
 *         bits), 64:ff9b::/96 (NAT64, the last 32 bits), 2002::/16 (6to4,
 *         bits 16-47) and 2001::/32 (Teredo: the client, the last 32 bits
 *         with every bit flipped).
 *   ::/96 and 64:ff9b:1::/48 are refused whole rather than decoded: the first
 *   is deprecated (RFC 4291) and no host is reached through it, the second
 *   is a network's own translator, where the IPv4 position depends on the
 *   prefix length it chose.
 *
 * An allowed network (a CIDR) lets matching addresses through even when they
 * are in a refused range; the IPv4 carried by an IPv6 address is matched
 * against IPv4 networks too. allow_private turns the check off.
 *
 * The policy object is immutable once set up and holds no global state, so
 * one policy may be checked from any number of threads at once. */
#ifndef PB_NETPOLICY_H
#define PB_NETPOLICY_H

#include <stddef.h>
#include <sys/socket.h>

#include "alloc.h"
#include "buf.h"

#ifndef PB_EINVAL
#define PB_EINVAL (-3)
#endif

/* A network: family (AF_INET or AF_INET6), address bytes (4 or 16 used,
 * host bits zero) and prefix length. */
typedef struct pb_cidr {
    int family;
    unsigned char addr[16];
    unsigned bits;
} pb_cidr;

typedef struct pb_netpolicy pb_netpolicy;

/* Room for any reason written by this module. */
#define PB_NETPOLICY_WHY 160
/* Room for a formatted address: an IPv6 literal with a scope id. */
#define PB_NETADDR_LEN 64

/* Parses "a.b.c.d/n" (n 0-32) or "x:...:y/n" (n 0-128); without "/n" the
 * whole address (/32, /128). Host bits set below the prefix are refused
 * ("10.1.2.3/8" is a mistake for 10.0.0.0/8). An IPv6 network inside
 * ::ffff:0:0/96 with n >= 96 is stored as the IPv4 network it covers.
 * Returns PB_OK, or PB_EINVAL with a reason in why. */
int pb_cidr_parse(const char *s, size_t n, pb_cidr *out, char *why, size_t whylen);

/* A new policy: allow_private off, no allowed networks. NULL when out of
 * memory. a NULL = malloc. */
pb_netpolicy *pb_netpolicy_new(const pb_alloc *a);
void pb_netpolicy_free(pb_netpolicy *p);

/* allow != 0 turns the check off: every IP address is allowed. */
void pb_netpolicy_set_allow_private(pb_netpolicy *p, int allow);
int pb_netpolicy_allow_private(const pb_netpolicy *p);

/* Adds an allowed network, parsed by pb_cidr_parse. Returns PB_OK,
 * PB_EINVAL (why says what is wrong; the policy is unchanged) or
 * PB_ENOMEM (unchanged too). */
int pb_netpolicy_allow(pb_netpolicy *p, const char *cidr, size_t n, char *why, size_t whylen);
/* How many networks are allowed, and the i-th of them. */
size_t pb_netpolicy_count(const pb_netpolicy *p);
const pb_cidr *pb_netpolicy_network(const pb_netpolicy *p, size_t i);

/* Verdicts of the checks below. */
enum { PB_NET_ALLOWED = 0, PB_NET_REFUSED = 1 };

/* Checks the address a socket is about to connect to (AF_INET or AF_INET6;
 * the port is ignored). Returns PB_NET_ALLOWED, or PB_NET_REFUSED with a
 * reason naming the address and its range in why, e.g.
 *   "127.0.0.1 is a loopback address (127.0.0.0/8)"
 *   "::ffff:10.0.0.1 is IPv4-mapped 10.0.0.1, a private address (10.0.0.0/8)"
 * Any other family, or a len too short for the family, is refused. */
int pb_netpolicy_check(const pb_netpolicy *p, const struct sockaddr *sa, socklen_t len, char *why,
                       size_t whylen);

/* The same for a raw address (4 or 16 bytes, network order). */
int pb_netpolicy_check_raw(const pb_netpolicy *p, int family, const unsigned char *addr,
                           char *why, size_t whylen);

/* The same for a numeric address as text ("10.0.0.1", "::1"; IPv6 without
 * brackets or zone), as DNS answers give it. Text that is not an address is
 * refused ("... is not an IP address"). */
int pb_netpolicy_check_text(const pb_netpolicy *p, const char *ip, size_t n, char *why,
                            size_t whylen);

/* Formats the address of sa for messages: "192.0.2.1", "2001:db8::1",
 * "fe80::1%2" (IPv6 with a scope id); "(not an IP address)" otherwise.
 * Always NUL-terminates when outlen > 0; returns out. */
char *pb_netaddr_format(const struct sockaddr *sa, socklen_t len, char *out, size_t outlen);

#endif
