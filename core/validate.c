/* validate.c - postback record validation, every problem collected. */
#include "validate.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "buf.h"
#include "json.h"
#include "macros.h"
#include "suggest.h"
#include "template.h"
#include "url.h"

const char *const pb_field_names[PB_NFIELDS] = {
    "id", "offer_id", "affiliate_id", "event_id", "type",
    "status", "code", "create_time", "update_time",
};

const char *const pb_error_code_names[PB_NERRCODES] = {
    "required", "type", "range", "invalid_url", "too_long",
    "type_not_allowed", "unknown_macro", "invalid_status", "unknown_field",
};

static const char *const type_names[4] = { "", "Image Pixel", "Postback URL", "HTML Pixel" };

int pb_field_index(const char *name, size_t len)
{
    int i;
    for (i = 0; i < PB_NFIELDS; i++)
        if (strlen(pb_field_names[i]) == len && memcmp(pb_field_names[i], name, len) == 0)
            return i;
    return -1;
}

unsigned pb_allowed_types(long long protocol)
{
    switch (protocol) {
    case 1: return (1u << 1) | (1u << 2);
    case 2: return 1u << 2;
    case 3: return (1u << 1) | (1u << 2) | (1u << 3);
    default: return 0;
    }
}

typedef struct ctx {
    pb_verror *errs;
    size_t cap;
    long n;
} ctx;

#if defined(__GNUC__)
__attribute__((format(printf, 6, 7)))
#endif
static pb_verror *add(ctx *c, int field, const char *name, size_t len, int code,
                      const char *fmt, ...)
{
    pb_verror *e;
    va_list ap;
    c->n++;
    if ((size_t)c->n > c->cap) return NULL;
    e = &c->errs[c->n - 1];
    e->field = field;
    e->field_name = name;
    e->field_len = len;
    e->code = code;
    e->macro = NULL;
    e->macro_len = 0;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return e;
}

#define ADD(c, fld, code, ...) \
    add(c, fld, pb_field_names[fld], strlen(pb_field_names[fld]), code, __VA_ARGS__)

static const char *kind_name(const pb_field *f)
{
    switch (f->kind) {
    case PB_F_INT:
    case PB_F_NUMBER: return "number";
    case PB_F_STRING: return "string";
    default: return f->tname ? f->tname : "value";
    }
}

/* The range problem of an integer field: ids and times name the bound 2^53 - 1
 * (the largest integer every JSON reader keeps exact). `got` is the value
 * as written for the message. */
static void range_error(ctx *c, int fld, long long min, long long max, const char *got)
{
    const char *name = pb_field_names[fld];
    if (max == PB_MAX_ID)
        ADD(c, fld, PB_E_RANGE, "%s must be an integer from %lld to %lld, got %s", name, min, max,
            got);
    else
        ADD(c, fld, PB_E_RANGE, "%s must be between %lld and %lld, got %s", name, min, max, got);
}

/* Checks an integer field; returns 1 with *out set when it is a valid one. */
static int check_int(ctx *c, const pb_record *r, const pb_validate_opts *o, int fld,
                     int required, long long min, long long max, long long *out)
{
    const pb_field *f = &r->f[fld];
    const char *name = pb_field_names[fld];
    char got[PB_JSON_NUMBER_MAX];
    if (f->kind == PB_F_ABSENT) {
        if (required && !o->partial) ADD(c, fld, PB_E_REQUIRED, "%s is required", name);
        return 0;
    }
    if (f->kind == PB_F_NUMBER) {
        /* An integral number too large for a long long is an integer out of
         * range, not a fraction. */
        if (isfinite(f->d) && f->d == floor(f->d)) {
            if (f->d >= (double)min && f->d <= (double)max) {
                *out = (long long)f->d;
                return 1;
            }
            pb_json_format_double(got, f->d); /* the shortest form that reads back */
            range_error(c, fld, min, max, got);
            return 0;
        }
        ADD(c, fld, PB_E_TYPE, "%s must be an integer, got %.14g", name, f->d);
        return 0;
    }
    if (f->kind != PB_F_INT) {
        ADD(c, fld, PB_E_TYPE, "%s must be an integer, got a %s", name, kind_name(f));
        return 0;
    }
    if (f->i < min || f->i > max) {
        snprintf(got, sizeof got, "%lld", f->i);
        range_error(c, fld, min, max, got);
        return 0;
    }
    *out = f->i;
    return 1;
}

static void list_types(char *buf, size_t n, unsigned set)
{
    size_t used = 0;
    int t;
    buf[0] = '\0';
    for (t = 1; t <= 3; t++) {
        if (!(set & (1u << t))) continue;
        used += (size_t)snprintf(buf + used, n - used, "%s%d %s", used ? ", " : "", t,
                                 type_names[t]);
        if (used >= n) break;
    }
}

static int all_space(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n' && s[i] != '\f' &&
            s[i] != '\v')
            return 0;
    return 1;
}

