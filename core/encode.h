/* encode.h - percent-encoding (RFC 3986). */
#ifndef PB_ENCODE_H
#define PB_ENCODE_H

#include <stddef.h>
#include "buf.h"

/* 1 for the RFC 3986 unreserved bytes A-Z a-z 0-9 - . _ ~, else 0. */
int pb_is_unreserved(unsigned char c);
/* Appends s, every byte outside the unreserved set written as %XX (uppercase). */
int pb_url_encode(pb_buf *out, const char *s, size_t n);
/* Writes the encoding of s into dst, which has room for pb_url_encoded_len
 * bytes (no NUL added); returns the bytes written. */
size_t pb_url_encode_into(char *dst, const char *s, size_t n);
/* Length pb_url_encode would append. */
size_t pb_url_encoded_len(const char *s, size_t n);
/* Value 0-15 of a hex digit, or -1. */
int pb_hexval(unsigned char c);

#endif
