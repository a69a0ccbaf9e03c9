/* The ceiling of postback's design: libcurl's own multi loop in plain C.
 *
 *   multi_c URL TOTAL CONCURRENCY [unique] [same]
 *
 * CONCURRENCY easy handles, reused (so their connections are kept alive),
 * each re-added with the next request as soon as its last one finishes,
 * until TOTAL GETs are done. No scripting. With `unique`, request i goes to
 * URL with "&n=i" appended (a distinct URL each time, formatted here); else
 * every request is URL. With `same`, the handles carry the request options
 * postback's firing engine sets (timeout, connect timeout, User-Agent, no
 * proxy from the environment, http/https only, the path as is), so both
 * send the same bytes and libcurl does the same work. Prints
 *   requests=N ok=N seconds=S rate=R cpu_us_per_request=U */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static size_t discard(char *p, size_t s, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return s * n;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void set_url(CURL *h, const char *base, int unique, long i)
{
    char url[2048];
    if (unique) {
        snprintf(url, sizeof url, "%s&n=%ld", base, i);
        curl_easy_setopt(h, CURLOPT_URL, url);
    } else {
        curl_easy_setopt(h, CURLOPT_URL, base);
    }
}

int main(int argc, char **argv)
{
    long total, conc, started = 0, done = 0, ok = 0, i;
    int unique = 0, same = 0, a;
    CURLM *m;
    CURL **h;
    double t0, secs;
    clock_t c0;
    if (argc < 4) {
        fprintf(stderr, "usage: %s URL TOTAL CONCURRENCY [unique] [same]\n", argv[0]);
        return 2;
    }
    total = atol(argv[2]);
    conc = atol(argv[3]);
    for (a = 4; a < argc; a++) {
        if (strcmp(argv[a], "unique") == 0) unique = 1;
        else if (strcmp(argv[a], "same") == 0) same = 1;
    }
    if (total < 1 || conc < 1) return 2;
    if (conc > total) conc = total;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    m = curl_multi_init();
    h = calloc((size_t)conc, sizeof *h);
    if (!m || !h) return 1;
    t0 = now();
    c0 = clock();
    for (i = 0; i < conc; i++) {
        h[i] = curl_easy_init();
        set_url(h[i], argv[1], unique, started);
        curl_easy_setopt(h[i], CURLOPT_WRITEFUNCTION, discard);
        curl_easy_setopt(h[i], CURLOPT_NOSIGNAL, 1L);
        if (same) {
            curl_easy_setopt(h[i], CURLOPT_TIMEOUT_MS, 10000L);
            curl_easy_setopt(h[i], CURLOPT_CONNECTTIMEOUT_MS, 5000L);
            curl_easy_setopt(h[i], CURLOPT_USERAGENT, "postback/0.2.0");
            curl_easy_setopt(h[i], CURLOPT_PROXY, "");
            curl_easy_setopt(h[i], CURLOPT_PROTOCOLS_STR, "http,https");
            curl_easy_setopt(h[i], CURLOPT_PATH_AS_IS, 1L);
        }
        curl_multi_add_handle(m, h[i]);
        started++;
    }
    while (done < total) {
        int running, left;
        CURLMsg *msg;
        curl_multi_perform(m, &running);
        while ((msg = curl_multi_info_read(m, &left))) {
            long status = 0;
            CURL *e;
            if (msg->msg != CURLMSG_DONE) continue;
            e = msg->easy_handle;
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
            if (msg->data.result == CURLE_OK && status >= 200 && status < 300) ok++;
            done++;
            curl_multi_remove_handle(m, e);
            if (started < total) {
                set_url(e, argv[1], unique, started);
                curl_multi_add_handle(m, e);
                started++;
            }
        }
        if (done < total) curl_multi_poll(m, NULL, 0, 1000, NULL);
    }
    secs = now() - t0;
    printf("requests=%ld ok=%ld seconds=%.3f rate=%.0f cpu_us_per_request=%.2f\n", done, ok, secs,
           (double)done / secs, (double)(clock() - c0) / CLOCKS_PER_SEC / (double)done * 1e6);
    for (i = 0; i < conc; i++) curl_easy_cleanup(h[i]);
    free(h);
    curl_multi_cleanup(m);
    curl_global_cleanup();
    return ok == total ? 0 : 1;
}
