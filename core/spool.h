/* spool.h - durable spools: checksummed record files and the spool of owed
 * records built on them.
 *
 * A record file is a sequence of lines "XXXXXXXX <body>\n", where XXXXXXXX
 * is the CRC-32 (IEEE, lowercase hex) of the body. A torn or damaged line
 * fails its checksum. The migrate journal writes such a file directly
 * (pb_spool_file_*); the spool below keeps its records in one.
 *
 * The spool (pb_spool) is a set of owed records with increasing ids. Its
 * bodies are:
 *   "+<id> <payload>"   a record added (owed until marked done)
 *   "-<id>"             the record is done (delivered, or discarded)
 *   "=<id>"             the highest id used so far (first line after a
 *                       compaction, so ids keep increasing across restarts)
 * What it guarantees:
 *   - An add that returned an id is in the file (written with pwrite before
 *     pb_spool_add returns; on disk after pb_spool_sync).
 *   - A failed write (no space, I/O error, short write) is cut back to the
 *     last whole record with ftruncate; while that cut fails, adds are
 *     refused (PB_SPOOL_ETAIL) and retried on the next add.
 *   - Damaged lines found at open (bad checksum, torn, unknown format, too
 *     long, a repeated id) are appended raw to "<path>.corrupt", reported as
 *     events and dropped by the next compaction; never fatal.
 *   - An exclusive lock (flock on "<path>.lock", which compaction does not
 *     replace): a second opener, in this process or another, gets
 *     PB_SPOOL_ELOCKED with the holder's pid.
 *   - Compaction writes the owed records to "<path>.tmp", syncs it, renames
 *     it over the spool and syncs the directory; the file keeps its mode (and
 *     its owner when running as root). It runs in pb_spool_sync once
 *     `compact_after` records were marked done since the last one and the
 *     done records take at least as many bytes as the owed ones, so the file
 *     stays within about twice what is owed, and at open when the file holds
 *     anything else than owed records.
 * Memory is one small entry per owed record (payloads stay on disk), a
 * read buffer of about a line, a write buffer of a line (up to 64 KiB more
 * while compacting) and a ring of PB_SPOOL_MAX_EVENTS events; an open
 * reads the file once, in bounded chunks.
 *
 * No global state: everything hangs off the pb_spool. Not thread-safe: one
 * spool, one thread at a time. */
#ifndef PB_SPOOL_H
#define PB_SPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "alloc.h"
#include "buf.h"
#include "validate.h"

uint32_t pb_crc32(const void *data, size_t len);

/* Checks a line (without its '\n'); returns the body's offset (9) or -1. */
long pb_spool_check(const char *line, size_t len);

/* ---- record files (the migrate journal) ---------------------------------- */

/* Opens (creating, mode 0600) path for appending; returns fd or -1. */
int pb_spool_file_open(const char *path);
/* Appends the record for payload (must not contain '\n') with one write;
 * a failed or short write is cut back off the file. 0 or -1 (errno). */
int pb_spool_file_append(int fd, const char *payload, size_t len);
/* Flushes written records to the disk (fdatasync); 0 or -1. */
int pb_spool_file_sync(int fd);
void pb_spool_file_close(int fd);

/* ---- the spool ---------------------------------------------------------- */

typedef struct pb_spool pb_spool;

/* Return codes (PB_SPOOL_OK = 0). */
enum {
    PB_SPOOL_OK = 0,
    PB_SPOOL_ESYS = -1,    /* a system call failed: err->sys holds errno */
    PB_SPOOL_ENOMEM = -2,  /* an allocation failed; nothing was written */
    PB_SPOOL_ELOCKED = -3, /* held by another opener: err->pid (0 = unknown) */
    PB_SPOOL_ETAIL = -4,   /* refused: a failed write left bytes that could not be cut */
    PB_SPOOL_ETOOBIG = -5, /* payload longer than max_record */
    PB_SPOOL_EINVAL = -6   /* payload with '\n'; path not a regular file; ids exhausted */
};

/* An error: code, errno when it comes from a system call, the lock
 * holder's pid, and a message for people (naming the path). */
typedef struct pb_spool_err {
    int code;
    int sys;
    long pid;
    char msg[512];
} pb_spool_err;

/* What an event reports. */
enum {
    PB_SPOOL_DAMAGED_CHECKSUM = 1, /* the line fails its checksum */
    PB_SPOOL_DAMAGED_TORN,         /* the last line, without its '\n' */
    PB_SPOOL_DAMAGED_FORMAT,       /* checksum right, body not a spool record */
    PB_SPOOL_DAMAGED_TOO_LONG,     /* longer than max_record allows */
    PB_SPOOL_DAMAGED_DUPLICATE,    /* an add repeating an id already owed */
    PB_SPOOL_DISCARDED,            /* pb_spool_discard: moved out by the caller */
    PB_SPOOL_COMPACT_FAILED,       /* a compaction failed (sys); the spool is as it was */
    PB_SPOOL_CORRUPT_FAILED        /* <path>.corrupt could not be written (sys):
                                      damaged lines stay in the spool and
                                      compaction is off until the next open */
};

