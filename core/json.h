/* json.h - the pieces of JSON text postback writes itself: exact numbers and
 * escaped strings.
 *
 * Numbers: an integer is written in plain decimal digits, never in exponent
 * form, and so is a double with an integral value up to 2^53 in magnitude
 * (every integer there is exact in a double, so 2^53 - 1 goes out and comes
 * back as the same digits through any JSON reader). Other doubles get the
 * shortest of %.15g, %.16g and %.17g that reads back as the same double, with
 * '.' as the decimal point whatever the C locale says. NaN and infinities
 * have no JSON form and are refused.
 *
 * Strings: '"', '\\' and the control bytes 0x00-0x1F and 0x7F are escaped
 * (\b \f \n \r \t, else \u00XX); every other byte is copied as it is, so
 * UTF-8 stays UTF-8 and '/' is not escaped. */
#ifndef PB_JSON_H
#define PB_JSON_H

#include <stddef.h>
#include "buf.h"

/* Bytes a formatted number can take, the NUL included. */
#define PB_JSON_NUMBER_MAX 32
/* 2^53: integral doubles up to this magnitude are written as integers. */
#define PB_JSON_EXACT_MAX 9007199254740992.0

/* Returned by pb_json_double for NaN and infinities. */
enum { PB_JSON_NONFINITE = -10 };

/* Writes v in decimal (LLONG_MIN included) and a NUL into dst, which has
 * PB_JSON_NUMBER_MAX bytes; returns the length. */
size_t pb_json_format_int(char *dst, long long v);
/* Writes d as a JSON number and a NUL into dst (PB_JSON_NUMBER_MAX bytes);
 * returns the length, or 0 when d is NaN or infinite. */
size_t pb_json_format_double(char *dst, double d);

/* Append a number: PB_OK, PB_ENOMEM, PB_ELIMIT (buffer unchanged then), or
 * PB_JSON_NONFINITE for a NaN or an infinity. */
int pb_json_int(pb_buf *b, long long v);
int pb_json_double(pb_buf *b, double d);

/* Length of the quoted, escaped form of s (the quotes included). */
size_t pb_json_string_len(const char *s, size_t n);
/* Appends it: PB_OK, PB_ENOMEM or PB_ELIMIT (buffer unchanged then). */
int pb_json_string(pb_buf *b, const char *s, size_t n);

#endif
