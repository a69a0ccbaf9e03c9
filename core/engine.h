/* engine.h - the HTTP engine: libcurl's multi interface behind a small API.
 *
 * One engine = one curl multi handle (its connection cache gives keep-alive
 * reuse and HTTP/2 multiplexing), a pool of reusable easy handles and a
 * queue of prepared transfers. The caller adds requests (they start at once
 * while fewer than max_running run, and wait in the engine's queue
 * otherwise, so a finished transfer is replaced without a round trip to the
 * caller), drives them with pb_engine_perform (never blocking longer than
 * asked), and takes finished ones with pb_engine_next. Requests are checked
 * before anything is sent: only http/https, a host, bounded sizes, and no
 * CR, LF or NUL in the method, URL, headers or credentials. No Lua here, and
 * no global state besides libcurl's own (pb_engine_global_init, reference
 * counted by curl). */
#ifndef PB_ENGINE_H
#define PB_ENGINE_H

#include <stddef.h>

typedef struct pb_engine pb_engine;

struct pb_req;
struct pb_netpolicy;

/* Size bounds of what may be sent. */
#define PB_MAX_URL_DEFAULT 16384u   /* a rendered URL (pb_req.max_url overrides) */
#define PB_MAX_HEADER_LINE 8192u    /* one "Name: value" line */
#define PB_MAX_HEADERS_TOTAL 65536u /* all request header lines together */

typedef struct pb_engine_opts {
    long max_host_connections;  /* 0 = no limit */
    long max_total_connections; /* 0 = no limit */
    size_t max_running;         /* transfers running at once; 0 = no limit */
    /* The destination policy every address is checked against at connect
     * time (CURLOPT_OPENSOCKETFUNCTION), redirects included; through a
     * proxy, which resolves names, only an IP-literal host, before the
     * transfer starts. NULL = none.
     * The engine takes it over (it frees it) when pb_engine_new succeeds. */
    struct pb_netpolicy *policy;
    unsigned url_flags;         /* PB_URL_ALLOW_USERINFO: user info may be sent */
    /* Options for pb_engine_get (all but url, method and body are used;
     * copied). NULL = plain GETs with libcurl's defaults. */
    const struct pb_req *profile;
} pb_engine_opts;

typedef struct pb_req {
    const char *method;          /* "GET", "POST", ... (NULL = GET) */
    const char *url;
    size_t url_len;              /* 0 = strlen(url) */
    const char *const *headers;  /* "Name: value" lines, NUL-terminated */
    size_t nheaders;
    const char *body;            /* NULL = no body */
    size_t body_len;
    const char *username;        /* HTTP Basic credentials, or NULL */
    const char *password;
    long timeout_ms;             /* whole transfer; 0 = none */
    long connect_timeout_ms;     /* 0 = libcurl's default */
    size_t max_body;             /* response body cap; 0 = 16 MiB */
    size_t max_url;              /* request URL cap; 0 = PB_MAX_URL_DEFAULT */
    int insecure;                /* 1 = skip TLS verification */
    const char *ca_file;         /* NULL = system store */
    long follow;                 /* redirects to follow (0 = none) */
    int fresh_connect;           /* 1 = a new connection: libcurl then never re-sends the
                                  * request by itself (it does on a reused connection
                                  * that closes early, even for a POST) */
    const char *user_agent;      /* NULL = none */
    const char *proxy;           /* NULL or "" = no proxy (the *_proxy environment is
                                  * ignored); a proxy takes every host */
    int proxy_from_env;          /* 1 = the *_proxy environment, as pb_engine_new read
                                  * it (see there), unless proxy is set */
    unsigned long long tag;      /* the caller's id, given back in the result */
    int user;                    /* the caller's flags, given back in the result */
} pb_req;

/* The request options that come from callers by name, listed once: the
 * binding reads them from Lua tables with these names and bounds (checked,
 * so no value reaches an out-of-range conversion), and the docs check lists
 * them. X(kind, name, member, min, max) with kind STR (a string), MS
 * (seconds, stored as milliseconds), SIZE (bytes), LONG or FLAG (boolean). */
