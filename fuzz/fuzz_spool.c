/* fuzz_spool.c - libFuzzer harness for the spool reader (core/spool.c).
 *
 * The input is the content of a spool file (any bytes). Opening it must
 * never crash or fail, and:
 *   - every damaged line is reported once and saved: <path>.corrupt holds
 *     exactly the reported lines, each with a '\n';
 *   - stats().corrupt counts the reports;
 *   - the owed records come in increasing id order, as many as stats().owed;
 *   - after an add, a done and a compaction, a reopen finds nothing damaged
 *     and the same owed records, and a new id above every id seen.
 * Writes go through the io hooks with a no-op fsync (speed); the allocator
 * checks every osize.
 *
 *   make build/fuzz/fuzz_spool && build/fuzz/fuzz_spool fuzz/seeds/fuzz_spool */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/spool.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_NAME "fuzz_spool"
#include "fuzz/fuzz_common.h"

static ssize_t io_pwrite(void *ud, int fd, const void *p, size_t n, off_t off)
{
    (void)ud;
    return pwrite(fd, p, n, off);
}

static int io_ftruncate(void *ud, int fd, off_t len)
{
    (void)ud;
    return ftruncate(fd, len);
}

static int io_fsync(void *ud, int fd, int full)
{
    (void)ud;
    (void)fd;
    (void)full;
    return 0;
}

static long size_of(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* The owed ids (up to cap) and their payloads' total length; the count. */
static size_t owed(pb_spool *sp, long long *ids, size_t cap, size_t *bytes)
{
    pb_buf b;
    pb_spool_err e;
    long long id = 0, after = 0;
    size_t n = 0;
    int rc;
    pb_buf_init(&b, NULL);
    *bytes = 0;
    while ((rc = pb_spool_next(sp, after, &id, &b, &e)) == 1) {
        if (id <= after) FAIL("owed ids not increasing: %lld after %lld", id, after);
        if (n < cap) ids[n] = id;
        n++;
        after = id;
    }
    if (rc < 0) FAIL("next: %s", e.msg);
    *bytes = b.len;
    pb_buf_free(&b);
    return n;
}

static char dir[64]; /* the harness's directory, removed at exit */

static void cleanup(void)
{
    static const char *const names[] = { "s", "s.lock", "s.corrupt", "s.tmp" };
    char p[96];
    size_t i;
    for (i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[96], corrupt[112];
    pb_spool *sp = NULL;
    pb_spool_err e;
    pb_spool_opts o;
    pb_spool_io io;
    pb_spool_stats st;
    pb_spool_event ev[PB_SPOOL_MAX_EVENTS];
    pb_alloc a;
    track tr;
    long long ids[64], ids2[64], id;
    size_t nev, i, n, n2, bytes, bytes2;
    unsigned long long saved = 0;
    FILE *f;
    if (!dir[0]) {
        strcpy(dir, "/tmp/fuzz-spool-XXXXXX");
        if (!mkdtemp(dir)) FAIL("mkdtemp");
        atexit(cleanup);
    }
    snprintf(path, sizeof path, "%s/s", dir);
    snprintf(corrupt, sizeof corrupt, "%s/s.corrupt", dir);
    unlink(corrupt);
    f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) FAIL("cannot write %s", path);

    memset(&tr, 0, sizeof tr);
    a.fn = track_fn;
    a.ud = &tr;
    io.pwrite = io_pwrite;
    io.ftruncate = io_ftruncate;
    io.fsync = io_fsync;
    io.ud = NULL;
    memset(&o, 0, sizeof o);
    o.alloc = &a;
    o.io = &io;
    o.max_record = 200;
    o.compact_after = 1;
    if (pb_spool_open(&sp, path, &o, &e) != PB_SPOOL_OK) FAIL("open: %s", e.msg);
    nev = pb_spool_events(sp, ev, PB_SPOOL_MAX_EVENTS);
    pb_spool_get_stats(sp, &st);
    if (st.events_dropped) { /* reports were capped: nothing to compare */
        pb_spool_close(sp, NULL);
        return 0;
    }
    for (i = 0; i < nev; i++) {
        if (ev[i].what < PB_SPOOL_DAMAGED_CHECKSUM || ev[i].what > PB_SPOOL_DAMAGED_DUPLICATE)
            FAIL("unexpected event %d", ev[i].what);
        if (!ev[i].saved) FAIL("a damaged line was not saved");
        if (ev[i].offset + ev[i].length > size) FAIL("damage past the end of the file");
        saved += ev[i].length + 1;
    }
    if (st.corrupt != nev) FAIL("corrupt %llu, %lu reports", st.corrupt, (unsigned long)nev);
    if ((long)saved != size_of(corrupt)) FAIL(".corrupt has %ld bytes, %llu reported", size_of(corrupt), saved);
    n = owed(sp, ids, 64, &bytes);
    if (n != st.owed) FAIL("%lu owed listed, stats say %lu", (unsigned long)n, (unsigned long)st.owed);

    if (pb_spool_add(sp, "new", 3, &id, &e) != PB_SPOOL_OK) FAIL("add: %s", e.msg);
    if (id != st.last_id + 1) FAIL("new id %lld after last id %lld", id, st.last_id);
    if (n && pb_spool_done(sp, ids[0], &e) != 1) FAIL("done of an owed id");
    if (pb_spool_compact(sp, &e) != PB_SPOOL_OK) FAIL("compact: %s", e.msg);
    if (pb_spool_close(sp, &e) != PB_SPOOL_OK) FAIL("close: %s", e.msg);

    if (pb_spool_open(&sp, path, &o, &e) != PB_SPOOL_OK) FAIL("reopen: %s", e.msg);
    if (pb_spool_events(sp, ev, PB_SPOOL_MAX_EVENTS) != 0) FAIL("damage found after a compaction");
    n2 = owed(sp, ids2, 64, &bytes2);
    if (n2 != (n ? n : 1))
        FAIL("%lu owed after reopen, %lu before (one done, one added)", (unsigned long)n2,
             (unsigned long)n);
    for (i = 0; i + 1 < n && i < 63; i++)
        if (ids2[i] != ids[i + 1]) FAIL("owed ids changed across a reopen");
    if (n2 <= 64 && ids2[n2 - 1] != id) FAIL("the added record is not last");
    if (pb_spool_add(sp, "x", 1, &id, &e) != PB_SPOOL_OK) FAIL("add after reopen: %s", e.msg);
    pb_spool_close(sp, NULL);
    (void)bytes2;
    return 0;
}
