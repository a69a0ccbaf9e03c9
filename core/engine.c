/* engine.c - libcurl multi engine: reusable easy handles, a queue of
 * prepared transfers, a done queue. */
#include "engine.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/socket.h>

#include "buf.h"
#include "clock.h"
#include "netpolicy.h"
#include "url.h"

#define DEFAULT_MAX_BODY (16u * 1024u * 1024u)
#define MAX_RESPONSE_HEADER_BYTES (64u * 1024u)
#define KEEP_BUFFER_BYTES (64u * 1024u) /* larger buffers are freed on reuse */
#define MAX_FREE_HANDLES 512

typedef struct xfer {
    CURL *easy;
    struct curl_slist *hdrs;
    pb_buf body, head, url;
    size_t max_body;
    int too_large, nomem;
    int headers_done; /* the blank line that ends the final headers arrived */
    int fail, sent;
    long status;
    double seconds;
    char err[CURL_ERROR_SIZE];
    unsigned long long tag;
    int user;
    int has_profile;  /* configured with the engine's profile, as pb_engine_get leaves it:
                       * 1 + https, + 2 when through a proxy (see prepare_get) */
    int lean_headers; /* headers not kept: Retry-After is read once at the end */
    const pb_netpolicy *policy; /* the engine's, when addresses are checked */
    int blocked;                /* addresses refused by the policy */
    char blocked_why[PB_NETPOLICY_WHY];
    struct xfer *prev, *next;
} xfer;

/* A GET waiting for a slot: just its URL (checked and converted already);
 * it gets an easy handle when it starts. */
typedef struct pend {
    struct pend *next;
    unsigned long long tag;
    int user;
    size_t len;
    char url[1]; /* len bytes and a NUL */
} pend;

struct pb_engine {
    CURLM *multi;
    pend *pend_head, *pend_tail; /* GETs waiting for a slot */
    xfer *active;                 /* running, doubly linked */
    xfer *queued_head, *queued_tail; /* prepared, waiting for a slot */
    xfer *done_head, *done_tail;  /* finished, not yet taken */
    xfer *free_list;              /* idle easy handles for reuse */
    xfer *last;                   /* handed out by pb_engine_next */
    size_t nactive, nqueued, ndone, nfree;
    size_t max_running;
    pb_netpolicy *policy; /* NULL: no destination checks */
    unsigned url_flags;
    /* The profile of pb_engine_get: a private copy of the caller's pb_req. */
    pb_req profile;
    struct curl_slist *profile_hdrs;
    char *profile_ca, *profile_ua, *profile_user, *profile_pass, *profile_proxy;
    /* The proxy environment, read once (read_proxy_env), for proxy_from_env:
     * the proxy of http and of https URLs (NULL: none), and no_proxy. */
    char *env_proxy[2], *env_noproxy;
};

int pb_engine_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

void pb_engine_global_cleanup(void)
{
    curl_global_cleanup();
}

static char *dup_or_null(const char *s, int *ok)
{
    char *d;
    size_t n;
    if (!s) return NULL;
    n = strlen(s) + 1;
    d = malloc(n);
    if (!d) {
        *ok = 0;
        return NULL;
    }
    memcpy(d, s, n);
    return d;
}

static void set_why(char *why, size_t n, const char *msg)
{
    if (why && n) {
        strncpy(why, msg, n - 1);
        why[n - 1] = '\0';
    }
}

static int token_ok(const char *s)
{
    const char *p;
    if (!*s) return 0;
    for (p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c >= 0x7f || strchr("()<>@,;:\\\"/[]?={}", c)) return 0;
    }
    return 1;
}

/* A header line "Name: value" (value may be empty): a token name, no CR, LF
 * or NUL, at most PB_MAX_HEADER_LINE bytes. */
static int header_ok(const char *h)
{
    const char *colon = strchr(h, ':');
    const char *p;
    size_t len;
    if (!colon || colon == h) return 0;
    for (p = h; p < colon; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c >= 0x7f || strchr("()<>@,;\\\"/[]?={}", c)) return 0;
    }
    len = strlen(h);
    return len <= PB_MAX_HEADER_LINE && pb_find_crlf_nul(colon, strlen(colon)) < 0;
}

/* Checks a header list: each line, and the total size. */
static const char *headers_problem(const char *const *headers, size_t n)
{
    size_t i, total = 0;
    for (i = 0; i < n; i++) {
        if (!header_ok(headers[i]))
            return "invalid header (a \"Name: value\" line of at most 8192 bytes, without CR, LF "
                   "or NUL)";
        total += strlen(headers[i]) + 2;
        if (total > PB_MAX_HEADERS_TOTAL) return "request headers larger than 65536 bytes";
    }
    return NULL;
}

static int has_crlf_nul(const char *s)
{
    return s && pb_find_crlf_nul(s, strlen(s)) >= 0;
}

