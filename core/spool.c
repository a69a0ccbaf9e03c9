/* spool.c - checksummed record files, and the spool of owed records kept in
 * one (see spool.h for the format and the guarantees). */
#include "spool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- CRC-32 ------------------------------------------------------------- */

/* CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), one table lookup
 * a byte. The table is constant data, not state. */
static const uint32_t crc_table[256] = {
    0x00000000u, 0x77073096u, 0xee0e612cu, 0x990951bau, 0x076dc419u, 0x706af48fu,
    0xe963a535u, 0x9e6495a3u, 0x0edb8832u, 0x79dcb8a4u, 0xe0d5e91eu, 0x97d2d988u,
    0x09b64c2bu, 0x7eb17cbdu, 0xe7b82d07u, 0x90bf1d91u, 0x1db71064u, 0x6ab020f2u,
    0xf3b97148u, 0x84be41deu, 0x1adad47du, 0x6ddde4ebu, 0xf4d4b551u, 0x83d385c7u,
    0x136c9856u, 0x646ba8c0u, 0xfd62f97au, 0x8a65c9ecu, 0x14015c4fu, 0x63066cd9u,
    0xfa0f3d63u, 0x8d080df5u, 0x3b6e20c8u, 0x4c69105eu, 0xd56041e4u, 0xa2677172u,
    0x3c03e4d1u, 0x4b04d447u, 0xd20d85fdu, 0xa50ab56bu, 0x35b5a8fau, 0x42b2986cu,
    0xdbbbc9d6u, 0xacbcf940u, 0x32d86ce3u, 0x45df5c75u, 0xdcd60dcfu, 0xabd13d59u,
    0x26d930acu, 0x51de003au, 0xc8d75180u, 0xbfd06116u, 0x21b4f4b5u, 0x56b3c423u,
    0xcfba9599u, 0xb8bda50fu, 0x2802b89eu, 0x5f058808u, 0xc60cd9b2u, 0xb10be924u,
    0x2f6f7c87u, 0x58684c11u, 0xc1611dabu, 0xb6662d3du, 0x76dc4190u, 0x01db7106u,
    0x98d220bcu, 0xefd5102au, 0x71b18589u, 0x06b6b51fu, 0x9fbfe4a5u, 0xe8b8d433u,
    0x7807c9a2u, 0x0f00f934u, 0x9609a88eu, 0xe10e9818u, 0x7f6a0dbbu, 0x086d3d2du,
    0x91646c97u, 0xe6635c01u, 0x6b6b51f4u, 0x1c6c6162u, 0x856530d8u, 0xf262004eu,
    0x6c0695edu, 0x1b01a57bu, 0x8208f4c1u, 0xf50fc457u, 0x65b0d9c6u, 0x12b7e950u,
    0x8bbeb8eau, 0xfcb9887cu, 0x62dd1ddfu, 0x15da2d49u, 0x8cd37cf3u, 0xfbd44c65u,
    0x4db26158u, 0x3ab551ceu, 0xa3bc0074u, 0xd4bb30e2u, 0x4adfa541u, 0x3dd895d7u,
    0xa4d1c46du, 0xd3d6f4fbu, 0x4369e96au, 0x346ed9fcu, 0xad678846u, 0xda60b8d0u,
    0x44042d73u, 0x33031de5u, 0xaa0a4c5fu, 0xdd0d7cc9u, 0x5005713cu, 0x270241aau,
    0xbe0b1010u, 0xc90c2086u, 0x5768b525u, 0x206f85b3u, 0xb966d409u, 0xce61e49fu,
    0x5edef90eu, 0x29d9c998u, 0xb0d09822u, 0xc7d7a8b4u, 0x59b33d17u, 0x2eb40d81u,
    0xb7bd5c3bu, 0xc0ba6cadu, 0xedb88320u, 0x9abfb3b6u, 0x03b6e20cu, 0x74b1d29au,
    0xead54739u, 0x9dd277afu, 0x04db2615u, 0x73dc1683u, 0xe3630b12u, 0x94643b84u,
    0x0d6d6a3eu, 0x7a6a5aa8u, 0xe40ecf0bu, 0x9309ff9du, 0x0a00ae27u, 0x7d079eb1u,
    0xf00f9344u, 0x8708a3d2u, 0x1e01f268u, 0x6906c2feu, 0xf762575du, 0x806567cbu,
    0x196c3671u, 0x6e6b06e7u, 0xfed41b76u, 0x89d32be0u, 0x10da7a5au, 0x67dd4accu,
    0xf9b9df6fu, 0x8ebeeff9u, 0x17b7be43u, 0x60b08ed5u, 0xd6d6a3e8u, 0xa1d1937eu,
    0x38d8c2c4u, 0x4fdff252u, 0xd1bb67f1u, 0xa6bc5767u, 0x3fb506ddu, 0x48b2364bu,
    0xd80d2bdau, 0xaf0a1b4cu, 0x36034af6u, 0x41047a60u, 0xdf60efc3u, 0xa867df55u,
    0x316e8eefu, 0x4669be79u, 0xcb61b38cu, 0xbc66831au, 0x256fd2a0u, 0x5268e236u,
    0xcc0c7795u, 0xbb0b4703u, 0x220216b9u, 0x5505262fu, 0xc5ba3bbeu, 0xb2bd0b28u,
    0x2bb45a92u, 0x5cb36a04u, 0xc2d7ffa7u, 0xb5d0cf31u, 0x2cd99e8bu, 0x5bdeae1du,
    0x9b64c2b0u, 0xec63f226u, 0x756aa39cu, 0x026d930au, 0x9c0906a9u, 0xeb0e363fu,
    0x72076785u, 0x05005713u, 0x95bf4a82u, 0xe2b87a14u, 0x7bb12baeu, 0x0cb61b38u,
    0x92d28e9bu, 0xe5d5be0du, 0x7cdcefb7u, 0x0bdbdf21u, 0x86d3d2d4u, 0xf1d4e242u,
    0x68ddb3f8u, 0x1fda836eu, 0x81be16cdu, 0xf6b9265bu, 0x6fb077e1u, 0x18b74777u,
    0x88085ae6u, 0xff0f6a70u, 0x66063bcau, 0x11010b5cu, 0x8f659effu, 0xf862ae69u,
    0x616bffd3u, 0x166ccf45u, 0xa00ae278u, 0xd70dd2eeu, 0x4e048354u, 0x3903b3c2u,
    0xa7672661u, 0xd06016f7u, 0x4969474du, 0x3e6e77dbu, 0xaed16a4au, 0xd9d65adcu,
    0x40df0b66u, 0x37d83bf0u, 0xa9bcae53u, 0xdebb9ec5u, 0x47b2cf7fu, 0x30b5ffe9u,
    0xbdbdf21cu, 0xcabac28au, 0x53b39330u, 0x24b4a3a6u, 0xbad03605u, 0xcdd70693u,
    0x54de5729u, 0x23d967bfu, 0xb3667a2eu, 0xc4614ab8u, 0x5d681b02u, 0x2a6f2b94u,
    0xb40bbe37u, 0xc30c8ea1u, 0x5a05df1bu, 0x2d02ef8du,
};

