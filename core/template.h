/* template.h - postback code parsed once into literal and macro segments.
 *
 * A macro is {name} with name [A-Za-z0-9_]+, or the same placeholder
 * percent-encoded (%7Bname%7D, either hex case). Any other brace text is
 * literal. Rendering takes one value per distinct macro name ("slot"), in the
 * order of first use. */
#ifndef PB_TEMPLATE_H
#define PB_TEMPLATE_H

#include <stddef.h>
#include "buf.h"

enum { PB_SEG_LITERAL = 0, PB_SEG_MACRO = 1 };

typedef struct pb_segment {
    int kind;
    size_t off, len; /* literal text, or the whole placeholder as written */
    size_t slot;     /* macro: index into the template's names */
} pb_segment;

typedef struct pb_name {
    size_t off, len; /* the name inside the source */
    int doc;         /* index in pb_macro_names, or -1 when undocumented */
} pb_name;

typedef struct pb_template {
    const pb_alloc *alloc;
    char *src;
    size_t src_len;
    pb_segment *segs;
    size_t nsegs, segs_cap;
    pb_name *names;
    size_t nnames, names_cap;
    size_t nmacros;     /* placeholders, counting repeats */
    size_t literal_len; /* bytes of literal text */
} pb_template;

/* Value kinds handed to the renderer. */
enum {
    PB_V_NONE = 0, /* no value given (nil) */
    PB_V_STRING,
    PB_V_INT,
    PB_V_FLOAT,
    PB_V_BOOL,
    PB_V_BAD /* a value of a type that cannot be rendered */
};

typedef struct pb_value {
    int kind;
    const char *s; /* PB_V_STRING */
    size_t len;
    long long i;   /* PB_V_INT, PB_V_BOOL */
    double d;      /* PB_V_FLOAT */
} pb_value;

enum { PB_MISSING_EMPTY = 0, PB_MISSING_KEEP, PB_MISSING_ERROR };
enum { PB_ENCODE_URL = 0, PB_ENCODE_NONE };

typedef struct pb_render_opts {
    int missing;
    int encode;
} pb_render_opts;

/* Render failures (besides PB_ENOMEM / PB_ELIMIT from the buffer). */
enum { PB_RERR_MISSING = 1, PB_RERR_BADTYPE, PB_RERR_NONFINITE };

typedef struct pb_render_err {
    int code;    /* one of PB_RERR_*, PB_ENOMEM, PB_ELIMIT */
    size_t slot; /* the macro at fault (pb_template_render) */
    size_t name_off, name_len; /* its name, as an offset into the source */
} pb_render_err;

/* Parses src (copied). Returns NULL only when memory runs out. */
pb_template *pb_template_parse(const char *src, size_t len, const pb_alloc *a);
void pb_template_free(pb_template *t);

/* Renders into out (appending). vals has t->nnames entries. Returns PB_OK, or
 * a negative buffer error / positive PB_RERR_* with err filled. */
int pb_template_render(const pb_template *t, const pb_value *vals,
                       const pb_render_opts *opts, pb_buf *out, pb_render_err *err);

/* Gives the value of the macro `name` (len bytes, not NUL-terminated) in
 * *out, which starts as PB_V_NONE. Strings must stay valid until the next
 * call of the function or the end of the render. */
typedef void (*pb_lookup_fn)(void *ud, const char *name, size_t len, pb_value *out);

/* Renders src in one pass, without building a template: the value of each
 * placeholder comes from lookup, at the moment it is written. Same rules,
 * returns and errors as pb_template_render (err->name_off/len locate the
 * macro at fault in src). */
int pb_render_stream(const char *src, size_t len, pb_lookup_fn lookup, void *ud,
                     const pb_render_opts *opts, pb_buf *out, pb_render_err *err);

/* Length of the placeholder ({name} or %7Bname%7D, hex digits in either
 * case; a name of letters, digits and '_') starting at s[i] of s[0..n), with
 * the name's offset and length; 0 when there is none. */
size_t pb_placeholder(const char *s, size_t n, size_t i, size_t *noff, size_t *nlen);

/* Appends one value as the rendering rules write it (before encoding). */
int pb_value_format(pb_buf *out, const pb_value *v, int encode);

#endif
