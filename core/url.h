/* url.h - checks on URLs: postback code of types 1 and 2, and request URLs. */
#ifndef PB_URL_H
#define PB_URL_H

#include <stddef.h>

/* Checks that s is an absolute http/https URL with a host and no whitespace
 * or control bytes. Macros ({name}, %7Bname%7D) may stand anywhere, the host
 * included. Returns NULL when fine, else a reason ("has no host", ...). */
const char *pb_check_code_url(const char *s, size_t n);

/* Checks a URL about to be requested: an absolute http/https URL with a host
 * and no whitespace or control bytes (CR, LF and NUL among them). Returns
 * NULL when fine, else a reason. */
const char *pb_check_request_url(const char *s, size_t n);

/* 1 when the host of an http(s) URL is loopback (localhost, 127.0.0.0/8, [::1]). */
int pb_url_is_loopback(const char *s, size_t n);
/* 1 when the URL's scheme is https (case-insensitive). */
int pb_url_is_https(const char *s, size_t n);

/* Index of the first CR, LF or NUL byte in s, or -1. */
long pb_find_crlf_nul(const char *s, size_t n);

#endif