/* Refuses bad or oversized headers, and CR, LF or NUL in the credentials,
 * the user agent or the proxy. */
static int check_options(const pb_req *r, char *why, size_t whylen)
{
    const char *bad = headers_problem(r->headers, r->nheaders);
    if (bad) {
        set_why(why, whylen, bad);
        return PB_EINVAL;
    }
    if (has_crlf_nul(r->username) || has_crlf_nul(r->password) || has_crlf_nul(r->user_agent) ||
        has_crlf_nul(r->proxy)) {
        set_why(why, whylen, "credentials, user agent or proxy contain CR, LF or NUL");
        return PB_EINVAL;
    }
    return PB_OK;
}

/* Keeps a private copy of the profile (strings and headers included). */
static int copy_profile(pb_engine *e, const pb_req *r)
{
    size_t i;
    int ok = 1;
    e->profile = *r;
    e->profile.url = NULL;
    e->profile.method = NULL;
    e->profile.body = NULL;
    e->profile.headers = NULL;
    e->profile.nheaders = 0;
    e->profile_ca = dup_or_null(r->ca_file, &ok);
    e->profile_ua = dup_or_null(r->user_agent, &ok);
    e->profile_user = dup_or_null(r->username, &ok);
    e->profile_pass = dup_or_null(r->password, &ok);
    e->profile_proxy = dup_or_null(r->proxy, &ok);
    e->profile.ca_file = e->profile_ca;
    e->profile.user_agent = e->profile_ua;
    e->profile.username = e->profile_user;
    e->profile.password = e->profile_pass;
    e->profile.proxy = e->profile_proxy;
    for (i = 0; i < r->nheaders && ok; i++) {
        struct curl_slist *sl = curl_slist_append(e->profile_hdrs, r->headers[i]);
        if (sl) e->profile_hdrs = sl; else ok = 0;
    }
    return ok ? PB_OK : PB_ENOMEM;
}

/* An environment variable, else the second one (when named); NULL when
 * neither is set to something, as libcurl reads them. */
static const char *getenv2(const char *a, const char *b)
{
    const char *v = getenv(a);
    if ((!v || !*v) && b) v = getenv(b);
    return v && *v ? v : NULL;
}

/* Reads the proxy environment as libcurl does: http_proxy (never
 * HTTP_PROXY, which a CGI request could set), https_proxy or HTTPS_PROXY,
 * else all_proxy or ALL_PROXY; no_proxy or NO_PROXY. */
static int read_proxy_env(pb_engine *e)
{
    const char *all = getenv2("all_proxy", "ALL_PROXY");
    const char *http = getenv2("http_proxy", NULL), *https = getenv2("https_proxy", "HTTPS_PROXY");
    int ok = 1;
    e->env_proxy[0] = dup_or_null(http ? http : all, &ok);
    e->env_proxy[1] = dup_or_null(https ? https : all, &ok);
    e->env_noproxy = dup_or_null(getenv2("no_proxy", "NO_PROXY"), &ok);
    return ok ? PB_OK : PB_ENOMEM;
}

pb_engine *pb_engine_new(const pb_engine_opts *o, char *why, size_t whylen)
{
    pb_engine *e;
    if (o && o->profile && check_options(o->profile, why, whylen) != PB_OK) return NULL;
    set_why(why, whylen, "out of memory");
    e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->multi = curl_multi_init();
    if (!e->multi) {
        free(e);
        return NULL;
    }
    if (o && o->max_host_connections > 0)
        curl_multi_setopt(e->multi, CURLMOPT_MAX_HOST_CONNECTIONS, o->max_host_connections);
    if (o && o->max_total_connections > 0)
        curl_multi_setopt(e->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, o->max_total_connections);
    curl_multi_setopt(e->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    if (o) {
        e->max_running = o->max_running;
        e->url_flags = o->url_flags;
    }
    if ((o && o->profile && copy_profile(e, o->profile) != PB_OK) || read_proxy_env(e) != PB_OK) {
        pb_engine_free(e);
        return NULL;
    }
    if (o) e->policy = o->policy; /* taken over now that nothing can fail */
    return e;
}

static void xfer_destroy(xfer *x)
{
    if (!x) return;
    if (x->easy) curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->hdrs);
    pb_buf_free(&x->body);
    pb_buf_free(&x->head);
    pb_buf_free(&x->url);
    free(x);
}

static void list_remove(xfer **head, xfer *x)
{
    if (x->prev) x->prev->next = x->next;
    else *head = x->next;
    if (x->next) x->next->prev = x->prev;
    x->prev = x->next = NULL;
}

static void list_push(xfer **head, xfer *x)
{
    x->prev = NULL;
    x->next = *head;
    if (*head) (*head)->prev = x;
    *head = x;
}

/* Appends x to the singly linked FIFO (head, tail). */
static void fifo_push(xfer **head, xfer **tail, xfer *x)
{
    x->next = NULL;
    x->prev = *tail;
    if (*tail) (*tail)->next = x;
    else *head = x;
    *tail = x;
}