typedef struct pb_spool_event {
    int what;                /* one of the enum above */
    unsigned long long line; /* 1-based line number at open; 0 when not from a read */
    unsigned long long offset; /* of the line in the file it was read from */
    size_t length;           /* bytes of the line, without '\n' */
    long long id;            /* the record's id when readable, else 0 */
    int saved;               /* the line was appended to <path>.corrupt */
    int sys;                 /* errno, for the failures */
} pb_spool_event;

/* Events waiting to be taken; more are counted in events_dropped. */
#define PB_SPOOL_MAX_EVENTS 256

typedef struct pb_spool_stats {
    size_t owed;                    /* records owed */
    unsigned long long owed_bytes;  /* their lines' bytes */
    unsigned long long bytes;       /* the file's length (whole records) */
    unsigned long long peak_bytes;  /* the largest it was since open */
    unsigned long long corrupt;     /* damaged records found (and discarded) since open */
    unsigned long long compactions; /* done since open (the one at open included) */
    unsigned long long compact_failures;
    unsigned long long added, done; /* since open */
    unsigned long long events_dropped;
    long long last_id;              /* the highest id used */
    int tail_broken;                /* adds are refused until the tail is cut */
    int compaction_off;             /* see PB_SPOOL_CORRUPT_FAILED */
} pb_spool_stats;

/* System calls the spool writes with; NULL members (or a NULL io) mean the
 * system's. Tests inject failures through them. */
typedef struct pb_spool_io {
    ssize_t (*pwrite)(void *ud, int fd, const void *p, size_t n, off_t off);
    int (*ftruncate)(void *ud, int fd, off_t len);
    int (*fsync)(void *ud, int fd, int full); /* full: fsync, else fdatasync */
    void *ud;
} pb_spool_io;

typedef struct pb_spool_opts {
    const pb_alloc *alloc;       /* NULL = malloc */
    unsigned long compact_after; /* 0 = PB_SPOOL_COMPACT_AFTER */
    size_t max_record;           /* longest payload; 0 = PB_SPOOL_MAX_RECORD */
    const pb_spool_io *io;       /* NULL = the system calls */
} pb_spool_opts;

#define PB_SPOOL_COMPACT_AFTER 1000
#define PB_SPOOL_MAX_RECORD (1024 * 1024)
#define PB_SPOOL_MAX_ID PB_MAX_ID /* 2^53 - 1: exact in a double */

/* Opens (creating, mode 0600) the spool at path: takes the lock, reads the
 * file, moves damaged lines out, compacts when the file holds more than the
 * owed records. On failure *out is NULL, err says why and the file is as it
 * was. opts may be NULL. */
int pb_spool_open(pb_spool **out, const char *path, const pb_spool_opts *opts, pb_spool_err *err);

/* Appends a record for payload (no '\n') and sets *id to its new id. */
int pb_spool_add(pb_spool *sp, const char *payload, size_t len, long long *id, pb_spool_err *err);

/* Marks id done: 1 when it was owed (the record is no longer owed even when
 * writing the mark failed: then an error is returned), 0 when it was not. */
int pb_spool_done(pb_spool *sp, long long id, pb_spool_err *err);

/* Moves an owed record to <path>.corrupt and marks it done (for records the
 * caller cannot use); reported as a PB_SPOOL_DISCARDED event. 1, 0 or error. */
int pb_spool_discard(pb_spool *sp, long long id, pb_spool_err *err);

/* The first owed record with an id above `after`: 1 with *id set and its
 * payload appended to out, 0 when there is none. A record found damaged on
 * the way is discarded (an event) and skipped. */
int pb_spool_next(pb_spool *sp, long long after, long long *id, pb_buf *out, pb_spool_err *err);

/* Writes the records added since the last sync to the disk (one
 * fdatasync, with the done marks written since), or compacts when due
 * (which syncs). Done marks alone are not synced: one lost to a power cut
 * means a record is owed again (delivered twice), never one lost. A failed
 * compaction is an event, not an error. */
int pb_spool_sync(pb_spool *sp, pb_spool_err *err);

/* Compacts now: the file then holds the owed records and nothing else. */
int pb_spool_compact(pb_spool *sp, pb_spool_err *err);

/* Takes up to cap waiting events into out (oldest first); returns how many. */
size_t pb_spool_events(pb_spool *sp, pb_spool_event *out, size_t cap);

void pb_spool_get_stats(const pb_spool *sp, pb_spool_stats *st);

/* The path the spool was opened with. */
const char *pb_spool_path(const pb_spool *sp);

/* Syncs everything (compacting when due), releases the lock and frees sp. The result
 * is the sync's; sp is freed either way. NULL is fine. */
int pb_spool_close(pb_spool *sp, pb_spool_err *err);

/* A short English description of an event's `what` ("checksum mismatch"). */
const char *pb_spool_what(int what);

#endif
