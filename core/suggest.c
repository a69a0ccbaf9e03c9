/* suggest.c - the closest known name to a misspelt one. */
#include "suggest.h"

#include <string.h>

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

int pb_suggest(const char *name, size_t len, const char *const *names, size_t count)
{
    size_t i;
    int best = -1, bestd = 3;
    for (i = 0; i < count && i < 0x7fffffff; i++) {
        int d = distance(name, len, names[i], strlen(names[i]), 2);
        if (d < bestd && (size_t)d < len) {
            bestd = d;
            best = (int)i;
        }
    }
    return best;
}
