/* spool.h - an append-only file with checksummed lines, for durable queues.
 *
 * Each record is one line "XXXXXXXX <payload>\n" where XXXXXXXX is the
 * CRC-32 (IEEE) of the payload in hex. A torn or corrupted line fails its
 * checksum and is skipped by readers. */
#ifndef PB_SPOOL_H
#define PB_SPOOL_H

#include <stddef.h>
#include <stdint.h>

uint32_t pb_crc32(const void *data, size_t len);

/* Opens (creating, mode 0600) path for appending; returns fd or -1. */
int pb_spool_open(const char *path);
/* Appends the record for payload (must not contain '\n'); 0 or -1 (errno). */
int pb_spool_append(int fd, const char *payload, size_t len);
/* Flushes written records to the disk (fdatasync); 0 or -1. */
int pb_spool_sync(int fd);
void pb_spool_close(int fd);
/* Checks a line (without its '\n'); returns the payload offset or -1. */
long pb_spool_check(const char *line, size_t len);
/* Atomically replaces path with the records of payloads, synced:
 * writes path.tmp, fsyncs, renames, fsyncs the directory. 0 or -1. */
int pb_spool_rewrite(const char *path, const char *const *payloads, const size_t *lens, size_t n);

#endif
