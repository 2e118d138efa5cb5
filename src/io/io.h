/* ctrain io: atomic file writes, safetensors read/write, and checkpoints of modules and
 * optimizers (hence nn and optim). Every function that touches the outside world returns a
 * ct_status and leaves a message naming the file in ct_last_error(). The INI run config
 * belongs to the command line (src/cli/config.h). */
#ifndef CT_IO_H
#define CT_IO_H

#include <stdio.h>

#include "../nn/nn.h"
#include "../optim/optim.h"

/* ---- atomic writes and reading outside files ---------------------------------------- */

/* Fills an open file; returns CT_OK or an error status (with ct_error's message). */
typedef ct_status (*ct_write_fn)(FILE *f, void *ctx);

/* Writes `path` so that it either keeps its old content or has the complete new one:
 * fn fills "<path>.tmp.<pid>" in the same directory, which is flushed, fsynced and renamed
 * onto path, then the directory is fsynced. On any failure (fn's included) the temporary
 * file is removed, path is untouched, and the error message names path. */
ct_status ct_write_atomic(const char *path, ct_write_fn fn, void *ctx);
/* ct_write_atomic of the n bytes at data. */
ct_status ct_write_file_atomic(const char *path, const void *data, size_t n);
/* Removes the temporaries ct_write_atomic leaves in dir when its process is killed while
 * writing: regular files "<name>.tmp.<pid>" whose pid no process on this host has. Best
 * effort; returns how many it removed. */
int ct_remove_stale_tmp(const char *dir);

/* Opens path for reading ("rb") if it is a regular file; a FIFO, directory, device or
 * socket is CT_ERR_IO naming path and what it is, without blocking (open() of a FIFO waits
 * for a writer). *out = NULL on error. */
ct_status ct_fopen_regular(const char *path, FILE **out);

/* ---- safetensors --------------------------------------------------------------------- */

/* One tensor of a safetensors file: row-major, little-endian, numel * dtype-size bytes. */
typedef struct {
    const char *name;
    ct_dtype dtype;
    int ndim; /* 0 for a scalar (one element) */
    int64_t shape[CT_MAX_DIMS];
    const void *data; /* not owned by the entry */
} ct_st_entry;

int64_t ct_st_numel(const ct_st_entry *e); /* product of the shape (1 when ndim == 0) */
size_t ct_st_nbytes(const ct_st_entry *e); /* numel * dtype size */
/* An F32 entry viewing t's data (not copied: t must outlive the save). */
ct_st_entry ct_st_from_tensor(const char *name, const ct_tensor *t);

typedef struct {
    const char *key, *value;
} ct_st_meta;

/* Atomically writes n entries and nmeta string pairs ("__metadata__") to path. The header
 * lists entries in the given order; the data is laid out largest element size first (stable)
 * so every tensor is aligned, and the header is padded with spaces to a multiple of 8.
 * Bad entries (empty/duplicate names, bad dtype/shape, NULL data) are CT_ERR_ARG. */
ct_status ct_st_save(const char *path, const ct_st_entry *entries, int n, const ct_st_meta *meta,
                     int nmeta);

/* The CRC32 (zlib's) of the data section ct_st_save writes for these entries, as lowercase
 * hex it goes into the "data_crc32" metadata value that ct_st_load checks. */
uint32_t ct_st_entries_crc32(const ct_st_entry *entries, int n);

/* A loaded safetensors file; every pointer it hands out lives until ct_st_free. */
typedef struct ct_st_file ct_st_file;

/* Reads and validates path (a regular file; sizes, JSON, dtypes, shapes vs offsets, tensors
 * tiling the data section exactly, and the data against a "data_crc32" metadata value if
 * there is one); on success *out owns the file's contents, else *out = NULL and the
 * message names path and what is wrong (CT_ERR_IO or CT_ERR_FORMAT). */
ct_status ct_st_load(const char *path, ct_st_file **out);
void ct_st_free(ct_st_file *f); /* NULL is fine */

