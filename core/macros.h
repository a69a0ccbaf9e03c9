/* macros.h - the 28 macros Offerslook documents for postback code. */
#ifndef PB_MACROS_H
#define PB_MACROS_H

#include <stddef.h>

#define PB_NMACROS 28

/* The documented names, in the vendor's documentation order. */
extern const char *const pb_macro_names[PB_NMACROS];

/* Index of a documented macro name, or -1. Case-sensitive (the names are lowercase). */
int pb_macro_index(const char *name, size_t len);
/* Suggestions for a misspelt name: pb_suggest(name, len, pb_macro_names,
 * PB_NMACROS) in suggest.h. */

#endif