static xfer *fifo_pop(xfer **head, xfer **tail)
{
    xfer *x = *head;
    if (!x) return NULL;
    *head = x->next;
    if (!*head) *tail = NULL;
    x->next = x->prev = NULL;
    return x;
}

static void free_chain(xfer *x)
{
    xfer *n;
    for (; x; x = n) {
        n = x->next;
        xfer_destroy(x);
    }
}

/* Returns a transfer to the pool (or frees it when the pool is full). */
static void recycle(pb_engine *e, xfer *x)
{
    curl_slist_free_all(x->hdrs);
    x->hdrs = NULL;
    if (e->nfree >= MAX_FREE_HANDLES || !x->easy) {
        xfer_destroy(x);
        return;
    }
    if (x->body.cap > KEEP_BUFFER_BYTES) pb_buf_free(&x->body);
    if (x->head.cap > KEEP_BUFFER_BYTES) pb_buf_free(&x->head);
    if (x->url.cap > KEEP_BUFFER_BYTES) pb_buf_free(&x->url);
    pb_buf_reset(&x->body);
    pb_buf_reset(&x->head);
    list_push(&e->free_list, x);
    e->nfree++;
}

void pb_engine_free(pb_engine *e)
{
    xfer *x, *n;
    if (!e) return;
    for (x = e->active; x; x = n) {
        n = x->next;
        curl_multi_remove_handle(e->multi, x->easy);
        xfer_destroy(x);
    }
    free_chain(e->queued_head);
    while (e->pend_head) {
        pend *p = e->pend_head;
        e->pend_head = p->next;
        free(p);
    }
    free_chain(e->done_head);
    free_chain(e->free_list);
    xfer_destroy(e->last);
    curl_multi_cleanup(e->multi);
    curl_slist_free_all(e->profile_hdrs);
    free(e->profile_ca);
    free(e->profile_ua);
    free(e->profile_user);
    free(e->profile_pass);
    free(e->profile_proxy);
    free(e->env_proxy[0]);
    free(e->env_proxy[1]);
    free(e->env_noproxy);
    pb_netpolicy_free(e->policy);
    free(e);
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    size_t len = size * n;
    if (x->body.len + len > x->max_body) {
        x->too_large = 1;
        return 0; /* aborts the transfer */
    }
    if (pb_buf_append(&x->body, p, len) != PB_OK) {
        x->nomem = 1;
        return 0;
    }
    return len;
}

/* Notes where a header block starts and ends: libcurl 7.88 reports a
 * connection closed in the middle of the headers as a success. */
static void header_edges(xfer *x, const char *p, size_t len)
{
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) x->headers_done = 0;
    else if ((len == 2 && p[0] == '\r' && p[1] == '\n') || (len == 1 && p[0] == '\n'))
        x->headers_done = 1;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    size_t len = size * n;
    header_edges(x, p, len);
    /* Keep only the last response's headers (after 1xx and redirects). */
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) pb_buf_reset(&x->head);
    if (x->head.len + len > MAX_RESPONSE_HEADER_BYTES) return len; /* drop the excess */
    if (pb_buf_append(&x->head, p, len) != PB_OK) {
        x->nomem = 1;
        return 0;
    }
    return len;
}

static size_t on_header_lean(char *p, size_t size, size_t n, void *ud)
{
    header_edges(ud, p, size * n);
    return size * n;
}

/* A zeroed transfer with empty buffers and no easy handle, or NULL. */
static xfer *new_xfer(void)
{
    xfer *x = calloc(1, sizeof *x);
    if (!x) return NULL;
    pb_buf_init(&x->body, NULL);
    pb_buf_init(&x->head, NULL);
    pb_buf_init(&x->url, NULL);
    return x;
}

static xfer *take_xfer(pb_engine *e)
{
    xfer *x = e->free_list;
    if (x) {
        list_remove(&e->free_list, x);
        e->nfree--;
    } else {
        x = new_xfer();
        if (!x) return NULL;
        x->easy = curl_easy_init();
        if (!x->easy) {
            free(x);
            return NULL;
        }
    }
    x->too_large = x->nomem = x->fail = x->sent = x->headers_done = 0;
    x->blocked = 0;
    x->policy = e->policy;
    x->status = 0;
    x->seconds = 0;
    x->err[0] = '\0';
    return x;
}

/* Refuses a URL over max_url (0: the default). */
static int check_url_len(size_t url_len, size_t max_url, char *why, size_t whylen)
{
    if (!max_url) max_url = PB_MAX_URL_DEFAULT;
    if (url_len > max_url) {
        char msg[96];
        snprintf(msg, sizeof msg, "URL longer than max_url (%lu bytes)", (unsigned long)max_url);
        set_why(why, whylen, msg);
        return PB_EINVAL;
    }
    return PB_OK;
}

