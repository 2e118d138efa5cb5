/* The one JSON writer of the command line: every {"event":...} line on stdout and every
 * metrics.jsonl record is a jansson object built here and dumped compact, one a line, with
 * keys in the order they were added. Numbers keep the precision their printf format gives
 * (so lines stay short and two runs print the same text), and a non-finite number is null,
 * which JSON has instead of NaN and infinity. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* An allocation jansson could not make is out of memory: the abort hook's business. */
static json_t *checked(json_t *v) {
    CT_ASSERT(v, "json: out of memory");
    return v;
}

static void set(json_t *o, const char *key, json_t *v) {
    CT_ASSERT(json_object_set_new(o, key, checked(v)) == 0, "json: cannot set '%s'", key);
}

json_t *ct_json_record(const char *event) {
    json_t *o = checked(json_object());
    if (event) set(o, "event", json_string(event));
    return o;
}

void ct_json_int(json_t *o, const char *key, int64_t v) { set(o, key, json_integer(v)); }

void ct_json_str(json_t *o, const char *key, const char *s) {
    /* a path is bytes, not necessarily UTF-8: jansson would refuse it, so bad bytes go as
     * U+FFFD rather than losing the whole line */
    json_t *v = json_string(s);
    if (!v) {
        size_t n = strlen(s);
        char *u = ct_malloc(3 * n + 1), *q = u;
        for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
            if (*p < 0x80) *q++ = (char)*p;
            else q += sprintf(q, "\xef\xbf\xbd");
        }
        *q = '\0';
        v = json_string(u);
        free(u);
    }
    set(o, key, v);
}

void ct_json_real(json_t *o, const char *key, double v, const char *fmt) {
    if (!isfinite(v)) {
        set(o, key, json_null());
        return;
    }
    char buf[64];
    snprintf(buf, sizeof buf, fmt, v);
    set(o, key, json_real(strtod(buf, NULL)));
}

void ct_json_emit(json_t *o, FILE *f) {
    if (f) {
        /* 15 digits give back any value the formats above rounded to */
        char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
        CT_ASSERT(s, "json: out of memory");
        fprintf(f, "%s\n", s);
        fflush(f);
        free(s);
    }
    json_decref(o);
}

bool ct_json_int_field(const char *line, const char *key, int64_t *out) {
    json_t *o = json_loads(line, JSON_DECODE_ANY, NULL);
    json_t *v = json_object_get(o, key); /* NULL when o is NULL or not an object */
    bool ok = json_is_integer(v);
    if (ok) *out = json_integer_value(v);
    json_decref(o);
    return ok;
}
