/* url.h - checks on URLs: postback code of types 1 and 2, and request URLs.
 *
 * The checks accept only what libcurl reads the same way (spec/c/url_diff.c
 * compares them with curl_url() on thousands of generated URLs), and
 * pb_url_to_ascii gives the exact URL to hand to libcurl, so that what is
 * checked, what is reported and what reaches the wire are one URL. */
#ifndef PB_URL_H
#define PB_URL_H

#include <stddef.h>

#include "buf.h"

#ifndef PB_EINVAL
#define PB_EINVAL (-3)
#endif

/* Flags of the _ex checks and of pb_url_to_ascii. */
#define PB_URL_ALLOW_USERINFO 0x1u /* accept "user:password@" before the host */

/* Checks that s is an absolute http/https URL with a host and no whitespace
 * or control bytes. Macros ({name}, %7Bname%7D) may stand anywhere, the host
 * and port included, as whole macros. The host holds no other percent sign;
 * an internationalised host must be a valid IDN (labels with a macro are
 * checked when rendered). User info is refused unless flags allow it.
 * Returns NULL when fine, else a reason ("has no host", ...). */
const char *pb_check_code_url_ex(const char *s, size_t n, unsigned flags);
const char *pb_check_code_url(const char *s, size_t n); /* flags 0 */

/* Checks a URL about to be requested: an absolute http/https URL with a host
 * and no whitespace or control bytes (CR, LF and NUL among them), no
 * percent sign or brace in its host, an internationalised host only when it
 * converts to ASCII (IDNA 2008 with UTS 46 mapping, as libcurl does with
 * libidn2, whatever the locale), no user info unless flags allow it.
 * Returns NULL when fine, else a reason. */
const char *pb_check_request_url_ex(const char *s, size_t n, unsigned flags);
const char *pb_check_request_url(const char *s, size_t n); /* flags 0 */

/* The URL as it goes on the wire: the host in ASCII (an IDN in punycode,
 * IPv4 written as a.b.c.d whatever form it had: 2130706433, 0177.0.0.1,
 * 0x7f.1, 127.1 -- as libcurl reads them --, IPv6 in its RFC 5952 form) and
 * every byte >= 0x80 outside the host percent-encoded (%XX, upper case).
 * Everything else is kept byte for byte: dot segments, an empty query, the
 * case of the scheme and host.
 * Returns 0 when s already is that URL (nothing appended), 1 when the
 * converted URL was appended to out, PB_EINVAL with a reason in why when
 * pb_check_request_url_ex refuses s (or the IDN does not convert), PB_ENOMEM
 * or PB_ELIMIT (out is then as it was). */
int pb_url_to_ascii(const char *s, size_t n, unsigned flags, pb_buf *out, char *why,
                    size_t whylen);

/* 1 when s is, at a glance, a request URL pb_check_request_url accepts and
 * pb_url_to_ascii keeps as it is: http(s), a host that is a name (a label
 * starts with a letter) or a dotted quad in its canonical form, made of
 * letters, digits and . - _ ~ only, an optional port, and no byte outside
 * 0x21-0x7e. 0 means "not sure": use the full checks. One pass, for the
 * firing hot path. */
int pb_url_plain(const char *s, size_t n);

/* 1 when the host of an http(s) URL is loopback (localhost, 127.0.0.0/8, [::1]). */
int pb_url_is_loopback(const char *s, size_t n);
/* 1 when the URL's scheme is https (case-insensitive). */
int pb_url_is_https(const char *s, size_t n);
/* Where the host of an http(s) URL is, as the checks above read it: *off
 * and *len (an IPv6 literal with its brackets; empty when there is no
 * host). Returns 0 when s is not an http(s) URL. */
int pb_url_host(const char *s, size_t n, size_t *off, size_t *len);

/* 1 when host (n bytes, as pb_url_host gives it) is in the no_proxy list
 * (NUL-terminated), read as libcurl reads the no_proxy environment: "*"
 * alone is every host; entries are separated by commas or blanks; a name
 * matches itself or a domain it is in ("example.com" and ".example.com"
 * both cover www.example.com), case ignored, a trailing dot ignored; an
 * IP address matches an address entry, whole or with "/bits". */
int pb_url_no_proxy(const char *list, const char *host, size_t n);

/* Index of the first CR, LF or NUL byte in s, or -1. */
long pb_find_crlf_nul(const char *s, size_t n);

#endif