/* Refuses a URL that must never be requested: over max_url, other schemes,
 * CR, LF, NUL or other control bytes, user info unless flags allow it. */
static int check_url(const char *url, size_t url_len, size_t max_url, unsigned flags, char *why,
                     size_t whylen)
{
    const char *bad;
    int rc;
    if (!url) {
        set_why(why, whylen, "no URL");
        return PB_EINVAL;
    }
    if ((rc = check_url_len(url_len, max_url, why, whylen)) != PB_OK) return rc;
    /* (control bytes, CR, LF and NUL among them, are refused here) */
    bad = pb_check_request_url_ex(url, url_len, flags);
    if (bad) {
        char msg[96];
        snprintf(msg, sizeof msg, "URL %s", bad);
        set_why(why, whylen, msg);
        return PB_EINVAL;
    }
    return PB_OK;
}

/* Refuses what must never be sent: the URL checks, an invalid method, bad
 * or oversized headers, CR, LF or NUL in credentials. */
static int check_request(const pb_req *r, const char *method, size_t url_len, unsigned flags,
                         char *why, size_t whylen)
{
    int rc;
    if (!token_ok(method)) {
        set_why(why, whylen, "invalid method");
        return PB_EINVAL;
    }
    if ((rc = check_url(r->url, url_len, r->max_url, flags, why, whylen)) != PB_OK) return rc;
    return check_options(r, why, whylen);
}

static curl_socket_t open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a);

/* libcurl 7.83+ can look a header up after the transfer: firing GETs then
 * keep no response headers at all. */
#if LIBCURL_VERSION_NUM >= 0x075300
#define PB_HAVE_EASY_HEADER 1
#else
#define PB_HAVE_EASY_HEADER 0
#endif

/* The proxy a transfer of url (as sent) with r goes through, or NULL: it
 * connects directly, every address checked by the policy. The engine
 * decides, never libcurl by itself: with proxy_from_env, from the
 * environment read_proxy_env read, as libcurl reads it (the scheme's proxy,
 * else all_proxy; none for a host in no_proxy). */
static const char *route(const pb_engine *e, const pb_req *r, const char *url, size_t len)
{
    const char *proxy;
    size_t off, n;
    if (r->proxy) return *r->proxy ? r->proxy : NULL; /* "" names none */
    if (!r->proxy_from_env) return NULL;
    proxy = e->env_proxy[pb_url_is_https(url, len)];
    if (proxy && e->env_noproxy && pb_url_host(url, len, &off, &n) &&
        pb_url_no_proxy(e->env_noproxy, url + off, n))
        return NULL;
    return proxy;
}

/* Resets x's handle and applies everything of r but the URL, the method and
 * the body; hdrs is the header list to use (owned elsewhere), proxy the
 * route (see route). With lean, response headers are not collected (see
 * finish). */