static uint32_t crc_update(uint32_t crc, const void *data, size_t len)
{
    const unsigned char *p = data;
    while (len--) crc = crc_table[(crc ^ *p++) & 0xFFu] ^ (crc >> 8);
    return crc;
}

uint32_t pb_crc32(const void *data, size_t len)
{
    return ~crc_update(0xFFFFFFFFu, data, len);
}

/* ---- record lines ------------------------------------------------------- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

long pb_spool_check(const char *line, size_t len)
{
    uint32_t want = 0;
    size_t i;
    if (len < 9 || line[8] != ' ') return -1;
    for (i = 0; i < 8; i++) {
        int v = hexval(line[i]);
        if (v < 0) return -1;
        want = (want << 4) | (uint32_t)v;
    }
    return pb_crc32(line + 9, len - 9) == want ? 9 : -1;
}

/* Appends the line "xxxxxxxx <head><body>\n" to b (head and body are the
 * record's body, in two pieces). */
static int put_line(pb_buf *b, const char *head, size_t hlen, const char *body, size_t blen)
{
    static const char hex[] = "0123456789abcdef";
    uint32_t crc = ~crc_update(crc_update(0xFFFFFFFFu, head, hlen), body, blen);
    char *p;
    int k;
    if (hlen > (size_t)-1 - 10 - blen || pb_buf_reserve(b, 10 + hlen + blen) != PB_OK) return -1;
    p = b->data + b->len;
    for (k = 7; k >= 0; k--, crc >>= 4) p[k] = hex[crc & 15u];
    p[8] = ' ';
    if (hlen) memcpy(p + 9, head, hlen);
    if (blen) memcpy(p + 9 + hlen, body, blen);
    p[9 + hlen + blen] = '\n';
    b->len += 10 + hlen + blen;
    b->data[b->len] = '\0';
    return 0;
}

/* An id: 1 to 16 digits without a leading zero, 1 .. PB_SPOOL_MAX_ID.
 * Returns the digits used, 0 when there is no id. */
static size_t parse_id(const char *p, size_t n, long long *id)
{
    size_t i;
    long long v = 0;
    if (n == 0 || p[0] < '1' || p[0] > '9') return 0;
    for (i = 0; i < n && i < 17 && p[i] >= '0' && p[i] <= '9'; i++) v = v * 10 + (p[i] - '0');
    if (i > 16 || v > PB_SPOOL_MAX_ID) return 0;
    *id = v;
    return i;
}

/* Parses a record's body: its kind ('+', '-' or '='), id and, for adds,
 * the payload's offset in the body. 0 when it is not a spool record. */
static int parse_body(const char *b, size_t n, int *kind, long long *id, size_t *poff)
{
    size_t used;
    if (n < 2 || (b[0] != '+' && b[0] != '-' && b[0] != '=')) return 0;
    used = parse_id(b + 1, n - 1, id);
    if (!used) return 0;
    if (b[0] == '+') {
        if (1 + used >= n || b[1 + used] != ' ') return 0;
        *poff = 2 + used;
    } else if (1 + used != n) {
        return 0;
    }
    *kind = b[0];
    return 1;
}

/* The id a damaged line seems to name (untrusted), 0 when none is readable. */
static long long readable_id(const char *line, size_t len)
{
    long long id = 0;
    if (len > 10 && (line[9] == '+' || line[9] == '-') && parse_id(line + 10, len - 10, &id)) return id;
    return 0;
}

