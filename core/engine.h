/* engine.h - the HTTP engine: libcurl's multi interface behind a small API.
 *
 * One engine = one curl multi handle (its connection cache gives keep-alive
 * reuse and HTTP/2 multiplexing) plus a pool of reusable easy handles. The
 * caller adds requests, drives them with pb_engine_perform (never blocking
 * longer than asked), and takes finished ones with pb_engine_next. Requests
 * are checked before anything is sent: only http/https, a host, and no CR,
 * LF or NUL in the method, URL or headers. No Lua here, and no global state
 * besides libcurl's own (pb_engine_global_init, reference counted by curl). */
#ifndef PB_ENGINE_H
#define PB_ENGINE_H

#include <stddef.h>

typedef struct pb_engine pb_engine;

struct pb_req;

typedef struct pb_engine_opts {
    long max_host_connections;  /* 0 = no limit */
    long max_total_connections; /* 0 = no limit */
    /* Options for pb_engine_get (all but url, method and body are used;
     * copied). NULL = plain GETs with libcurl's defaults. */
    const struct pb_req *profile;
} pb_engine_opts;

typedef struct pb_req {
    const char *method;          /* "GET", "POST", ... (NULL = GET) */
    const char *url;
    const char *const *headers;  /* "Name: value" lines, NUL-terminated */
    size_t nheaders;
    const char *body;            /* NULL = no body */
    size_t body_len;
    const char *username;        /* HTTP Basic credentials, or NULL */
    const char *password;
    long timeout_ms;             /* whole transfer; 0 = none */
    long connect_timeout_ms;     /* 0 = libcurl's default */
    size_t max_body;             /* response body cap; 0 = 16 MiB */
    int insecure;                /* 1 = skip TLS verification */
    const char *ca_file;         /* NULL = system store */
    long follow;                 /* redirects to follow (0 = none) */
    int fresh_connect;           /* 1 = a new connection: libcurl then never re-sends the
                                  * request by itself (it does on a reused connection
                                  * that closes early, even for a POST) */
    const char *user_agent;      /* NULL = none */
    unsigned long long tag;      /* the caller's id, given back in the result */
} pb_req;

/* Why a transfer failed (pb_result.fail). */
enum {
    PB_FAIL_NONE = 0,
    PB_FAIL_TIMEOUT,   /* connect or total timeout */
    PB_FAIL_CONNECT,   /* resolving or connecting failed: nothing was sent */
    PB_FAIL_TRANSPORT, /* the connection broke (reset, truncated answer, ...) */
    PB_FAIL_TLS,       /* certificate or handshake problem */
    PB_FAIL_TOO_LARGE, /* the answer was over max_body */
    PB_FAIL_CANCELLED  /* pb_engine_cancel */
};

typedef struct pb_result {
    unsigned long long tag;
    long status;          /* HTTP status, 0 when none arrived */
    const char *body;     /* valid until the next call on the engine */
    size_t body_len;
    const char *headers;  /* raw header block of the final response */
    size_t headers_len;
    int fail;             /* PB_FAIL_* */
    int sent;             /* 0 when the request certainly never left */
    const char *error;    /* libcurl's message when fail != 0 */
    double seconds;       /* total time */
} pb_result;

/* libcurl's global set-up; call once per process before the first engine
 * (curl counts calls, so every user may call it). Returns 0 on success. */
int pb_engine_global_init(void);
void pb_engine_global_cleanup(void);
/* libcurl's version string, e.g. "libcurl/7.88.1 OpenSSL/3.0.11 ..." */
const char *pb_engine_curl_version(void);

/* Returns NULL when memory runs out or the profile is invalid (a reason in
 * why when given). */
pb_engine *pb_engine_new(const pb_engine_opts *o, char *why, size_t whylen);
/* Aborts every transfer and frees everything. */
void pb_engine_free(pb_engine *e);

/* Starts a request. Returns PB_OK, PB_ENOMEM, or PB_EINVAL with a reason in
 * why (then nothing was sent). */
#define PB_EINVAL (-3)
int pb_engine_add(pb_engine *e, const pb_req *r, char *why, size_t whylen);

/* Starts a GET of url with the engine's profile (see pb_engine_opts): the
 * fast path for firing postbacks. A pooled handle that already carries the
 * profile is reused as it is, with only its URL changed. Same returns as
 * pb_engine_add. */
int pb_engine_get(pb_engine *e, const char *url, unsigned long long tag, char *why,
                  size_t whylen);

/* Drives transfers, waiting at most timeout_ms (0 = never wait) for one to
 * finish. Returns the number of finished transfers waiting to be taken, or
 * PB_ENOMEM / PB_EINVAL on an engine failure. */
int pb_engine_perform(pb_engine *e, long timeout_ms);

/* Takes the next finished transfer into out; returns 1, or 0 when none. The
 * result's strings stay valid until the next call on the engine. */
int pb_engine_next(pb_engine *e, pb_result *out);

/* Transfers started and not yet taken by pb_engine_next. */
size_t pb_engine_pending(const pb_engine *e);
/* Transfers running right now (not yet finished). */
size_t pb_engine_running(const pb_engine *e);

/* Cancels a transfer by tag (it finishes with PB_FAIL_CANCELLED). Returns 1
 * when found. */
int pb_engine_cancel(pb_engine *e, unsigned long long tag);

#endif