static int apply_options(xfer *x, const pb_req *r, struct curl_slist *hdrs, int lean,
                         int https, const char *proxy)
{
    CURL *c = x->easy;
    int ok = 1;
    curl_easy_reset(c);
    x->has_profile = 0;
    x->lean_headers = lean && PB_HAVE_EASY_HEADER;
#define SET(opt, val) ok = ok && curl_easy_setopt(c, opt, val) == CURLE_OK
    SET(CURLOPT_PRIVATE, (void *)x);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_ERRORBUFFER, x->err);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, (void *)x);
    SET(CURLOPT_HEADERFUNCTION, x->lean_headers ? on_header_lean : on_header);
    SET(CURLOPT_HEADERDATA, (void *)x);
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
    SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    SET(CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    /* What was rendered is what is sent: no dot-segment removal. */
    SET(CURLOPT_PATH_AS_IS, 1L);
    SET(CURLOPT_FOLLOWLOCATION, r->follow > 0 ? 1L : 0L);
    if (r->follow > 0) SET(CURLOPT_MAXREDIRS, r->follow);
    if (r->timeout_ms > 0) SET(CURLOPT_TIMEOUT_MS, r->timeout_ms);
    if (r->connect_timeout_ms > 0) SET(CURLOPT_CONNECTTIMEOUT_MS, r->connect_timeout_ms);
    SET(CURLOPT_SSL_VERIFYPEER, r->insecure ? 0L : 1L);
    SET(CURLOPT_SSL_VERIFYHOST, r->insecure ? 0L : 2L);
    if (r->ca_file) SET(CURLOPT_CAINFO, r->ca_file);
    if (r->username) {
        SET(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        SET(CURLOPT_USERNAME, r->username);
        SET(CURLOPT_PASSWORD, r->password ? r->password : "");
    }
    if (r->user_agent) SET(CURLOPT_USERAGENT, r->user_agent);
    /* The route: through the proxy, which then resolves names, for every
     * host (libcurl's own no_proxy reading would send some directly, and
     * unchecked); or directly, every address checked at connect time. */
    if (proxy) {
        SET(CURLOPT_PROXY, proxy);
        SET(CURLOPT_NOPROXY, "");
    } else {
        SET(CURLOPT_PROXY, "");
        if (x->policy) {
            SET(CURLOPT_OPENSOCKETFUNCTION, open_socket);
            SET(CURLOPT_OPENSOCKETDATA, (void *)x);
        }
    }
    /* Waiting for a connection to multiplex on only makes sense where HTTP/2
     * is possible (https, by ALPN); on plain http it only delays. */
    SET(CURLOPT_PIPEWAIT, https ? 1L : 0L);
    if (r->fresh_connect) SET(CURLOPT_FRESH_CONNECT, 1L);
    if (hdrs) SET(CURLOPT_HTTPHEADER, hdrs);
#undef SET
    return ok;
}

/* Hands x to libcurl: it runs from the next perform (or is recycled when
 * libcurl refuses it). */
static int activate(pb_engine *e, xfer *x)
{
    if (curl_multi_add_handle(e->multi, x->easy) != CURLM_OK) {
        recycle(e, x);
        return PB_ECURL;
    }
    list_push(&e->active, x);
    e->nactive++;
    return PB_OK;
}

/* Hands x to libcurl, or queues it while max_running transfers run. */
static int launch(pb_engine *e, xfer *x)
{
    if (e->max_running && e->nactive >= e->max_running) {
        fifo_push(&e->queued_head, &e->queued_tail, x);
        e->nqueued++;
        return PB_OK;
    }
    return activate(e, x);
}

/* Keeps the URL to send in x->url: as given, or converted to what libcurl
 * sends unchanged (punycode host, numeric IPv4 as a.b.c.d, bytes >= 0x80
 * percent-encoded), so what is reported is what went on the wire. */
static int keep_url(pb_engine *e, xfer *x, const char *url, size_t len, int plain, char *why,
                    size_t whylen)
{
    int rc;
    pb_buf_reset(&x->url);
    if (plain) return pb_buf_append(&x->url, url, len);
    rc = pb_url_to_ascii(url, len, e->url_flags, &x->url, why, whylen);
    if (rc == 1) return PB_OK;
    if (rc == 0) return pb_buf_append(&x->url, url, len);
    return rc == PB_ELIMIT ? PB_ENOMEM : rc;
}

/* Checks an IP-literal host against the policy before a transfer that goes
 * through a proxy (the proxy resolves names: only literals can be checked).
 * url is the URL as it is sent (keep_url, pb_url_to_ascii): an IPv4 host in
 * any spelling libcurl reads as one is a.b.c.d there, an IDN is punycode. A
 * host of digits and dots only is checked as an address (refused when it is
 * none). */
static int check_proxied_host(pb_engine *e, const char *url, size_t len, char *why,
                              size_t whylen)
{
    size_t off, n, i;
    const char *h;
    if (!e->policy || !pb_url_host(url, len, &off, &n) || n == 0) return PB_OK;
    h = url + off;
    if (h[0] == '[') {
        if (n < 2) return PB_OK; /* refused by the URL checks already */
        h++;
        n -= 2;
    } else {
        for (i = 0; i < n; i++)
            if ((h[i] < '0' || h[i] > '9') && h[i] != '.') return PB_OK; /* a name */
    }
    if (pb_netpolicy_check_text(e->policy, h, n, why, whylen) != PB_NET_ALLOWED) return PB_EBLOCKED;
    return PB_OK;
}

/* Opens the sockets of transfers whose addresses the policy checks: every
 * resolved address, at connect time, redirects included. */
static curl_socket_t open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a)
{
    xfer *x = ud;
    char why[PB_NETPOLICY_WHY];
    if (purpose == CURLSOCKTYPE_IPCXN && x->policy &&
        pb_netpolicy_check(x->policy, &a->addr, a->addrlen, why, sizeof why) != PB_NET_ALLOWED) {
        if (!x->blocked++) memcpy(x->blocked_why, why, sizeof why);
        return CURL_SOCKET_BAD; /* libcurl tries the next address, else fails to connect */
    }
    /* a connection is allowed: earlier refusals (another address, an
     * earlier hop) are not why this transfer may fail */
    x->blocked = 0;
    return socket(a->family, a->socktype, a->protocol);
}

