/* Status messages for the outside world, and the one abort hook for misuse. */
#include "core.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char last_error[CT_ERROR_MSG_SIZE];

/* Formats into a temporary first: callers wrap an earlier message in a new one
 * (ct_error(st, "%s: %s", path, ct_last_error())), and formatting straight into last_error
 * would overwrite the text being read. */
ct_status ct_error(ct_status st, const char *fmt, ...) {
    /* through a copy: callers may wrap the previous message, ct_error(st, "x: %s", ct_last_error()) */
    char buf[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    memcpy(last_error, buf, sizeof buf);
    return st;
}

const char *ct_last_error(void) { return last_error; }

_Noreturn static void default_abort(const char *msg) {
    fprintf(stderr, "ctrain: fatal: %s\n", msg);
    fflush(stderr);
    abort();
}

static void default_hook(const char *msg) { default_abort(msg); }
static ct_abort_fn abort_hook = default_hook;

ct_abort_fn ct_set_abort_hook(ct_abort_fn fn) {
    ct_abort_fn prev = abort_hook;
    abort_hook = fn ? fn : default_hook;
    return prev;
}

_Noreturn void ct_fatal(const char *fmt, ...) {
    char msg[CT_ERROR_MSG_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    abort_hook(msg);
    default_abort(msg); /* a hook must not return; if it does, still stop here */
}
