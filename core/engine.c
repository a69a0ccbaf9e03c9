/* engine.c - libcurl multi engine: reusable easy handles, a done queue. */
#include "engine.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "url.h"

#define DEFAULT_MAX_BODY (16u * 1024u * 1024u)
#define MAX_HEADER_BYTES (64u * 1024u)
#define KEEP_BUFFER_BYTES (64u * 1024u) /* larger buffers are freed on reuse */
#define MAX_FREE_HANDLES 512

typedef struct xfer {
    CURL *easy;
    struct curl_slist *hdrs;
    pb_buf body, head;
    size_t max_body;
    int too_large, nomem;
    int fail, sent;
    long status;
    double seconds;
    char err[CURL_ERROR_SIZE];
    unsigned long long tag;
    int has_profile; /* configured with the engine's profile, as pb_engine_get leaves it */
    int lean_headers; /* no header callback: Retry-After is read once at the end */
    struct xfer *prev, *next;
} xfer;

struct pb_engine {
    CURLM *multi;
    xfer *active;                 /* running, doubly linked */
    xfer *done_head, *done_tail;  /* finished, not yet taken */
    xfer *free_list;              /* idle easy handles for reuse */
    xfer *last;                   /* handed out by pb_engine_next */
    size_t nactive, ndone, nfree;
    /* The profile of pb_engine_get: a private copy of the caller's pb_req. */
    int has_profile;
    pb_req profile;
    struct curl_slist *profile_hdrs;
    char *profile_ca, *profile_ua, *profile_user, *profile_pass;
};

int pb_engine_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

void pb_engine_global_cleanup(void)
{
    curl_global_cleanup();
}

const char *pb_engine_curl_version(void)
{
    return curl_version();
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
    e->profile.ca_file = e->profile_ca;
    e->profile.user_agent = e->profile_ua;
    e->profile.username = e->profile_user;
    e->profile.password = e->profile_pass;
    for (i = 0; i < r->nheaders && ok; i++) {
        struct curl_slist *sl = curl_slist_append(e->profile_hdrs, r->headers[i]);
        if (sl) e->profile_hdrs = sl; else ok = 0;
    }
    e->has_profile = 1;
    return ok ? PB_OK : PB_ENOMEM;
}

static int header_ok(const char *h);
static void set_why(char *why, size_t n, const char *msg);

pb_engine *pb_engine_new(const pb_engine_opts *o, char *why, size_t whylen)
{
    pb_engine *e;
    size_t i;
    set_why(why, whylen, "out of memory");
    if (o && o->profile) {
        const pb_req *p = o->profile;
        for (i = 0; i < p->nheaders; i++)
            if (!header_ok(p->headers[i])) {
                set_why(why, whylen, "invalid header (a \"Name: value\" line without CR, LF or NUL)");
                return NULL;
            }
        if ((p->username && strpbrk(p->username, "\r\n")) ||
            (p->password && strpbrk(p->password, "\r\n")) ||
            (p->user_agent && strpbrk(p->user_agent, "\r\n"))) {
            set_why(why, whylen, "credentials or user agent contain CR or LF");
            return NULL;
        }
    }
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
    if (o && o->profile && copy_profile(e, o->profile) != PB_OK) {
        pb_engine_free(e);
        return NULL;
    }
    return e;
}

static void xfer_destroy(xfer *x)
{
    if (!x) return;
    if (x->easy) curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->hdrs);
    pb_buf_free(&x->body);
    pb_buf_free(&x->head);
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

/* Returns a finished transfer to the pool (or frees it when the pool is full). */
static void recycle(pb_engine *e, xfer *x)
{
    curl_slist_free_all(x->hdrs);
    x->hdrs = NULL;
    if (e->nfree >= MAX_FREE_HANDLES) {
        xfer_destroy(x);
        return;
    }
    if (x->body.cap > KEEP_BUFFER_BYTES) pb_buf_free(&x->body);
    if (x->head.cap > KEEP_BUFFER_BYTES) pb_buf_free(&x->head);
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
    for (x = e->done_head; x; x = n) {
        n = x->next;
        xfer_destroy(x);
    }
    for (x = e->free_list; x; x = n) {
        n = x->next;
        xfer_destroy(x);
    }
    xfer_destroy(e->last);
    curl_multi_cleanup(e->multi);
    curl_slist_free_all(e->profile_hdrs);
    free(e->profile_ca);
    free(e->profile_ua);
    free(e->profile_user);
    free(e->profile_pass);
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

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    size_t len = size * n;
    /* Keep only the last response's headers (after 1xx and redirects). */
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) pb_buf_reset(&x->head);
    if (x->head.len + len > MAX_HEADER_BYTES) return len; /* drop the excess */
    if (pb_buf_append(&x->head, p, len) != PB_OK) {
        x->nomem = 1;
        return 0;
    }
    return len;
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

