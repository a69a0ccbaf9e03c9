/* validate.h - checks a postback record (create, PUT update or partial).
 *
 * The record arrives in a small C form (pb_record) that any front end fills:
 * the Lua binding from a table, the fuzzer from bytes. Every problem is
 * reported, not just the first, each naming its field. */
#ifndef PB_VALIDATE_H
#define PB_VALIDATE_H

#include <stddef.h>
#include "alloc.h"

enum {
    PB_FLD_ID = 0,
    PB_FLD_OFFER_ID,
    PB_FLD_AFFILIATE_ID,
    PB_FLD_EVENT_ID,
    PB_FLD_TYPE,
    PB_FLD_STATUS,
    PB_FLD_CODE,
    PB_FLD_CREATE_TIME,
    PB_FLD_UPDATE_TIME,
    PB_NFIELDS
};

extern const char *const pb_field_names[PB_NFIELDS];
int pb_field_index(const char *name, size_t len);

/* What a field holds. */
enum {
    PB_F_ABSENT = 0,
    PB_F_INT,    /* an integral number (i) */
    PB_F_NUMBER, /* a number with a fraction, or out of integer range (d) */
    PB_F_STRING, /* s, len */
    PB_F_OTHER   /* any other type, named by tname */
};

typedef struct pb_field {
    int kind;
    long long i;
    double d;
    const char *s;
    size_t len;
    const char *tname;
} pb_field;

typedef struct pb_record {
    pb_field f[PB_NFIELDS];
    const char *const *unknown; /* names of fields that are not postback fields */
    const size_t *unknown_len;
    size_t nunknown;
} pb_record;

typedef struct pb_validate_opts {
    int partial;             /* check only the fields present */
    int has_protocol;        /* 1 when the offer's conversion_protocol is given */
    double protocol;         /* that protocol (1, 2 or 3 are valid) */
    size_t max_code_len;     /* 0 = PB_DEFAULT_MAX_CODE_LEN */
    int allow_unknown_macros;
    int allow_userinfo;      /* accept "user:password@" in a code URL */
} pb_validate_opts;

#define PB_DEFAULT_MAX_CODE_LEN 4096
#define PB_MAX_ID 9007199254740991LL /* 2^53 - 1: exact in JSON everywhere */

/* Error codes, in the order of pb_error_code_names. */
enum {
    PB_E_REQUIRED = 0,
    PB_E_TYPE,
    PB_E_RANGE,
    PB_E_INVALID_URL,
    PB_E_TOO_LONG,
    PB_E_TYPE_NOT_ALLOWED,
    PB_E_UNKNOWN_MACRO,
    PB_E_INVALID_STATUS,
    PB_E_UNKNOWN_FIELD,
    PB_NERRCODES
};
extern const char *const pb_error_code_names[PB_NERRCODES];

#define PB_FIELD_OTHER (-1)     /* field named by field_name (unknown fields) */
#define PB_FIELD_PROTOCOL (-2)  /* the conversion_protocol option */

typedef struct pb_verror {
    int field;              /* PB_FLD_*, PB_FIELD_OTHER or PB_FIELD_PROTOCOL */
    const char *field_name; /* the field's name (points into the record or static) */
    size_t field_len;
    int code;               /* PB_E_* */
    const char *macro;      /* unknown_macro: the name, inside the record's code; else NULL */
    size_t macro_len;
    char message[192];
} pb_verror;

/* Validates r. Writes at most cap errors into errs and returns how many
 * problems were found (more than cap when the array was too small: call
 * again with a larger one), or PB_ENOMEM (-1). */
long pb_validate(const pb_record *r, const pb_validate_opts *o, pb_verror *errs, size_t cap,
                 const pb_alloc *a);

/* The postback types allowed for an offer's conversion_protocol, as a bit set
 * (bit t set = type t allowed); 0 for an invalid protocol. Protocol 0 is not
 * an offer's protocol: global postbacks are recognised by offer_id = 0. */
unsigned pb_allowed_types(long long protocol);

#endif