#define PB_REQUEST_OPTIONS(X)                                   \
    X(STR, username, username, 0, 0)                            \
    X(STR, password, password, 0, 0)                            \
    X(STR, ca_file, ca_file, 0, 0)                              \
    X(STR, user_agent, user_agent, 0, 0)                        \
    X(STR, proxy, proxy, 0, 0)                                  \
    X(MS, timeout, timeout_ms, 0.001, 1e6)                      \
    X(MS, connect_timeout, connect_timeout_ms, 0.001, 1e6)      \
    X(SIZE, max_body, max_body, 1, 1073741824.0)                \
    X(SIZE, max_url, max_url, 16, 16777216.0)                   \
    X(LONG, follow, follow, 0, 100)                             \
    X(FLAG, insecure, insecure, 0, 0)                           \
    X(FLAG, fresh_connect, fresh_connect, 0, 0)                 \
    X(FLAG, proxy_from_env, proxy_from_env, 0, 0)

/* Why a transfer failed (pb_result.fail). */
enum {
    PB_FAIL_NONE = 0,
    PB_FAIL_TIMEOUT,   /* connect or total timeout */
    PB_FAIL_CONNECT,   /* resolving or connecting failed: nothing was sent */
    PB_FAIL_TRANSPORT, /* the connection broke (reset, truncated answer, ...) */
    PB_FAIL_TLS,       /* certificate or handshake problem */
    PB_FAIL_TOO_LARGE, /* the answer was over max_body */
    PB_FAIL_BLOCKED    /* every address of the host was refused by the policy:
                        * nothing was sent */
};

typedef struct pb_result {
    unsigned long long tag;
    int user;
    long status;          /* HTTP status, 0 when none arrived */
    const char *body;     /* valid until the next call on the engine */
    size_t body_len;
    const char *headers;  /* raw header block of the final response; for GETs
                           * with the profile only Retry-After, and only when
                           * the status is not 2xx */
    size_t headers_len;
    const char *url;      /* the URL as it was requested */
    size_t url_len;
    int fail;             /* PB_FAIL_* */
    int sent;             /* 0 when the request certainly never left */
    const char *error;    /* why, when fail != 0 */
    double seconds;       /* total time */
} pb_result;

/* libcurl's global set-up; call once per process before the first engine
 * (curl counts calls, so every user may call it). Returns 0 on success. */
int pb_engine_global_init(void);
void pb_engine_global_cleanup(void);

/* Returns NULL when memory runs out or the profile is invalid (a reason in
 * why when given). The proxy environment is read here, once, as libcurl
 * reads it (http_proxy; https_proxy or HTTPS_PROXY; all_proxy or ALL_PROXY;
 * no_proxy or NO_PROXY): with proxy_from_env the engine routes each
 * transfer itself, through the proxy the environment names for its scheme
 * and host, or directly, every address checked by the policy. */
pb_engine *pb_engine_new(const pb_engine_opts *o, char *why, size_t whylen);
/* Aborts every transfer and frees everything. */
void pb_engine_free(pb_engine *e);

/* Return codes besides PB_OK and PB_ENOMEM. */
#define PB_EINVAL (-3) /* the request was refused: nothing was sent */
#define PB_ECURL (-4)  /* libcurl's multi interface failed */
#define PB_EBLOCKED (-5) /* the destination is refused by the policy: nothing was sent */

/* Starts a request, or queues it while max_running transfers run. Returns
 * PB_OK, PB_ENOMEM, or PB_EINVAL with a reason in why (then nothing was
 * sent). */
int pb_engine_add(pb_engine *e, const pb_req *r, char *why, size_t whylen);

/* Starts (or queues) a GET of url (len bytes, no NUL inside) with the
 * engine's profile: the fast path for firing postbacks. A pooled handle
 * that already carries the profile is reused as it is, with only its URL
 * changed. Same returns as pb_engine_add. */
int pb_engine_get(pb_engine *e, const char *url, size_t len, unsigned long long tag, int user,
                  char *why, size_t whylen);

/* Drives transfers, waiting at most timeout_ms (0 = never wait) for one to
 * finish. Starts queued transfers as others finish. Returns the number of
 * finished transfers waiting to be taken, or PB_ECURL. */
int pb_engine_perform(pb_engine *e, long timeout_ms);

/* Takes the next finished transfer into out; returns 1, or 0 when none. The
 * result's strings stay valid until the next call on the engine. */
int pb_engine_next(pb_engine *e, pb_result *out);

/* Transfers added and not yet taken by pb_engine_next (queued, running or
 * finished). */
size_t pb_engine_pending(const pb_engine *e);

#endif