int pb_engine_add(pb_engine *e, const pb_req *r, char *why, size_t whylen)
{
    const char *method = r->method ? r->method : "GET";
    size_t url_len = r->url ? (r->url_len ? r->url_len : strlen(r->url)) : 0;
    const char *proxy;
    CURL *c;
    xfer *x;
    size_t i;
    int ok = 1, rc;

    if ((rc = check_request(r, method, url_len, e->url_flags, why, whylen)) != PB_OK) return rc;
    x = take_xfer(e);
    if (!x) return PB_ENOMEM;
    c = x->easy;
    x->tag = r->tag;
    x->user = r->user;
    x->max_body = r->max_body ? r->max_body : DEFAULT_MAX_BODY;

    for (i = 0; i < r->nheaders && ok; i++) {
        struct curl_slist *sl = curl_slist_append(x->hdrs, r->headers[i]);
        if (sl) x->hdrs = sl; else ok = 0;
    }
    if (ok && r->body) {
        /* No "Expect: 100-continue" round trip for our small bodies. */
        struct curl_slist *sl = curl_slist_append(x->hdrs, "Expect:");
        if (sl) x->hdrs = sl; else ok = 0;
    }
    if (ok && (rc = keep_url(e, x, r->url, url_len, pb_url_plain(r->url, url_len), why, whylen)) != PB_OK) {
        recycle(e, x);
        return rc;
    }
    proxy = route(e, r, pb_buf_str(&x->url), x->url.len);
    if (ok && proxy && (rc = check_proxied_host(e, pb_buf_str(&x->url), x->url.len, why, whylen)) != PB_OK) {
        recycle(e, x);
        return rc;
    }
    ok = ok && apply_options(x, r, x->hdrs, 0, pb_url_is_https(r->url, url_len), proxy);
#define SET(opt, val) ok = ok && curl_easy_setopt(c, opt, val) == CURLE_OK
    SET(CURLOPT_URL, pb_buf_str(&x->url));
    if (strcmp(method, "GET") == 0) {
        SET(CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        SET(CURLOPT_NOBODY, 1L);
    } else {
        if (strcmp(method, "POST") != 0) SET(CURLOPT_CUSTOMREQUEST, method);
        if (r->body || strcmp(method, "POST") == 0) {
            SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(r->body ? r->body_len : 0));
            SET(CURLOPT_COPYPOSTFIELDS, r->body ? r->body : "");
        }
    }
#undef SET
    if (!ok) {
        recycle(e, x);
        return PB_ENOMEM;
    }
    return launch(e, x);
}

/* An easy handle set up for a GET of url (checked and converted already)
 * with the profile and its route (proxy, see route), in *out; PB_OK or
 * PB_ENOMEM. */
static int prepare_get(pb_engine *e, const char *url, size_t len, unsigned long long tag, int user,
                       const char *proxy, xfer **out)
{
    xfer *x = take_xfer(e);
    int https = pb_url_is_https(url, len);
    int setup = 1 + https + (proxy ? 2 : 0);
    if (!x) return PB_ENOMEM;
    x->tag = tag;
    x->user = user;
    x->max_body = e->profile.max_body ? e->profile.max_body : DEFAULT_MAX_BODY;
    /* The handle keeps the profile between uses; PIPEWAIT depends on the
     * scheme and the route on the scheme and the host, so a handle last set
     * up for another scheme or route is set up again. */
    if (x->has_profile != setup) {
        if (!apply_options(x, &e->profile, e->profile_hdrs, 1, https, proxy) ||
            curl_easy_setopt(x->easy, CURLOPT_HTTPGET, 1L) != CURLE_OK) {
            recycle(e, x);
            return PB_ENOMEM;
        }
        x->has_profile = setup;
    }
    pb_buf_reset(&x->url);
    if (pb_buf_append(&x->url, url, len) != PB_OK ||
        curl_easy_setopt(x->easy, CURLOPT_URL, pb_buf_str(&x->url)) != CURLE_OK) {
        recycle(e, x);
        return PB_ENOMEM;
    }
    *out = x;
    return PB_OK;
}

/* Starts a GET of url (checked and converted already) with the profile and
 * its route. */
static int start_get(pb_engine *e, const char *url, size_t len, unsigned long long tag, int user,
                     const char *proxy)
{
    xfer *x;
    int rc = prepare_get(e, url, len, tag, user, proxy, &x);
    return rc == PB_OK ? activate(e, x) : rc;
}