/* Could a valid line start at p? ("xxxxxxxx " then '+', '-' or '=' and a digit) */
static int looks_like_start(const char *p, size_t n)
{
    size_t i;
    if (n < 11 || p[8] != ' ' || (p[9] != '+' && p[9] != '-' && p[9] != '=') || p[10] < '1' ||
        p[10] > '9')
        return 0;
    for (i = 0; i < 8; i++)
        if (hexval(p[i]) < 0) return 0;
    return 1;
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

/* ---- record files ------------------------------------------------------- */

int pb_spool_file_open(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
}

int pb_spool_file_append(int fd, const char *payload, size_t len)
{
    pb_buf b;
    struct stat st;
    int rc = -1, e;
    if (memchr(payload, '\n', len)) {
        errno = EINVAL;
        return -1;
    }
    if (fstat(fd, &st) != 0) return -1;
    pb_buf_init(&b, NULL);
    if (put_line(&b, "", 0, payload, len) != 0) {
        errno = ENOMEM;
        return -1;
    }
    /* One write, so readers never see two records interleaved. */
    rc = write_all(fd, b.data, b.len);
    if (rc != 0) {
        e = errno;
        if (ftruncate(fd, st.st_size) != 0) { /* the next reader skips the torn line */
        }
        errno = e;
    }
    pb_buf_free(&b);
    return rc;
}

static int sys_fsync(void *ud, int fd, int full);

int pb_spool_file_sync(int fd)
{
    return sys_fsync(NULL, fd, 0);
}

void pb_spool_file_close(int fd)
{
    if (fd >= 0) close(fd);
}

/* ---- the spool ---------------------------------------------------------- */

typedef struct entry {
    long long id;
    unsigned long long off; /* of its line in the file */
    size_t len;             /* of its line, '\n' included; 0 once done */
} entry;

struct pb_spool {
    const pb_alloc *alloc;
    pb_spool_io io;
    char *names; /* one block: path, tmp, corrupt, lock, dir */
    size_t names_size;
    const char *path, *tmp, *corrupt, *lock, *dir;
    int fd, lockfd, dirfd, corruptfd;
    unsigned long long corrupt_len;
    int corrupt_nl;       /* <path>.corrupt does not end with '\n' */
    int corrupt_dirty;    /* written since its last fsync */
    int corrupt_errno;    /* a save to <path>.corrupt failed */
    int compaction_off;   /* errno of a failed save at open: compaction stays off */
    unsigned long long good_len; /* bytes of whole records: where the next one goes */
    unsigned long long peak;
    unsigned long long hdr_len;  /* the "=<id>" line at the start, 0 when none */
    int tail_broken;             /* bytes past good_len that could not be cut */
    int need_nl;                 /* the file ends in a kept torn line: start with '\n' */
    int dirty;                   /* appended since the last sync: 1 done marks, 2 adds */
    long long last_id;
    entry *ents; /* by id; done ones have len 0 until squeezed out */
    size_t nents, cap, nlive;
    unsigned long long live_bytes;
    unsigned long done_since, compact_after;
    size_t max_record, max_line;
    unsigned long long ncorrupt, compactions, compact_failures, added, done;
    pb_spool_event ev[PB_SPOOL_MAX_EVENTS];
    size_t ev_first, ev_n;
    unsigned long long ev_dropped;
    pb_buf wbuf, rbuf;
};

static ssize_t sys_pwrite(void *ud, int fd, const void *p, size_t n, off_t off)
{
    (void)ud;
    return pwrite(fd, p, n, off);
}

static int sys_ftruncate(void *ud, int fd, off_t len)
{
    (void)ud;
    return ftruncate(fd, len);
}

static int sys_fsync(void *ud, int fd, int full)
{
    (void)ud;
#if defined(__APPLE__)
    (void)full;
    return fsync(fd);
#else
    return full ? fsync(fd) : fdatasync(fd);
#endif
}

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static int fail(pb_spool_err *err, int code, int sys, const char *fmt, ...)
{
    va_list ap;
    if (!err) return code;
    err->code = code;
    err->sys = sys;
    err->pid = 0;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return code;
}

static int nomem(pb_spool *sp, pb_spool_err *err)
{
    return fail(err, PB_SPOOL_ENOMEM, ENOMEM, "%s: not enough memory", sp->path);
}

const char *pb_spool_what(int what)
{
    switch (what) {
    case PB_SPOOL_DAMAGED_CHECKSUM: return "checksum mismatch";
    case PB_SPOOL_DAMAGED_TORN: return "torn record (no end of line)";
    case PB_SPOOL_DAMAGED_FORMAT: return "not a spool record";
    case PB_SPOOL_DAMAGED_TOO_LONG: return "record longer than max_record";
    case PB_SPOOL_DAMAGED_DUPLICATE: return "repeated id";
    case PB_SPOOL_DISCARDED: return "discarded";
    case PB_SPOOL_COMPACT_FAILED: return "compaction failed";
    case PB_SPOOL_CORRUPT_FAILED: return "damaged records could not be saved";
    default: return "unknown";
    }
}

static void push_event(pb_spool *sp, int what, unsigned long long line, unsigned long long off,
                       size_t len, long long id, int saved, int sys)
{
    pb_spool_event *e;
    if (sp->ev_n == PB_SPOOL_MAX_EVENTS) {
        sp->ev_dropped++;
        return;
    }
    e = &sp->ev[(sp->ev_first + sp->ev_n++) % PB_SPOOL_MAX_EVENTS];
    e->what = what;
    e->line = line;
    e->offset = off;
    e->length = len;
    e->id = id;
    e->saved = saved;
    e->sys = sys;
}

size_t pb_spool_events(pb_spool *sp, pb_spool_event *out, size_t cap)
{
    size_t n = 0;
    while (n < cap && sp->ev_n) {
        out[n++] = sp->ev[sp->ev_first];
        sp->ev_first = (sp->ev_first + 1) % PB_SPOOL_MAX_EVENTS;
        sp->ev_n--;
    }
    return n;
}

/* Writes all of p at off with the spool's pwrite; 0, or -1 with errno. */
static int pwrite_all(pb_spool *sp, int fd, const char *p, size_t n, unsigned long long off)
{
    while (n) {
        ssize_t w = sp->io.pwrite(sp->io.ud, fd, p, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (w == 0) {
            errno = ENOSPC;
            return -1;
        }
        p += w;
        n -= (size_t)w;
        off += (unsigned long long)w;
    }
    return 0;
}

/* Reads exactly n bytes at off; 0, or -1 with errno (EIO when the file is
 * shorter). */
static int pread_all(int fd, char *p, size_t n, unsigned long long off)
{
    while (n) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) {
            errno = EIO;
            return -1;
        }
        p += r;
        n -= (size_t)r;
        off += (unsigned long long)r;
    }
    return 0;
}

/* ---- the index ------------------------------------------------------------ */

/* The first entry with an id >= id. */
static size_t lower_bound(const pb_spool *sp, long long id)
{
    size_t lo = 0, hi = sp->nents;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sp->ents[mid].id < id) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static entry *find_live(pb_spool *sp, long long id)
{
    size_t i = lower_bound(sp, id);
    if (i < sp->nents && sp->ents[i].id == id && sp->ents[i].len) return &sp->ents[i];
    return NULL;
}

static void squeeze(pb_spool *sp)
{
    size_t i, j = 0;
    for (i = 0; i < sp->nents; i++)
        if (sp->ents[i].len) sp->ents[j++] = sp->ents[i];
    sp->nents = j;
}

/* Makes room for one more entry: squeezes out done ones when they are at
 * least half, else grows. */
static int reserve_entry(pb_spool *sp)
{
    size_t ncap;
    entry *n;
    if (sp->nents < sp->cap) return 0;
    if (sp->nents - sp->nlive >= sp->nents / 2 && sp->nents > sp->nlive) {
        squeeze(sp);
        return 0;
    }
    if (sp->cap > ((size_t)-1 / sizeof *n) / 2) return -1;
    ncap = sp->cap ? sp->cap * 2 : 64;
    n = pb_realloc(sp->alloc, sp->ents, sp->cap * sizeof *n, ncap * sizeof *n);
    if (!n) return -1;
    sp->ents = n;
    sp->cap = ncap;
    return 0;
}

/* Adds an entry (room reserved), keeping the order by id. */
static void insert_entry(pb_spool *sp, long long id, unsigned long long off, size_t len)
{
    size_t i = sp->nents;
    if (i && sp->ents[i - 1].id >= id) {
        i = lower_bound(sp, id);
        memmove(&sp->ents[i + 1], &sp->ents[i], (sp->nents - i) * sizeof *sp->ents);
    }
    sp->ents[i].id = id;
    sp->ents[i].off = off;
    sp->ents[i].len = len;
    sp->nents++;
    sp->nlive++;
    sp->live_bytes += len;
}

static void mark_done(pb_spool *sp, entry *e)
{
    sp->live_bytes -= e->len;
    e->len = 0;
    sp->nlive--;
}

/* Bytes of the file that a compaction would drop. */
static unsigned long long dead_bytes(const pb_spool *sp)
{
    return sp->good_len - sp->hdr_len - sp->live_bytes;
}

/* ---- <path>.corrupt --------------------------------------------------------- */

/* Opens <path>.corrupt for appending (once), with the spool's mode and owner
 * when it is created. */
