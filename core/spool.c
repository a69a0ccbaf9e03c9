/* spool.c - append-only checksummed record files. */
#include "spool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* CRC-32 (IEEE 802.3, reflected, poly 0xEDB88320), bitwise: no tables to
 * initialise, so no shared mutable state. */
uint32_t pb_crc32(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint32_t crc = 0xFFFFFFFFu;
    size_t i;
    int k;
    for (i = 0; i < len; i++) {
        crc ^= p[i];
        for (k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

int pb_spool_open(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Writes one record with a single write(2) so readers never see two
 * records interleaved. */
static int write_record(int fd, const char *payload, size_t len)
{
    char stack[4096], *line = stack;
    int rc;
    if (memchr(payload, '\n', len)) {
        errno = EINVAL;
        return -1;
    }
    if (len > sizeof stack - 10) {
        line = malloc(len + 10);
        if (!line) return -1;
    }
    snprintf(line, 10, "%08lx", (unsigned long)pb_crc32(payload, len));
    line[8] = ' ';
    memcpy(line + 9, payload, len);
    line[9 + len] = '\n';
    rc = write_all(fd, line, len + 10);
    if (line != stack) free(line);
    return rc;
}

int pb_spool_append(int fd, const char *payload, size_t len)
{
    return write_record(fd, payload, len);
}

int pb_spool_sync(int fd)
{
#if defined(__APPLE__)
    return fsync(fd);
#else
    return fdatasync(fd);
#endif
}

void pb_spool_close(int fd)
{
    if (fd >= 0) close(fd);
}

long pb_spool_check(const char *line, size_t len)
{
    uint32_t want = 0;
    size_t i;
    if (len < 9 || line[8] != ' ') return -1;
    for (i = 0; i < 8; i++) {
        char c = line[i];
        int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
        if (v < 0) return -1;
        want = (want << 4) | (uint32_t)v;
    }
    return pb_crc32(line + 9, len - 9) == want ? 9 : -1;
}

int pb_spool_rewrite(const char *path, const char *const *payloads, const size_t *lens, size_t n)
{
    size_t plen = strlen(path), i;
    char *tmp = malloc(plen + 5), *dir;
    int fd, dfd, rc = -1;
    if (!tmp) return -1;
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) goto out;
    for (i = 0; i < n; i++)
        if (write_record(fd, payloads[i], lens[i]) != 0) {
            close(fd);
            unlink(tmp);
            goto out;
        }
    if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        goto out;
    }
    /* Make the rename itself durable. */
    dir = malloc(plen + 2);
    if (dir) {
        char *slash;
        memcpy(dir, path, plen + 1);
        slash = strrchr(dir, '/');
        if (slash == dir) slash[1] = '\0';
        else if (slash) *slash = '\0';
        else strcpy(dir, ".");
        dfd = open(dir, O_RDONLY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        free(dir);
    }
    rc = 0;
out:
    free(tmp);
    return rc;
}