/* A header line "Name: value" (value may be empty): a token name, no CR/LF. */
static int header_ok(const char *h)
{
    const char *colon = strchr(h, ':');
    const char *p;
    if (!colon || colon == h) return 0;
    for (p = h; p < colon; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c >= 0x7f || strchr("()<>@,;\\\"/[]?={}", c)) return 0;
    }
    return pb_find_crlf_nul(colon, strlen(colon)) < 0;
}

static void set_why(char *why, size_t n, const char *msg)
{
    if (why && n) {
        strncpy(why, msg, n - 1);
        why[n - 1] = '\0';
    }
}

static xfer *take_xfer(pb_engine *e)
{
    xfer *x = e->free_list;
    if (x) {
        list_remove(&e->free_list, x);
        e->nfree--;
    } else {
        x = calloc(1, sizeof *x);
        if (!x) return NULL;
        pb_buf_init(&x->body, NULL);
        pb_buf_init(&x->head, NULL);
        x->easy = curl_easy_init();
        if (!x->easy) {
            free(x);
            return NULL;
        }
    }
    x->too_large = x->nomem = x->fail = x->sent = 0;
    x->status = 0;
    x->seconds = 0;
    x->err[0] = '\0';
    return x;
}

/* Refuses what must never be sent: CR, LF or NUL, other schemes, bad headers. */
static int check_request(const pb_req *r, const char *method, char *why, size_t whylen)
{
    const char *bad;
    size_t i;
    if (!token_ok(method)) {
        set_why(why, whylen, "invalid method");
        return PB_EINVAL;
    }
    if (!r->url || pb_find_crlf_nul(r->url, strlen(r->url)) >= 0) {
        set_why(why, whylen, "URL contains CR, LF or NUL");
        return PB_EINVAL;
    }
    bad = pb_check_request_url(r->url, strlen(r->url));
    if (bad) {
        char msg[96];
        strcpy(msg, "URL ");
        strncat(msg, bad, sizeof msg - 5);
        set_why(why, whylen, msg);
        return PB_EINVAL;
    }
    for (i = 0; i < r->nheaders; i++) {
        if (!header_ok(r->headers[i])) {
            set_why(why, whylen, "invalid header (a \"Name: value\" line without CR, LF or NUL)");
            return PB_EINVAL;
        }
    }
    if ((r->username && pb_find_crlf_nul(r->username, strlen(r->username)) >= 0) ||
        (r->password && pb_find_crlf_nul(r->password, strlen(r->password)) >= 0) ||
        (r->user_agent && pb_find_crlf_nul(r->user_agent, strlen(r->user_agent)) >= 0)) {
        set_why(why, whylen, "credentials or user agent contain CR, LF or NUL");
        return PB_EINVAL;
    }
    return PB_OK;
}

/* libcurl 7.83+ can look a header up after the transfer: firing GETs then
 * skip the per-line header callback. */
#if LIBCURL_VERSION_NUM >= 0x075300
#define PB_HAVE_EASY_HEADER 1
#else
#define PB_HAVE_EASY_HEADER 0
#endif

/* Resets x's handle and applies everything of r but the URL, the method and
 * the body; hdrs is the header list to use (owned elsewhere). With lean,
 * response headers are not collected (see finish). */
static int apply_options(xfer *x, const pb_req *r, struct curl_slist *hdrs, int lean)
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
    if (!x->lean_headers) {
        SET(CURLOPT_HEADERFUNCTION, on_header);
        SET(CURLOPT_HEADERDATA, (void *)x);
    }
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
    SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    SET(CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
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
    SET(CURLOPT_PIPEWAIT, 1L);
    if (r->fresh_connect) SET(CURLOPT_FRESH_CONNECT, 1L);
    if (hdrs) SET(CURLOPT_HTTPHEADER, hdrs);
#undef SET
    return ok;
}

static int start(pb_engine *e, xfer *x)
{
    if (curl_multi_add_handle(e->multi, x->easy) != CURLM_OK) {
        recycle(e, x);
        return PB_ENOMEM;
    }
    list_push(&e->active, x);
    e->nactive++;
    return PB_OK;
}

