/* encode.c - percent-encoding that keeps exactly the RFC 3986 unreserved set. */
#include "encode.h"

static const char hexdigits[] = "0123456789ABCDEF";

int pb_is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
}

size_t pb_url_encoded_len(const char *s, size_t n)
{
    size_t i, len = 0;
    for (i = 0; i < n; i++)
        len += pb_is_unreserved((unsigned char)s[i]) ? 1 : 3;
    return len;
}

size_t pb_url_encode_into(char *dst, const char *s, size_t n)
{
    char *p = dst;
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (pb_is_unreserved(c)) {
            *p++ = (char)c;
        } else {
            *p++ = '%';
            *p++ = hexdigits[c >> 4];
            *p++ = hexdigits[c & 15];
        }
    }
    return (size_t)(p - dst);
}

int pb_url_encode(pb_buf *out, const char *s, size_t n)
{
    int rc;
    /* Short values (the common case): room for the worst, one pass. */
    if (n <= 256) {
        if ((rc = pb_buf_reserve(out, 3 * n)) == PB_OK) {
            out->len += pb_url_encode_into(out->data + out->len, s, n);
            out->data[out->len] = '\0';
            return PB_OK;
        }
        if (rc != PB_ELIMIT) return rc;
    }
    {
        size_t need = pb_url_encoded_len(s, n);
        if (need == n) return pb_buf_append(out, s, n);
        if ((rc = pb_buf_reserve(out, need)) != PB_OK) return rc;
        out->len += pb_url_encode_into(out->data + out->len, s, n);
        out->data[out->len] = '\0';
        return PB_OK;
    }
}

int pb_hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