static int corrupt_open(pb_spool *sp)
{
    struct stat st, sst;
    int created = 1;
    if (sp->corruptfd >= 0) return 0;
    if (fstat(sp->fd, &sst) != 0) return -1;
    sp->corruptfd = open(sp->corrupt, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                         sst.st_mode & 0666);
    if (sp->corruptfd < 0 && errno == EEXIST) {
        created = 0;
        sp->corruptfd = open(sp->corrupt, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    }
    if (sp->corruptfd < 0) return -1;
    if (fstat(sp->corruptfd, &st) != 0) goto bad;
    if (created) {
        if (fchown(sp->corruptfd, sst.st_uid, sst.st_gid) != 0 && geteuid() == 0) goto bad;
        if (fchmod(sp->corruptfd, sst.st_mode & 0666) != 0) goto bad;
    } else if (!S_ISREG(st.st_mode)) {
        errno = EINVAL;
        goto bad;
    }
    sp->corrupt_len = (unsigned long long)st.st_size;
    sp->corrupt_nl = 0;
    if (st.st_size > 0) {
        char last;
        int rfd = open(sp->corrupt, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (rfd >= 0) {
            if (pread(rfd, &last, 1, st.st_size - 1) == 1 && last != '\n') sp->corrupt_nl = 1;
            close(rfd);
        }
    }
    return 0;
bad : {
    int e = errno;
    close(sp->corruptfd);
    sp->corruptfd = -1;
    errno = e;
    return -1;
}
}

/* Appends bytes to <path>.corrupt; a failed write is cut back off. */
static int corrupt_put(pb_spool *sp, const char *p, size_t n)
{
    if (!n) return 0;
    if (corrupt_open(sp) != 0) return -1;
    if (sp->corrupt_nl) {
        if (pwrite_all(sp, sp->corruptfd, "\n", 1, sp->corrupt_len) != 0) return -1;
        sp->corrupt_len++;
        sp->corrupt_nl = 0;
    }
    if (pwrite_all(sp, sp->corruptfd, p, n, sp->corrupt_len) != 0) {
        int e = errno;
        if (sp->io.ftruncate(sp->io.ud, sp->corruptfd, (off_t)sp->corrupt_len) != 0) sp->corrupt_nl = 1;
        errno = e;
        return -1;
    }
    sp->corrupt_len += n;
    sp->corrupt_dirty = 1;
    return 0;
}

/* Saves one damaged line (plus '\n'); 1 when saved. A failure turns
 * compaction off, so what could not be saved stays in the spool. */
static int save_line(pb_spool *sp, const char *p, size_t n)
{
    unsigned long long start;
    if (sp->corrupt_errno) return 0;
    start = sp->corruptfd >= 0 ? sp->corrupt_len : 0;
    if (corrupt_put(sp, p, n) == 0 && corrupt_put(sp, "\n", 1) == 0) return 1;
    sp->corrupt_errno = errno ? errno : EIO;
    if (sp->corruptfd >= 0 && sp->corrupt_len > start &&
        sp->io.ftruncate(sp->io.ud, sp->corruptfd, (off_t)start) == 0)
        sp->corrupt_len = start;
    return 0;
}

/* Makes what was saved to <path>.corrupt durable; 0 or -1 (then compaction
 * is off: the damaged lines must stay where they are). */
static int corrupt_sync(pb_spool *sp)
{
    if (!sp->corrupt_dirty) return 0;
    if (sp->io.fsync(sp->io.ud, sp->corruptfd, 0) != 0) {
        sp->corrupt_errno = errno;
        return -1;
    }
    sp->corrupt_dirty = 0;
    return 0;
}

static void damaged(pb_spool *sp, int what, const char *p, size_t n, unsigned long long off,
                    unsigned long long lineno)
{
    int saved = save_line(sp, p, n);
    sp->ncorrupt++;
    push_event(sp, what, lineno, off, n, readable_id(p, n), saved, 0);
}

/* ---- appending ------------------------------------------------------------ */

/* Appends the line for body head+body at good_len. On success *off and
 * *len are the line's place (without a '\n' put in front of it). A failed
 * write is cut back to good_len; while that fails, nothing is written. */
static int append(pb_spool *sp, const char *head, size_t hlen, const char *body, size_t blen,
                  unsigned long long *off, size_t *len, pb_spool_err *err)
{
    pb_buf *b = &sp->wbuf;
    size_t nl = sp->need_nl ? 1 : 0;
    if (sp->tail_broken) {
        if (sp->io.ftruncate(sp->io.ud, sp->fd, (off_t)sp->good_len) != 0)
            return fail(err, PB_SPOOL_ETAIL, errno,
                        "%s: refusing to write: a failed write left a partial record that "
                        "could not be cut off (%s)", sp->path, strerror(errno));
        sp->tail_broken = 0;
    }
    pb_buf_reset(b);
    if ((nl && pb_buf_putc(b, '\n') != PB_OK) || put_line(b, head, hlen, body, blen) != 0)
        return nomem(sp, err);
    if (pwrite_all(sp, sp->fd, b->data, b->len, sp->good_len) != 0) {
        int e = errno;
        if (sp->io.ftruncate(sp->io.ud, sp->fd, (off_t)sp->good_len) != 0) {
            sp->tail_broken = 1;
            return fail(err, PB_SPOOL_ESYS, e,
                        "%s: cannot write a record: %s (the partial record could not be cut off "
                        "either: writes are refused until it can)", sp->path, strerror(e));
        }
        return fail(err, PB_SPOOL_ESYS, e, "%s: cannot write a record: %s", sp->path, strerror(e));
    }
    *off = sp->good_len + nl;
    *len = b->len - nl;
    sp->good_len += b->len;
    if (sp->good_len > sp->peak) sp->peak = sp->good_len;
    sp->need_nl = 0;
    if (!sp->dirty) sp->dirty = 1;
    return PB_SPOOL_OK;
}

static size_t id_head(char *buf, char kind, long long id, int space)
{
    int n = snprintf(buf, 24, "%c%lld%s", kind, id, space ? " " : "");
    return n > 0 ? (size_t)n : 0;
}

int pb_spool_add(pb_spool *sp, const char *payload, size_t len, long long *id, pb_spool_err *err)
{
    char head[24];
    unsigned long long off;
    size_t n;
    int rc;
    long long nid;
    if (len > sp->max_record)
        return fail(err, PB_SPOOL_ETOOBIG, 0, "%s: a record of %lu bytes is over max_record (%lu)",
                    sp->path, (unsigned long)len, (unsigned long)sp->max_record);
    if (len && memchr(payload, '\n', len))
        return fail(err, PB_SPOOL_EINVAL, EINVAL, "%s: a record cannot hold a newline", sp->path);
    if (sp->last_id >= PB_SPOOL_MAX_ID)
        return fail(err, PB_SPOOL_EINVAL, EOVERFLOW, "%s: no ids left", sp->path);
    if (reserve_entry(sp) != 0) return nomem(sp, err);
    nid = sp->last_id + 1;
    rc = append(sp, head, id_head(head, '+', nid, 1), payload, len, &off, &n, err);
    if (rc != PB_SPOOL_OK) return rc;
    insert_entry(sp, nid, off, n);
    sp->dirty = 2;
    sp->last_id = nid;
    sp->added++;
    *id = nid;
    return PB_SPOOL_OK;
}

static int write_done(pb_spool *sp, long long id, pb_spool_err *err)
{
    char head[24];
    unsigned long long off;
    size_t n;
    return append(sp, head, id_head(head, '-', id, 0), "", 0, &off, &n, err);
}

int pb_spool_done(pb_spool *sp, long long id, pb_spool_err *err)
{
    entry *e = find_live(sp, id);
    int rc;
    if (!e) return 0;
    mark_done(sp, e);
    sp->done++;
    sp->done_since++;
    rc = write_done(sp, id, err);
    return rc == PB_SPOOL_OK ? 1 : rc;
}

/* Reads e's line into b (appended; len bytes). 0 when it is the add record
 * of e->id, 1 when it is damaged, -1 when it cannot be read (errno). */
static int read_entry(pb_spool *sp, const entry *e, pb_buf *b, size_t *poff)
{
    char *line;
    int kind;
    long long id;
    size_t po;
    if (pb_buf_reserve(b, e->len) != PB_OK) {
        errno = ENOMEM;
        return -1;
    }
    line = b->data + b->len;
    if (pread_all(sp->fd, line, e->len, e->off) != 0) return -1;
    b->len += e->len;
    b->data[b->len] = '\0';
    if (line[e->len - 1] != '\n' || pb_spool_check(line, e->len - 1) < 0 ||
        !parse_body(line + 9, e->len - 10, &kind, &id, &po) || kind != '+' || id != e->id)
        return 1;
    if (poff) *poff = 9 + po;
    return 0;
}

/* Moves the (damaged or unwanted) line of e to <path>.corrupt and marks e
 * done. line points at its bytes (with '\n'). */
static int move_out(pb_spool *sp, entry *e, int what, const char *line, pb_spool_err *err)
{
    long long id = e->id;
    unsigned long long off = e->off;
    size_t len = e->len - 1;
    int saved = save_line(sp, line, len);
    if (!saved) {
        int rc = fail(err, PB_SPOOL_ESYS, sp->corrupt_errno, "%s: cannot save a record to %s: %s",
                      sp->path, sp->corrupt, strerror(sp->corrupt_errno));
        push_event(sp, PB_SPOOL_CORRUPT_FAILED, 0, off, len, id, 0, sp->corrupt_errno);
        sp->corrupt_errno = 0; /* only this save failed: try again next time */
        return rc;
    }
    corrupt_sync(sp);
    sp->corrupt_errno = 0;
    if (what != PB_SPOOL_DISCARDED) sp->ncorrupt++;
    push_event(sp, what, 0, off, len, id, 1, 0);
    mark_done(sp, e);
    sp->done_since++;
    return write_done(sp, id, err);
}

int pb_spool_discard(pb_spool *sp, long long id, pb_spool_err *err)
{
    entry *e = find_live(sp, id);
    pb_buf *b = &sp->rbuf;
    int rc;
    if (!e) return 0;
    pb_buf_reset(b);
    rc = read_entry(sp, e, b, NULL);
    if (rc < 0) {
        if (errno == ENOMEM) return nomem(sp, err);
        return fail(err, PB_SPOOL_ESYS, errno, "%s: cannot read record %lld: %s", sp->path, id,
                    strerror(errno));
    }
    rc = move_out(sp, e, rc ? PB_SPOOL_DAMAGED_CHECKSUM : PB_SPOOL_DISCARDED, b->data, err);
    return rc == PB_SPOOL_OK ? 1 : rc;
}

int pb_spool_next(pb_spool *sp, long long after, long long *id, pb_buf *out, pb_spool_err *err)
{
    pb_buf *b = &sp->rbuf;
    size_t i;
    if (after >= PB_SPOOL_MAX_ID) return 0; /* no id is above the last */
    for (i = lower_bound(sp, after + 1); i < sp->nents; i++) {
        entry *e = &sp->ents[i];
        size_t poff = 0;
        int rc;
        if (!e->len) continue;
        pb_buf_reset(b);
        rc = read_entry(sp, e, b, &poff);
        if (rc < 0) {
            if (errno == ENOMEM) return nomem(sp, err);
            return fail(err, PB_SPOOL_ESYS, errno, "%s: cannot read record %lld: %s", sp->path,
                        e->id, strerror(errno));
        }
        if (rc == 1) { /* damaged since it was read at open */
            rc = move_out(sp, e, PB_SPOOL_DAMAGED_CHECKSUM, b->data, err);
            if (rc != PB_SPOOL_OK) return rc;
            continue;
        }
        if (pb_buf_append(out, b->data + poff, b->len - 1 - poff) != PB_OK) return nomem(sp, err);
        *id = e->id;
        return 1;
    }
    return 0;
}

/* ---- compaction ------------------------------------------------------------- */

int pb_spool_compact(pb_spool *sp, pb_spool_err *err)
{
    struct stat st;
    pb_buf *b = &sp->wbuf;
    unsigned long long toff = 0, hdr, off;
    char head[24];
    size_t i;
    int tfd, e;
    if (sp->compaction_off)
        return fail(err, PB_SPOOL_ESYS, sp->compaction_off,
                    "%s: compaction is off: damaged records could not be saved to %s (%s)",
                    sp->path, sp->corrupt, strerror(sp->compaction_off));
    if (fstat(sp->fd, &st) != 0) goto sysfail;
    if (unlink(sp->tmp) != 0 && errno != ENOENT) goto sysfail;
    tfd = open(sp->tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (tfd < 0) goto sysfail;
    /* The owner first: a chown may clear set-id bits that the chmod restores. */
    if (fchown(tfd, st.st_uid, st.st_gid) != 0 && geteuid() == 0) goto fail_tmp;
    if (fchmod(tfd, st.st_mode & 07777) != 0) goto fail_tmp;
    pb_buf_reset(b);
    if (sp->last_id && put_line(b, head, id_head(head, '=', sp->last_id, 0), "", 0) != 0)
        goto nomem_tmp;
    hdr = b->len;
    for (i = 0; i < sp->nents; i++) {
        entry *en = &sp->ents[i];
        size_t before = b->len;
        int rc;
        if (!en->len) continue;
        rc = read_entry(sp, en, b, NULL);
        if (rc < 0) {
            if (errno == ENOMEM) goto nomem_tmp;
            goto fail_tmp;
        }
        if (rc == 1) { /* damaged since it was read: it goes to <path>.corrupt */
            if (!save_line(sp, b->data + before, en->len - 1)) {
                errno = sp->corrupt_errno;
                sp->corrupt_errno = 0;
                b->len = before;
                goto fail_tmp;
            }
            sp->ncorrupt++;
            push_event(sp, PB_SPOOL_DAMAGED_CHECKSUM, 0, en->off, en->len - 1, en->id, 1, 0);
            mark_done(sp, en);
            b->len = before;
            continue;
        }
        if (b->len >= 65536) {
            if (pwrite_all(sp, tfd, b->data, b->len, toff) != 0) goto fail_tmp;
            toff += b->len;
            pb_buf_reset(b);
        }
    }
    if (b->len && pwrite_all(sp, tfd, b->data, b->len, toff) != 0) goto fail_tmp;
    toff += b->len;
    pb_buf_reset(b);
    if (corrupt_sync(sp) != 0) {
        errno = sp->corrupt_errno;
        sp->corrupt_errno = 0;
        goto fail_tmp;
    }
    if (sp->io.fsync(sp->io.ud, tfd, 1) != 0) goto fail_tmp;
    if (rename(sp->tmp, sp->path) != 0) goto fail_tmp;
    /* The rename is durable once the directory is synced; if that fails the
     * old file may come back after a power loss, which is still right. */
    if (sp->dirfd >= 0) sp->io.fsync(sp->io.ud, sp->dirfd, 1);
    close(sp->fd);
    sp->fd = tfd;
    off = hdr;
    squeeze(sp);
    for (i = 0; i < sp->nents; i++) {
        sp->ents[i].off = off;
        off += sp->ents[i].len;
    }
    sp->hdr_len = hdr;
    sp->good_len = toff;
    if (toff > sp->peak) sp->peak = toff;
    sp->tail_broken = 0;
    sp->need_nl = 0;
    sp->dirty = 0;
    sp->done_since = 0;
    sp->compactions++;
    return PB_SPOOL_OK;

nomem_tmp:
    close(tfd);
    unlink(sp->tmp);
    sp->compact_failures++;
    return nomem(sp, err);
fail_tmp:
    e = errno;
    close(tfd);
    unlink(sp->tmp);
    errno = e;
sysfail:
    e = errno;
    sp->compact_failures++;
    return fail(err, PB_SPOOL_ESYS, e, "%s: compaction failed: %s", sp->path, strerror(e));
}

/* Syncs when adds were written (all = 0) or anything was (all = 1). Done
 * marks alone need no sync of their own: one lost to a power cut means a
 * record is sent again, which at-least-once delivery allows. */
static int sync_file(pb_spool *sp, int all, pb_spool_err *err)
{
    if (sp->dirty < (all ? 1 : 2)) return PB_SPOOL_OK;
    if (sp->io.fsync(sp->io.ud, sp->fd, 0) != 0)
        return fail(err, PB_SPOOL_ESYS, errno, "%s: cannot sync: %s", sp->path, strerror(errno));
    sp->dirty = 0;
    return PB_SPOOL_OK;
}

int pb_spool_sync(pb_spool *sp, pb_spool_err *err)
{
    if (!sp->compaction_off && sp->done_since >= sp->compact_after &&
        dead_bytes(sp) >= sp->live_bytes) {
        pb_spool_err cerr;
        if (pb_spool_compact(sp, &cerr) == PB_SPOOL_OK) return PB_SPOOL_OK;
        push_event(sp, PB_SPOOL_COMPACT_FAILED, 0, 0, 0, 0, 0, cerr.sys);
        sp->done_since = 0; /* try again after as many more */
    }
    return sync_file(sp, 0, err);
}

void pb_spool_get_stats(const pb_spool *sp, pb_spool_stats *st)
{
    st->owed = sp->nlive;
    st->owed_bytes = sp->live_bytes;
    st->bytes = sp->good_len;
    st->peak_bytes = sp->peak;
    st->corrupt = sp->ncorrupt;
    st->compactions = sp->compactions;
    st->compact_failures = sp->compact_failures;
    st->added = sp->added;
    st->done = sp->done;
    st->events_dropped = sp->ev_dropped;
    st->last_id = sp->last_id;
    st->tail_broken = sp->tail_broken;
    st->compaction_off = sp->compaction_off != 0;
}

const char *pb_spool_path(const pb_spool *sp)
{
    return sp->path;
}

/* ---- opening ---------------------------------------------------------------- */

/* One line of the file, without its '\n', at off. A line failing its
 * checksum is searched for a whole record inside it (a lost '\n' glues two
 * lines together): what comes before is damaged, the rest is read again. */
static int take_line(pb_spool *sp, const char *line, size_t len, unsigned long long off,
                     unsigned long long lineno, pb_spool_err *err)
{
    int kind, tries = 0;
    long long id;
    size_t poff, i;
    entry *e;
    if (len == 0) return PB_SPOOL_OK; /* an empty line holds nothing */
    if (pb_spool_check(line, len) < 0) {
        for (i = 1; i + 11 <= len && tries < 64; i++) {
            if (!looks_like_start(line + i, len - i)) continue;
            tries++;
            if (pb_spool_check(line + i, len - i) >= 0) {
                damaged(sp, PB_SPOOL_DAMAGED_CHECKSUM, line, i, off, lineno);
                return take_line(sp, line + i, len - i, off + i, lineno, err);
            }
        }
        damaged(sp, PB_SPOOL_DAMAGED_CHECKSUM, line, len, off, lineno);
        return PB_SPOOL_OK;
    }
    if (!parse_body(line + 9, len - 9, &kind, &id, &poff)) {
        damaged(sp, PB_SPOOL_DAMAGED_FORMAT, line, len, off, lineno);
        return PB_SPOOL_OK;
    }
    if (id > sp->last_id) sp->last_id = id;
    if (kind == '=') {
        if (off == 0) sp->hdr_len = len + 1;
    } else if (kind == '-') {
        if ((e = find_live(sp, id)) != NULL) mark_done(sp, e);
    } else if (len - 9 - poff > sp->max_record) {
        damaged(sp, PB_SPOOL_DAMAGED_TOO_LONG, line, len, off, lineno);
    } else if (find_live(sp, id)) {
        damaged(sp, PB_SPOOL_DAMAGED_DUPLICATE, line, len, off, lineno);
    } else {
        if (reserve_entry(sp) != 0) return nomem(sp, err);
        insert_entry(sp, id, off, len + 1);
    }
    return PB_SPOOL_OK;
}

/* Ends a line too long to be a record, streamed to <path>.corrupt (ok: all
 * of it so far was saved), and reports it. */
static void end_spill(pb_spool *sp, int ok, unsigned long long lineno, unsigned long long start,
                      unsigned long long len, long long id)
{
    if (ok && corrupt_put(sp, "\n", 1) != 0) {
        ok = 0;
        sp->corrupt_errno = errno ? errno : EIO;
    }
    sp->ncorrupt++;
    push_event(sp, PB_SPOOL_DAMAGED_TOO_LONG, lineno, start, (size_t)len, id, ok, 0);
}

/* Reads the whole file in chunks. Sets *size (bytes read) and *tail (where
 * a last line without '\n' starts; == *size when there is none). */
static int scan(pb_spool *sp, unsigned long long *size, unsigned long long *tail, pb_spool_err *err)
{
    char chunk[16384];
    pb_buf *line = &sp->rbuf;
    unsigned long long pos = 0, start = 0, lineno = 1, spill_len = 0;
    long long spill_id = 0;
    int spill = 0, spill_ok = 0, rc;
    pb_buf_reset(line);
    for (;;) {
        const char *p, *end;
        ssize_t n = pread(sp->fd, chunk, sizeof chunk, (off_t)pos);
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail(err, PB_SPOOL_ESYS, errno, "%s: cannot read the spool: %s", sp->path,
                        strerror(errno));
        }
        if (n == 0) break;
        p = chunk;
        end = chunk + n;
        while (p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            size_t seg = (size_t)((nl ? nl : end) - p);
            if (!spill && line->len + seg > sp->max_line) {
                /* Too long to be a record: streamed to <path>.corrupt. Its id
                 * is in its first bytes, kept already or in this segment. */
                char head[10 + 17]; /* checksum, space, '+', the longest id */
                size_t hn = line->len < sizeof head ? line->len : sizeof head;
                if (hn) memcpy(head, line->data, hn);
                if (hn < sizeof head) {
                    size_t more = sizeof head - hn < seg ? sizeof head - hn : seg;
                    memcpy(head + hn, p, more);
                    hn += more;
                }
                spill = 1;
                spill_len = line->len;
                spill_id = readable_id(head, hn);
                spill_ok = !sp->corrupt_errno && corrupt_put(sp, line->data, line->len) == 0;
                if (!spill_ok && !sp->corrupt_errno) sp->corrupt_errno = errno ? errno : EIO;
                pb_buf_reset(line);
            }
            if (spill) {
                spill_len += seg;
                if (spill_ok && corrupt_put(sp, p, seg) != 0) {
                    spill_ok = 0;
                    sp->corrupt_errno = errno ? errno : EIO;
                    sp->corrupt_nl = 1; /* part of the line is there: end it first */
                }
            } else if (pb_buf_append(line, p, seg) != PB_OK) {
                return nomem(sp, err);
            }
            if (!nl) {
                p = end;
                continue;
            }
            if (spill) {
                end_spill(sp, spill_ok, lineno, start, spill_len, spill_id);
                spill = 0;
            } else if ((rc = take_line(sp, line->data, line->len, start, lineno, err)) !=
                       PB_SPOOL_OK) {
                return rc;
            }
            pb_buf_reset(line);
            start = pos + (unsigned long long)(nl - chunk) + 1;
            lineno++;
            p = nl + 1;
        }
        pos += (unsigned long long)n;
    }
    *size = pos;
    *tail = start;
    if (spill) {
        end_spill(sp, spill_ok, lineno, start, spill_len, spill_id);
    } else if (start < pos) {
        damaged(sp, PB_SPOOL_DAMAGED_TORN, line->data, line->len, start, lineno);
    }
    return PB_SPOOL_OK;
}

/* Reads the pid written in the lock file (0 when there is none). */
static long lock_holder(int fd)
{
    char buf[32];
    long pid = 0;
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0), i;
    for (i = 0; i < n && buf[i] >= '0' && buf[i] <= '9' && pid < 100000000L; i++)
        pid = pid * 10 + (buf[i] - '0');
    return pid;
}

/* Opens (or creates) the spool file and takes the lock on <path>.lock. */
static int open_locked(pb_spool *sp, pb_spool_err *err)
{
    struct stat st, now;
    int attempt;
    for (attempt = 0; attempt < 8; attempt++) {
        int created = 0;
        sp->fd = open(sp->path, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (sp->fd < 0 && errno == ENOENT) {
            sp->fd = open(sp->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0600);
            if (sp->fd < 0 && errno == EEXIST) continue;
            created = sp->fd >= 0;
        }
        if (sp->fd < 0)
            return fail(err, PB_SPOOL_ESYS, errno, "%s: cannot open the spool: %s", sp->path,
                        strerror(errno));
        if (fstat(sp->fd, &st) != 0)
            return fail(err, PB_SPOOL_ESYS, errno, "%s: %s", sp->path, strerror(errno));
        if (!S_ISREG(st.st_mode))
            return fail(err, PB_SPOOL_EINVAL, EINVAL, "%s: not a regular file", sp->path);
        if (!created && faccessat(AT_FDCWD, sp->dir, W_OK | X_OK, AT_EACCESS) != 0)
            return fail(err, PB_SPOOL_ESYS, errno,
                        "%s: cannot write in its directory (compaction replaces the file): %s",
                        sp->path, strerror(errno));
        if (sp->lockfd < 0) {
            mode_t mode = created ? 0600 : (st.st_mode & 0666);
            int made = 1;
            sp->lockfd = open(sp->lock, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
            if (sp->lockfd < 0 && errno == EEXIST) {
                made = 0;
                sp->lockfd = open(sp->lock, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
                if (sp->lockfd < 0 && errno == EACCES)
                    sp->lockfd = open(sp->lock, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            }
            if (sp->lockfd < 0)
                return fail(err, PB_SPOOL_ESYS, errno, "%s: cannot open the lock %s: %s",
                            sp->path, sp->lock, strerror(errno));
            if (made && geteuid() == 0 && fchown(sp->lockfd, st.st_uid, st.st_gid) != 0)
                return fail(err, PB_SPOOL_ESYS, errno, "%s: %s", sp->lock, strerror(errno));
            if (flock(sp->lockfd, LOCK_EX | LOCK_NB) != 0) {
                int e = errno;
                long pid = (e == EWOULDBLOCK) ? lock_holder(sp->lockfd) : 0;
                if (e != EWOULDBLOCK)
                    return fail(err, PB_SPOOL_ESYS, e, "%s: cannot lock %s: %s", sp->path,
                                sp->lock, strerror(e));
                if (pid)
                    fail(err, PB_SPOOL_ELOCKED, e, "%s is in use by process %ld (lock %s)",
                         sp->path, pid, sp->lock);
                else
                    fail(err, PB_SPOOL_ELOCKED, e, "%s is in use by another process (lock %s)",
                         sp->path, sp->lock);
                if (err) err->pid = pid;
                return PB_SPOOL_ELOCKED;
            }
        }
        /* Locked: is the file still the one at path? (The previous holder
         * may have compacted it between our open and our lock.) */
        if (stat(sp->path, &now) == 0 && now.st_dev == st.st_dev && now.st_ino == st.st_ino) {
            char pid[32];
            int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
            if (n > 0 && pwrite(sp->lockfd, pid, (size_t)n, 0) == n)
                (void)!ftruncate(sp->lockfd, n);
            sp->dirfd = open(sp->dir, O_RDONLY | O_CLOEXEC
#ifdef O_DIRECTORY
                                          | O_DIRECTORY
#endif
            );
            return PB_SPOOL_OK;
        }
        close(sp->fd);
        sp->fd = -1;
    }
    return fail(err, PB_SPOOL_ESYS, EAGAIN, "%s: the file keeps being replaced", sp->path);
}

static void free_spool(pb_spool *sp)
{
    if (sp->fd >= 0) close(sp->fd);
    if (sp->corruptfd >= 0) close(sp->corruptfd);
    if (sp->dirfd >= 0) close(sp->dirfd);
    if (sp->lockfd >= 0) close(sp->lockfd); /* releases the lock */
    pb_buf_free(&sp->wbuf);
    pb_buf_free(&sp->rbuf);
    pb_free(sp->alloc, sp->ents, sp->cap * sizeof *sp->ents);
    pb_free(sp->alloc, sp->names, sp->names_size);
    pb_free(sp->alloc, sp, sizeof *sp);
}

/* Lays out path, <path>.tmp, <path>.corrupt, <path>.lock and the directory
 * in one block. */
static int make_names(pb_spool *sp, const char *path)
{
    size_t plen = strlen(path);
    char *p, *slash;
    if (plen > ((size_t)-1 - 32) / 5) return -1;
    sp->names_size = 5 * plen + 32;
    sp->names = p = pb_malloc(sp->alloc, sp->names_size);
    if (!p) return -1;
    sp->path = p;
    memcpy(p, path, plen + 1);
    p += plen + 1;
    sp->tmp = p;
    memcpy(p, path, plen);
    memcpy(p + plen, ".tmp", 5);
    p += plen + 5;
    sp->corrupt = p;
    memcpy(p, path, plen);
    memcpy(p + plen, ".corrupt", 9);
    p += plen + 9;
    sp->lock = p;
    memcpy(p, path, plen);
    memcpy(p + plen, ".lock", 6);
    p += plen + 6;
    sp->dir = p;
    memcpy(p, path, plen + 1);
    slash = strrchr(p, '/');
    if (!slash) strcpy(p, ".");
    else if (slash == p) slash[1] = '\0';
    else *slash = '\0';
    return 0;
}

/* The file a symlink at path points to (following up to 16 links) in buf,
 * or path itself: compaction must replace that file, not the link. */
static const char *follow_links(const char *path, char *buf, size_t cap)
{
    char link[4096];
    struct stat st;
    size_t n = strlen(path);
    int hops;
    if (n >= cap) return path;
    memcpy(buf, path, n + 1);
    for (hops = 0; hops < 16; hops++) {
        ssize_t r;
        size_t keep = 0;
        if (lstat(buf, &st) != 0 || !S_ISLNK(st.st_mode)) return hops ? buf : path;
        r = readlink(buf, link, sizeof link - 1);
        if (r <= 0) return path;
        link[r] = '\0';
        if (link[0] != '/') { /* relative to the link's directory */
            char *slash = strrchr(buf, '/');
            keep = slash ? (size_t)(slash - buf) + 1 : 0;
        }
        if (keep + (size_t)r >= cap) return path;
        memcpy(buf + keep, link, (size_t)r + 1);
    }
    return path;
}

int pb_spool_open(pb_spool **out, const char *path, const pb_spool_opts *opts, pb_spool_err *err)
{
    pb_spool_opts o;
    pb_spool *sp;
    unsigned long long size = 0, tail = 0;
    int rc;
    *out = NULL;
    if (opts) o = *opts;
    else memset(&o, 0, sizeof o);
    if (!path[0]) return fail(err, PB_SPOOL_EINVAL, ENOENT, "the spool path is empty");
    sp = pb_malloc(o.alloc, sizeof *sp);
    if (!sp) return fail(err, PB_SPOOL_ENOMEM, ENOMEM, "%s: not enough memory", path);
    memset(sp, 0, sizeof *sp);
    sp->alloc = o.alloc;
    sp->fd = sp->lockfd = sp->dirfd = sp->corruptfd = -1;
    pb_buf_init(&sp->wbuf, o.alloc);
    pb_buf_init(&sp->rbuf, o.alloc);
    sp->io.pwrite = o.io && o.io->pwrite ? o.io->pwrite : sys_pwrite;
    sp->io.ftruncate = o.io && o.io->ftruncate ? o.io->ftruncate : sys_ftruncate;
    sp->io.fsync = o.io && o.io->fsync ? o.io->fsync : sys_fsync;
    sp->io.ud = o.io ? o.io->ud : NULL;
    sp->compact_after = o.compact_after ? o.compact_after : PB_SPOOL_COMPACT_AFTER;
    sp->max_record = o.max_record ? o.max_record : PB_SPOOL_MAX_RECORD;
    if (sp->max_record > ((size_t)-1) / 2) sp->max_record = ((size_t)-1) / 2;
    sp->max_line = sp->max_record + 9 + 18; /* checksum, space, "+<id> " */
    {
        char target[4096];
        if (make_names(sp, follow_links(path, target, sizeof target)) != 0) {
            pb_free(sp->alloc, sp, sizeof *sp);
            return fail(err, PB_SPOOL_ENOMEM, ENOMEM, "%s: not enough memory", path);
        }
    }
    rc = open_locked(sp, err);
    if (rc == PB_SPOOL_OK) rc = scan(sp, &size, &tail, err);
    if (rc != PB_SPOOL_OK) {
        free_spool(sp);
        return rc;
    }
    sp->good_len = tail;
    if (corrupt_sync(sp) != 0 || sp->corrupt_errno) {
        /* What could not be saved must stay: no compaction until reopened. */
        sp->compaction_off = sp->corrupt_errno ? sp->corrupt_errno : EIO;
        sp->corrupt_errno = 0;
        push_event(sp, PB_SPOOL_CORRUPT_FAILED, 0, 0, 0, 0, 0, sp->compaction_off);
    }
    if (tail < size || dead_bytes(sp) > 0) {
        pb_spool_err cerr;
        if (!sp->compaction_off) {
            if (pb_spool_compact(sp, &cerr) == PB_SPOOL_OK) tail = size = 0;
            else push_event(sp, PB_SPOOL_COMPACT_FAILED, 0, 0, 0, 0, 0, cerr.sys);
        }
    }
    if (tail < size) { /* a torn last line, still in the file */
        if (!sp->compaction_off) { /* saved: cut it off */
            if (sp->io.ftruncate(sp->io.ud, sp->fd, (off_t)tail) != 0) sp->tail_broken = 1;
        } else { /* kept: the next record starts on a line of its own */
            sp->good_len = size;
            sp->need_nl = 1;
        }
    }
    if (sp->good_len > sp->peak) sp->peak = sp->good_len;
    sp->done_since = 0;
    *out = sp;
    return PB_SPOOL_OK;
}

int pb_spool_close(pb_spool *sp, pb_spool_err *err)
{
    int rc;
    if (!sp) return PB_SPOOL_OK;
    rc = pb_spool_sync(sp, err);
    if (rc == PB_SPOOL_OK) rc = sync_file(sp, 1, err);
    free_spool(sp);
    return rc;
}