/* The type used for code checks: the record's, or a guess from the code. */
static long long code_type(const pb_field *code, int type_ok, long long type)
{
    size_t i;
    if (type_ok) return type;
    for (i = 0; i < code->len; i++) {
        char ch = code->s[i];
        if (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n') continue;
        return ch == '<' ? 3 : 2;
    }
    return 2;
}

static int check_code(ctx *c, const pb_record *r, const pb_validate_opts *o, int type_ok,
                      long long type, const pb_alloc *a)
{
    const pb_field *f = &r->f[PB_FLD_CODE];
    size_t max = o->max_code_len ? o->max_code_len : PB_DEFAULT_MAX_CODE_LEN;
    pb_template *t;
    size_t i;

    if (f->kind == PB_F_ABSENT) {
        if (!o->partial) ADD(c, PB_FLD_CODE, PB_E_REQUIRED, "code is required");
        return PB_OK;
    }
    if (f->kind != PB_F_STRING) {
        ADD(c, PB_FLD_CODE, PB_E_TYPE, "code must be a string, got a %s", kind_name(f));
        return PB_OK;
    }
    if (all_space(f->s, f->len)) {
        ADD(c, PB_FLD_CODE, PB_E_REQUIRED, "code must not be empty");
        return PB_OK;
    }
    if (f->len > max) {
        ADD(c, PB_FLD_CODE, PB_E_TOO_LONG, "code is %zu bytes long, the limit is %zu", f->len,
            max);
        return PB_OK;
    }
    if (code_type(f, type_ok, type) != 3) {
        const char *why =
            pb_check_code_url_ex(f->s, f->len, o->allow_userinfo ? PB_URL_ALLOW_USERINFO : 0);
        if (why) ADD(c, PB_FLD_CODE, PB_E_INVALID_URL, "code %s", why);
    }
    if (o->allow_unknown_macros) return PB_OK;
    t = pb_template_parse(f->s, f->len, a);
    if (!t) return PB_ENOMEM;
    for (i = 0; i < t->nnames; i++) {
        const pb_name *nm = &t->names[i];
        const char *name = t->src + nm->off;
        int len = nm->len > 48 ? 48 : (int)nm->len;
        pb_verror *e;
        int s;
        if (nm->doc >= 0) continue;
        s = pb_suggest(name, nm->len, pb_macro_names, PB_NMACROS);
        if (s >= 0)
            e = ADD(c, PB_FLD_CODE, PB_E_UNKNOWN_MACRO,
                    "code uses {%.*s}, which is not a documented macro (did you mean {%s}?)",
                    len, name, pb_macro_names[s]);
        else
            e = ADD(c, PB_FLD_CODE, PB_E_UNKNOWN_MACRO,
                    "code uses {%.*s}, which is not a documented macro", len, name);
        if (e) {
            /* The template parsed a copy of the code: same offsets. */
            e->macro = f->s + nm->off;
            e->macro_len = nm->len;
        }
    }
    pb_template_free(t);
    return PB_OK;
}

long pb_validate(const pb_record *r, const pb_validate_opts *o, pb_verror *errs, size_t cap,
                 const pb_alloc *a)
{
    ctx c;
    long long id, offer = -1, aff, ev, type = 0, tm;
    int offer_ok, type_ok;
    unsigned allowed = 0;
    const pb_field *st;
    size_t i;

    c.errs = errs;
    c.cap = cap;
    c.n = 0;

    check_int(&c, r, o, PB_FLD_ID, 0, 1, PB_MAX_ID, &id);
    offer_ok = check_int(&c, r, o, PB_FLD_OFFER_ID, 1, 0, PB_MAX_ID, &offer);
    check_int(&c, r, o, PB_FLD_AFFILIATE_ID, 1, 1, PB_MAX_ID, &aff);
    check_int(&c, r, o, PB_FLD_EVENT_ID, 0, 1, PB_MAX_ID, &ev);
    type_ok = check_int(&c, r, o, PB_FLD_TYPE, 1, 1, 3, &type);

    if (o->has_protocol) {
        double p = o->protocol;
        if (p >= 1 && p <= 3 && p == (double)(long long)p) allowed = pb_allowed_types((long long)p);
        if (!allowed)
            add(&c, PB_FIELD_PROTOCOL, "conversion_protocol", 19, PB_E_RANGE,
                "conversion_protocol must be 1, 2 or 3, got %.14g", p);
    }
    if (type_ok && allowed && !(offer_ok && offer == 0) && !(allowed & (1u << type))) {
        char list[64];
        list_types(list, sizeof list, allowed);
        ADD(&c, PB_FLD_TYPE, PB_E_TYPE_NOT_ALLOWED,
            "type %lld (%s) is not allowed for an offer with conversion_protocol %lld "
            "(allowed: %s)",
            type, type_names[type], (long long)o->protocol, list);
    }

    st = &r->f[PB_FLD_STATUS];
    if (st->kind == PB_F_STRING) {
        if (!((st->len == 8 && memcmp(st->s, "approved", 8) == 0) ||
              (st->len == 8 && memcmp(st->s, "rejected", 8) == 0)))
            ADD(&c, PB_FLD_STATUS, PB_E_INVALID_STATUS,
                "status must be \"approved\" or \"rejected\", got \"%.*s\"",
                st->len > 32 ? 32 : (int)st->len, st->s);
    } else if (st->kind != PB_F_ABSENT) {
        ADD(&c, PB_FLD_STATUS, PB_E_TYPE, "status must be a string, got a %s", kind_name(st));
    }

    if (check_code(&c, r, o, type_ok, type, a) != PB_OK) return PB_ENOMEM;

    check_int(&c, r, o, PB_FLD_CREATE_TIME, 0, 0, PB_MAX_ID, &tm);
    check_int(&c, r, o, PB_FLD_UPDATE_TIME, 0, 0, PB_MAX_ID, &tm);

    for (i = 0; i < r->nunknown; i++) {
        const char *name = r->unknown[i];
        size_t len = r->unknown_len[i];
        int shown = len > 48 ? 48 : (int)len;
        int s = pb_suggest(name, len, pb_field_names, PB_NFIELDS);
        if (s >= 0)
            add(&c, PB_FIELD_OTHER, name, len, PB_E_UNKNOWN_FIELD,
                "%.*s is not a postback field (did you mean %s?)", shown, name, pb_field_names[s]);
        else
            add(&c, PB_FIELD_OTHER, name, len, PB_E_UNKNOWN_FIELD, "%.*s is not a postback field",
                shown, name);
    }
    return c.n;
}