int pb_engine_add(pb_engine *e, const pb_req *r, char *why, size_t whylen)
{
    const char *method = r->method ? r->method : "GET";
    CURL *c;
    xfer *x;
    size_t i;
    int ok = 1, rc;

    if ((rc = check_request(r, method, why, whylen)) != PB_OK) return rc;
    x = take_xfer(e);
    if (!x) return PB_ENOMEM;
    c = x->easy;
    x->tag = r->tag;
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
    ok = ok && apply_options(x, r, x->hdrs, 0);
#define SET(opt, val) ok = ok && curl_easy_setopt(c, opt, val) == CURLE_OK
    SET(CURLOPT_URL, r->url);
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
    return start(e, x);
}

int pb_engine_get(pb_engine *e, const char *url, unsigned long long tag, char *why,
                  size_t whylen)
{
    pb_req r;
    xfer *x;
    int rc;
    if (!e->has_profile) {
        memset(&r, 0, sizeof r);
    } else {
        r = e->profile;
    }
    r.url = url;
    r.tag = tag;
    r.nheaders = 0; /* the profile's headers were checked when copied */
    if ((rc = check_request(&r, "GET", why, whylen)) != PB_OK) return rc;
    x = take_xfer(e);
    if (!x) return PB_ENOMEM;
    x->tag = tag;
    x->max_body = r.max_body ? r.max_body : DEFAULT_MAX_BODY;
    if (!x->has_profile) {
        if (!apply_options(x, &r, e->profile_hdrs, 1) ||
            curl_easy_setopt(x->easy, CURLOPT_HTTPGET, 1L) != CURLE_OK) {
            recycle(e, x);
            return PB_ENOMEM;
        }
        x->has_profile = 1;
    }
    if (curl_easy_setopt(x->easy, CURLOPT_URL, url) != CURLE_OK) {
        recycle(e, x);
        return PB_ENOMEM;
    }
    return start(e, x);
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
    if (x->nomem && x->fail == PB_FAIL_TRANSPORT) {
        strcpy(x->err, "out of memory while receiving the answer");
    } else if (x->fail == PB_FAIL_TOO_LARGE) {
        strcpy(x->err, "answer larger than the response size cap");
    } else if (x->fail != PB_FAIL_NONE && !x->err[0]) {
        strncpy(x->err, curl_easy_strerror(rc), sizeof x->err - 1);
        x->err[sizeof x->err - 1] = '\0';
    }
    /* Nothing left this machine when the connection never came up. */
    x->sent = !(x->fail == PB_FAIL_CONNECT || (reqsize == 0 && status == 0));
    list_remove(&e->active, x);
    e->nactive--;
    x->next = NULL;
    x->prev = e->done_tail;
    if (e->done_tail) e->done_tail->next = x;
    else e->done_head = x;
    e->done_tail = x;
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

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int pb_engine_perform(pb_engine *e, long timeout_ms)
{
    int running;
    long deadline;
    if (curl_multi_perform(e->multi, &running) != CURLM_OK) return PB_ENOMEM;
    drain(e);
    if (e->ndone || timeout_ms <= 0 || !e->nactive) return (int)e->ndone;
    deadline = now_ms() + timeout_ms;
    for (;;) {
        long left = deadline - now_ms();
        if (left <= 0) break;
        if (curl_multi_poll(e->multi, NULL, 0, left > 1000000 ? 1000000 : (int)left, NULL) !=
            CURLM_OK)
            return PB_ENOMEM;
        if (curl_multi_perform(e->multi, &running) != CURLM_OK) return PB_ENOMEM;
        drain(e);
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
    x = e->done_head;
    if (!x) return 0;
    e->done_head = x->next;
    if (!e->done_head) e->done_tail = NULL;
    x->next = x->prev = NULL;
    e->ndone--;
    e->last = x;
    out->tag = x->tag;
    out->status = x->status;
    out->body = pb_buf_str(&x->body);
    out->body_len = x->body.len;
    out->headers = pb_buf_str(&x->head);
    out->headers_len = x->head.len;
    out->fail = x->fail;
    out->sent = x->sent;
    out->error = x->err;
    out->seconds = x->seconds;
    return 1;
}

size_t pb_engine_pending(const pb_engine *e)
{
    return e->nactive + e->ndone;
}

size_t pb_engine_running(const pb_engine *e)
{
    return e->nactive;
}

int pb_engine_cancel(pb_engine *e, unsigned long long tag)
{
    xfer *x;
    for (x = e->active; x; x = x->next) {
        if (x->tag != tag) continue;
        finish(e, x, CURLE_ABORTED_BY_CALLBACK);
        x->fail = PB_FAIL_CANCELLED;
        strcpy(x->err, "cancelled");
        return 1;
    }
    return 0;
}