int pb_engine_get(pb_engine *e, const char *url, size_t len, unsigned long long tag, int user,
                  char *why, size_t whylen)
{
    pb_buf conv;
    pend *p;
    const char *proxy;
    int rc, plain;
    /* The profile (headers, credentials) was checked when it was copied. */
    if ((rc = check_url_len(len, e->profile.max_url, why, whylen)) != PB_OK) return rc;
    plain = pb_url_plain(url, len);
    pb_buf_init(&conv, NULL);
    if (!plain) {
        /* checked and converted in one pass (the checks of check_url): what
         * libcurl sends unchanged, punycode, numeric IPv4, encoded bytes */
        rc = pb_url_to_ascii(url, len, e->url_flags, &conv, why, whylen);
        if (rc < 0) return rc == PB_ELIMIT ? PB_ENOMEM : rc;
        if (rc == 1) {
            url = pb_buf_str(&conv);
            len = conv.len;
        }
    }
    proxy = route(e, &e->profile, url, len);
    if (proxy && (rc = check_proxied_host(e, url, len, why, whylen)) != PB_OK) {
        pb_buf_free(&conv);
        return rc;
    }
    if (!e->max_running || e->nactive + e->nqueued < e->max_running) {
        rc = start_get(e, url, len, tag, user, proxy);
        pb_buf_free(&conv);
        return rc;
    }
    /* No slot. A short queue takes idle pooled handles, set up now (the
     * work is the same as at start); a long one holds URLs only, so a
     * dispatcher owing a hundred thousand postbacks holds no more handles
     * than it runs. */
    if (!e->pend_head && e->free_list && e->nqueued < e->max_running) {
        xfer *x;
        rc = prepare_get(e, url, len, tag, user, proxy, &x);
        pb_buf_free(&conv);
        if (rc != PB_OK) return rc;
        fifo_push(&e->queued_head, &e->queued_tail, x);
        e->nqueued++;
        return PB_OK;
    }
    p = malloc(sizeof *p + len);
    if (!p) {
        pb_buf_free(&conv);
        return PB_ENOMEM;
    }
    p->next = NULL;
    p->tag = tag;
    p->user = user;
    p->len = len;
    memcpy(p->url, url, len);
    p->url[len] = '\0';
    pb_buf_free(&conv);
    if (e->pend_tail) e->pend_tail->next = p;
    else e->pend_head = p;
    e->pend_tail = p;
    e->nqueued++;
    return PB_OK;
}

static int classify(xfer *x, CURLcode rc)
{
    switch (rc) {
    case CURLE_OK: return PB_FAIL_NONE;
    case CURLE_OPERATION_TIMEDOUT: return PB_FAIL_TIMEOUT;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT: return PB_FAIL_CONNECT;
    case CURLE_FILESIZE_EXCEEDED: return PB_FAIL_TOO_LARGE;
    case CURLE_WRITE_ERROR: return x->too_large ? PB_FAIL_TOO_LARGE : PB_FAIL_TRANSPORT;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS: return PB_FAIL_TLS;
    default: return PB_FAIL_TRANSPORT;
    }
}

static void set_err(xfer *x, const char *msg)
{
    strncpy(x->err, msg, sizeof x->err - 1);
    x->err[sizeof x->err - 1] = '\0';
}

static void finish(pb_engine *e, xfer *x, CURLcode rc)
{
    long status = 0, reqsize = 0;
    double secs = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME, &secs);
    curl_easy_getinfo(x->easy, CURLINFO_REQUEST_SIZE, &reqsize);
#if PB_HAVE_EASY_HEADER
    if (x->lean_headers && (status < 200 || status > 299)) {
        /* Only Retry-After matters to callers of a failed GET. */
        struct curl_header *h;
        pb_buf_reset(&x->head);
        if (curl_easy_header(x->easy, "Retry-After", 0, CURLH_HEADER, -1, &h) == CURLHE_OK &&
            pb_find_crlf_nul(h->value, strlen(h->value)) < 0 &&
            (pb_buf_puts(&x->head, "Retry-After: ") != PB_OK || pb_buf_puts(&x->head, h->value) != PB_OK ||
             pb_buf_puts(&x->head, "\r\n") != PB_OK))
            pb_buf_reset(&x->head);
    }
#endif
    curl_multi_remove_handle(e->multi, x->easy);
    x->status = status;
    x->seconds = secs;
    x->fail = classify(x, rc);
    if (x->blocked && x->fail == PB_FAIL_CONNECT) {
        x->fail = PB_FAIL_BLOCKED;
        set_err(x, x->blocked_why);
    } else if (x->fail == PB_FAIL_NONE && !x->headers_done) {
        /* libcurl takes a connection closed inside the headers for an answer. */
        x->fail = PB_FAIL_TRANSPORT;
        set_err(x, "the connection closed before the end of the answer's headers");
    } else if (x->nomem && x->fail == PB_FAIL_TRANSPORT) {
        set_err(x, "out of memory while receiving the answer");
    } else if (x->fail == PB_FAIL_TOO_LARGE) {
        set_err(x, "answer larger than the response size cap");
    } else if (x->fail != PB_FAIL_NONE && !x->err[0]) {
        set_err(x, curl_easy_strerror(rc));
    }
    /* Nothing left this machine when the connection never came up. */
    if (x->fail == PB_FAIL_BLOCKED)
        x->sent = reqsize > 0; /* refused at a redirect: the first hops were sent */
    else
        x->sent = !(x->fail == PB_FAIL_CONNECT || (reqsize == 0 && status == 0));
    list_remove(&e->active, x);
    e->nactive--;
    fifo_push(&e->done_head, &e->done_tail, x);
    e->ndone++;
}

static void drain(pb_engine *e)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(e->multi, &left))) {
        if (m->msg == CURLMSG_DONE) {
            xfer *x = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            if (x) finish(e, x, m->data.result);
        }
    }
}

