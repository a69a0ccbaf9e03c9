/* macros.c - documented macro names, lookup and "did you mean" suggestions. */
#include "macros.h"

#include <string.h>

const char *const pb_macro_names[PB_NMACROS] = {
    "click_id",   "offer_id",   "event_id",   "country_id",    "aff_id",   "adv_id",
    "adv_sub1",   "adv_sub2",   "adv_sub3",   "aff_sub1",      "aff_sub2", "aff_sub3",
    "aff_sub4",   "aff_sub5",   "source_id",  "agent",         "click_time", "payout",
    "referer",    "accept_lan", "ip",         "unique_click",  "currency", "ios_idfa",
    "android_id", "google_aid", "conversion_ip", "amount",
};

int pb_macro_index(const char *name, size_t len)
{
    int i;
    if (len == 0) return -1;
    for (i = 0; i < PB_NMACROS; i++) {
        const char *m = pb_macro_names[i];
        if (m[0] == name[0] && strlen(m) == len && memcmp(m, name, len) == 0) return i;
    }
    return -1;
}

static unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c;
}

/* Levenshtein distance of a (lowercased) and b, both at most 32 bytes,
 * giving up (returning 99) past `cap`. */
static int distance(const char *a, size_t la, const char *b, size_t lb, int cap)
{
    int prev[33], cur[33];
    size_t i, j;
    if (la > 32 || lb > 32) return 99;
    if ((la > lb ? la - lb : lb - la) > (size_t)cap) return 99;
    for (j = 0; j <= lb; j++) prev[j] = (int)j;
    for (i = 1; i <= la; i++) {
        int best;
        cur[0] = (int)i;
        best = cur[0];
        for (j = 1; j <= lb; j++) {
            int cost = lower((unsigned char)a[i - 1]) == (unsigned char)b[j - 1] ? 0 : 1;
            int v = prev[j - 1] + cost;
            if (prev[j] + 1 < v) v = prev[j] + 1;
            if (cur[j - 1] + 1 < v) v = cur[j - 1] + 1;
            cur[j] = v;
            if (v < best) best = v;
        }
        if (best > cap) return 99;
        memcpy(prev, cur, (lb + 1) * sizeof prev[0]);
    }
    return prev[lb];
}

int pb_macro_suggest(const char *name, size_t len)
{
    int i, best = -1, bestd = 3;
    for (i = 0; i < PB_NMACROS; i++) {
        const char *m = pb_macro_names[i];
        int d = distance(name, len, m, strlen(m), 2);
        if (d < bestd) {
            bestd = d;
            best = i;
        }
    }
    return best;
}