const char *ct_st_path(const ct_st_file *f);
int ct_st_count(const ct_st_file *f);                 /* entries, in header order */
const ct_st_entry *ct_st_at(const ct_st_file *f, int i); /* 0 <= i < count */
const ct_st_entry *ct_st_find(const ct_st_file *f, const char *name); /* NULL if absent */
int ct_st_meta_count(const ct_st_file *f);
ct_st_meta ct_st_meta_at(const ct_st_file *f, int i);               /* 0 <= i < meta count */
const char *ct_st_meta_get(const ct_st_file *f, const char *key); /* NULL if absent */
/* Copies entry `name` into dst; CT_ERR_SHAPE (naming file, entry and both shapes) if it is
 * missing, not F32, or shaped differently from dst. */
ct_status ct_st_copy_f32(const ct_st_file *f, const char *name, ct_tensor *dst);

/* ---- checkpoints ------------------------------------------------------------------------ */

/* Training progress stored in a checkpoint's metadata. */
typedef struct {
    int64_t epoch; /* epochs completed */
    int64_t step;  /* optimizer steps taken */
    uint64_t seed;
    int world;     /* ranks that wrote it (informational: any rank count can resume) */
    int64_t epoch_step;     /* steps of epoch `epoch` + 1 already taken: a mid-epoch checkpoint
                               (metadata "epoch_step"; missing in older files = 0, a boundary) */
    const char *rank_state; /* mid-epoch: every rank's own state (its RNG streams, its loss sum),
                               lowercase hex, opaque here; NULL = none. From ct_ckpt_progress it
                               points into f's metadata and lives as long as f */
} ct_progress;

/* Atomically writes the model's state_dict (PyTorch names and layouts; BatchNorm's
 * num_batches_tracked as I64), the optimizer state when o is not NULL ("optim.*"), the
 * dropout RNG streams ("rng.*"), and p with the CRC32 of the tensor data ("data_crc32",
 * which ct_st_load checks) as metadata to path. */
ct_status ct_ckpt_save(const char *path, ct_module *m, const ct_optim *o, const ct_progress *p);
/* Loads the model part of f into m, checking every name, shape and dtype. Strict: any
 * missing, unexpected or mismatched entry of the state_dict is CT_ERR_SHAPE listing all of
 * them. Non-strict: loads what matches and, in *not_loaded (malloc'd, may be NULL; free it),
 * lists what did not (e.g. a new head over a pretrained backbone); a file of which not one
 * model tensor loads is CT_ERR_SHAPE even then. The dropout RNG streams
 * ("rng.*") are loaded when present and never required, so a PyTorch state_dict exported to
 * safetensors (scripts/torch_to_safetensors.py) loads strict. */
ct_status ct_ckpt_load_model(const ct_st_file *f, ct_module *m, bool strict, char **not_loaded);
/* As ct_ckpt_load_model, but entries whose names match one of the comma-separated globs in
 * exclude are left as they are in m (and reported as not loaded): attaching a fresh head. */
ct_status ct_ckpt_load_model_except(const ct_st_file *f, ct_module *m, bool strict,
                                    const char *exclude, char **not_loaded);
/* Restores the optimizer state saved in f into o (whose groups match the saving run). */
ct_status ct_ckpt_load_optim(const ct_st_file *f, ct_optim *o);
/* CT_ERR_FORMAT naming the file, the tensor and the element if any F32 or F64 tensor of f
 * (model or optimizer state) holds a NaN or an infinity; CT_OK otherwise. */
ct_status ct_ckpt_check_finite(const ct_st_file *f);
/* Reads the progress metadata; CT_ERR_FORMAT (naming the file and key) if f is not a ctrain
 * checkpoint or a field is out of range: epoch 0..INT_MAX, step >= 0, world 1..INT_MAX,
 * seed a uint64. p is unchanged on error. */
ct_status ct_ckpt_progress(const ct_st_file *f, ct_progress *p);

#endif