/* Starts queued transfers while there is room. A transfer libcurl refuses
 * finishes at once as a failure (so the caller always gets a result). */
static void start_queued(pb_engine *e)
{
    while (e->queued_head && (!e->max_running || e->nactive < e->max_running)) {
        xfer *x = fifo_pop(&e->queued_head, &e->queued_tail);
        e->nqueued--;
        if (curl_multi_add_handle(e->multi, x->easy) != CURLM_OK) {
            x->fail = PB_FAIL_TRANSPORT;
            x->sent = 0;
            set_err(x, "libcurl refused the transfer");
            fifo_push(&e->done_head, &e->done_tail, x);
            e->ndone++;
            continue;
        }
        list_push(&e->active, x);
        e->nactive++;
    }
    while (e->pend_head && (!e->max_running || e->nactive < e->max_running)) {
        pend *p = e->pend_head;
        int rc = start_get(e, p->url, p->len, p->tag, p->user, route(e, &e->profile, p->url, p->len));
        if (rc != PB_OK) {
            /* No handle could be had: the transfer ends at once, failed (or,
             * when even that cannot be recorded, it waits for the next try). */
            xfer *x = new_xfer();
            if (!x) break;
            x->tag = p->tag;
            x->user = p->user;
            x->fail = PB_FAIL_TRANSPORT;
            set_err(x, rc == PB_ENOMEM ? "out of memory starting the transfer"
                                       : "libcurl refused the transfer");
            if (pb_buf_append(&x->url, p->url, p->len) != PB_OK) {
                xfer_destroy(x);
                break;
            }
            fifo_push(&e->done_head, &e->done_tail, x);
            e->ndone++;
        }
        e->pend_head = p->next;
        if (!e->pend_head) e->pend_tail = NULL;
        e->nqueued--;
        free(p);
    }
}

static int perform_once(pb_engine *e)
{
    int running;
    if (curl_multi_perform(e->multi, &running) != CURLM_OK) return PB_ECURL;
    drain(e);
    /* Transfers that waited for a slot start now; libcurl drives them from
     * the next perform (their timers are due at once, so a poll does not
     * wait for them). */
    if ((e->queued_head || e->pend_head) && (!e->max_running || e->nactive < e->max_running))
        start_queued(e);
    return PB_OK;
}

/* Transfers in flight above which a non-waiting perform first asks
 * whether anything is ready: curl_multi_perform visits every transfer
 * (a read attempt each), so with many idle ones (a slow receiver) one poll
 * of all sockets is cheaper than visiting them all. */
#define PB_IDLE_CHECK_ABOVE 128

/* 1 when nothing can have happened since the last perform: no timer due
 * and no socket ready. */
static int nothing_ready(pb_engine *e)
{
    long t = -1;
    int numfds = 0;
    if (e->nactive <= PB_IDLE_CHECK_ABOVE) return 0;
    if (curl_multi_timeout(e->multi, &t) != CURLM_OK || t == 0) return 0;
    if (curl_multi_wait(e->multi, NULL, 0, 0, &numfds) != CURLM_OK) return 0;
    return numfds == 0;
}

int pb_engine_perform(pb_engine *e, long timeout_ms)
{
    double deadline;
    if (timeout_ms <= 0 && e->ndone == 0 && nothing_ready(e)) return 0;
    if (perform_once(e) != PB_OK) return PB_ECURL;
    if (e->ndone || timeout_ms <= 0 || !e->nactive) return (int)e->ndone;
    deadline = pb_monotonic() + (double)timeout_ms / 1000.0;
    for (;;) {
        double left = deadline - pb_monotonic();
        int ms;
        if (left <= 0) break;
        ms = left > 1000.0 ? 1000000 : (int)(left * 1000.0) + 1;
        if (curl_multi_poll(e->multi, NULL, 0, ms, NULL) != CURLM_OK) return PB_ECURL;
        if (perform_once(e) != PB_OK) return PB_ECURL;
        if (e->ndone || !e->nactive) break;
    }
    return (int)e->ndone;
}

int pb_engine_next(pb_engine *e, pb_result *out)
{
    xfer *x;
    if (e->last) {
        recycle(e, e->last);
        e->last = NULL;
    }
    x = fifo_pop(&e->done_head, &e->done_tail);
    if (!x) return 0;
    e->ndone--;
    e->last = x;
    out->tag = x->tag;
    out->user = x->user;
    out->status = x->status;
    out->body = pb_buf_str(&x->body);
    out->body_len = x->body.len;
    out->headers = pb_buf_str(&x->head);
    out->headers_len = x->head.len;
    out->url = pb_buf_str(&x->url);
    out->url_len = x->url.len;
    out->fail = x->fail;
    out->sent = x->sent;
    out->error = x->err;
    out->seconds = x->seconds;
    return 1;
}

size_t pb_engine_pending(const pb_engine *e)
{
    return e->nqueued + e->nactive + e->ndone;
}
