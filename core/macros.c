/* macros.c - documented macro names and their lookup. */
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
