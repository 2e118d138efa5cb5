/* What the parity dump programs (*_dump.c) share: the safetensors file they write, whose
 * entries own copies of their names and data (so a tensor may be dumped from any scope), and
 * the steps the model programs take alike. */
#ifndef CT_PARITY_DUMP_UTIL_H
#define CT_PARITY_DUMP_UTIL_H

#include "ctrain.h"

typedef struct {
    ct_st_entry *e;
    int n, cap;
    ct_st_meta *meta;
    int nmeta, capmeta;
} dump;

/* The program's name, ": what: " and ct_last_error() on stderr; exit status 1. */
_Noreturn void dump_die(const char *what);
void dump_raw(dump *d, const char *name, ct_dtype dt, int ndim, const int64_t *shape, const void *data);
void dump_tensor(dump *d, const char *name, const ct_tensor *t);
void dump_meta(dump *d, const char *key, const char *value);
/* Writes the entries and metadata to path; dies on error. */
void dump_save(const dump *d, const char *path);
void dump_free(dump *d);

/* Loads the state_dict file `state` into m strict (dies with the loader's message, which
 * names the key) and opens `batch`, which must hold x F32 [N, C, H, W] and y I64 [N] (else
 * exit 1 naming the file). Returns the batch file (ct_st_free it). */
ct_st_file *dump_load(ct_module *m, const char *state, const char *batch, const ct_st_entry **x,
                      const ct_st_entry **y);
/* Forward in m's current mode, mean cross entropy and, with backward, backward: dumps
 * <prefix>logits, <prefix>loss and <prefix>grad.<param> for every parameter in ps. */
void dump_pass(dump *d, ct_module *m, const ct_named *ps, ct_tensor *x, const int64_t *y, const char *prefix,
               bool backward);

#endif
