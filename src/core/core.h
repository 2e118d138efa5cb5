/* ctrain core: status codes, the abort hook, the caching allocator, reference-counted
 * float32 tensors with automatic release scopes, the RNG and the BLAS wrapper.
 * Nothing here knows about autograd beyond the opaque node pointer a tensor carries. */
#ifndef CT_CORE_H
#define CT_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CT_MAX_DIMS 6

/* ---- status and errors ------------------------------------------------------------ */

/* Anything that touches the outside world (files, configs, MPI) returns a ct_status and
 * leaves a message naming the file/key/rank in ct_last_error(). */
typedef enum {
    CT_OK = 0,
    CT_ERR_IO,     /* open/read/write/rename failed */
    CT_ERR_FORMAT, /* a file's content is malformed */
    CT_ERR_CONFIG, /* unknown key or bad value */
    CT_ERR_SHAPE,  /* names/shapes/dtypes disagree (checkpoints, data) */
    CT_ERR_MPI,
    CT_ERR_ARG,
} ct_status;

/* Size of ct_last_error()'s buffer and of abort messages, terminator included; longer
 * messages are truncated. */
#define CT_ERROR_MSG_SIZE 1024

/* Records a formatted message for ct_last_error() and returns `st`. */
ct_status ct_error(ct_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The message of the last failing call on this thread ("" if none). */
const char *ct_last_error(void);

/* Misuse (shape mismatch, backward without a graph...) is a programmer error: it goes
 * through one hook, which must not return. The default prints and calls abort(); the
 * distributed layer installs one that calls MPI_Abort. */
typedef void (*ct_abort_fn)(const char *msg);
ct_abort_fn ct_set_abort_hook(ct_abort_fn fn); /* returns the previous hook */
_Noreturn void ct_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Abort with a message naming the file:line and the failed condition. */
#define CT_ASSERT(cond, ...)                                                              \
    do {                                                                                  \
        if (!(cond)) ct_fatal(__VA_ARGS__);                                               \
    } while (0)

/* ---- element types ------------------------------------------------------------------ */

/* Shared by the file formats (NPY, safetensors); tensors themselves are always float32. */
/* Named as in the safetensors header ("F32", "I64", ...). */
typedef enum {
    CT_DTYPE_F64,
    CT_DTYPE_F32,
    CT_DTYPE_F16,
    CT_DTYPE_BF16,
    CT_DTYPE_I64,
    CT_DTYPE_I32,
    CT_DTYPE_I16,
    CT_DTYPE_I8,
    CT_DTYPE_U64,
    CT_DTYPE_U32,
    CT_DTYPE_U16,
    CT_DTYPE_U8,
    CT_DTYPE_BOOL,
    CT_DTYPE_COUNT
} ct_dtype;

const char *ct_dtype_name(ct_dtype d); /* "F32", ...; NULL for an invalid value */
size_t ct_dtype_size(ct_dtype d);      /* bytes per element; 0 for an invalid value */
/* Sets *out to the dtype named s ("F32"...); false if s names none. */
bool ct_dtype_parse(const char *s, ct_dtype *out);

/* ---- checked allocation ------------------------------------------------------------ */

/* malloc, calloc, realloc, aligned_alloc and strdup that never return NULL: out of memory
 * goes through the abort hook naming the size. A size of 0 allocates one byte (or one
 * alignment unit), so the result is always a fresh pointer to free(). */
void *ct_malloc(size_t bytes);
void *ct_calloc(size_t count, size_t size);
void *ct_realloc(void *p, size_t bytes);
void *ct_aligned_malloc(size_t align, size_t bytes); /* align: a power of two */
char *ct_strdup(const char *s);

/* ---- allocator and counters -------------------------------------------------------- */

/* Size-class caching allocator: freed blocks go to a free list and are reused, so a
 * steady-state training step makes no malloc calls. Memory is 64-byte aligned. Safe from
 * any thread without a lock: each thread has its own free lists (a block may be freed on
 * another thread than the one that allocated it), returned to the system at its exit. */
void *ct_alloc(size_t bytes);
void ct_free(void *p, size_t bytes);
/* Returns every block the calling thread caches to the system (tests call it before leak
 * checks). */
void ct_alloc_trim(void);

typedef struct {
    int64_t live_tensors;  /* ct_tensor handles alive */
    int64_t live_bytes;    /* bytes of tensor storage alive (requested sizes) */
    int64_t graph_nodes;   /* autograd nodes alive */
    int64_t saved_tensors; /* tensors currently held by nodes for backward */
    int64_t mallocs;       /* system allocations made by the caching allocator, ever */
    int64_t gemm_calls;    /* ct_gemm calls, ever (tests prove skipped dW/dX GEMMs) */
    int64_t gemm_flops;    /* 2*m*n*k summed over those calls */
    int64_t conv_epilogues; /* conv2d calls with an epilogue (BatchNorm etc. folded), ever */
} ct_stats;
/* The counters are updated atomically, so they are exact whichever threads allocate. */
ct_stats ct_stats_get(void);

/* ---- tensors ----------------------------------------------------------------------- */

typedef struct ct_node ct_node; /* an autograd graph node, defined by src/autograd */

/* Every node starts with this header so that core can drop a tensor's reference to its
 * grad_fn without depending on the autograd layer above it. */
typedef struct {
    int refs;
    void (*destroy)(ct_node *n);
} ct_node_ref;

typedef struct ct_storage ct_storage;

typedef struct ct_tensor ct_tensor;
typedef void (*ct_grad_hook)(ct_tensor *leaf, void *ctx);

struct ct_tensor {
    int ndim;
    int64_t shape[CT_MAX_DIMS];
    int64_t numel;
    float *data; /* contiguous, row-major; points into storage */
    ct_storage *storage;
    int refs;

    /* autograd metadata (managed by src/autograd) */
    bool requires_grad;
    ct_node *grad_fn;      /* NULL for leaves */
    ct_tensor *grad;       /* leaves only, created lazily */
    ct_grad_hook grad_hook; /* fires once per backward when this leaf's grad is final */
    void *grad_hook_ctx;
    int pending;           /* engine scratch: contributions still to come this backward */
};

/* Every function that returns a new tensor puts it in the innermost open release scope;
 * the scope drops it when it closes (outside any scope, at ct_scope_shutdown). ct_retain()
 * takes an extra reference that the caller gives back with ct_release(). */
ct_tensor *ct_tensor_new(int ndim, const int64_t *shape); /* uninitialised data */
ct_tensor *ct_zeros(int ndim, const int64_t *shape);
ct_tensor *ct_ones(int ndim, const int64_t *shape);
ct_tensor *ct_full(int ndim, const int64_t *shape, float v);
ct_tensor *ct_from_data(int ndim, const int64_t *shape, const float *data); /* copies */
ct_tensor *ct_zeros_like(const ct_tensor *t);
ct_tensor *ct_empty_like(const ct_tensor *t);
ct_tensor *ct_clone_data(const ct_tensor *t); /* a copy of the values; no autograd */
/* A tensor over memory the caller owns (never freed by ctrain), e.g. a DDP bucket. */
ct_tensor *ct_tensor_wrap(int ndim, const int64_t *shape, float *data);
bool ct_tensor_is_external(const ct_tensor *t); /* made by ct_tensor_wrap */
/* Copies t's values to dst (numel floats owned by the caller) and makes dst its storage,
 * e.g. to pack parameters into a slab. t must not share its storage with a view. */
void ct_tensor_rebind(ct_tensor *t, float *dst);
/* A tensor sharing t's storage with a new shape (same numel). No autograd. */
ct_tensor *ct_view_raw(ct_tensor *t, int ndim, const int64_t *shape);

/* Shape literals: CT_SHAPE(2, 3) expands to `2, (int64_t[]){2, 3}`. */
#define CT_NARGS_(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t))
#define CT_SHAPE(...) CT_NARGS_(__VA_ARGS__), (const int64_t[]){__VA_ARGS__}

int64_t ct_numel(const ct_tensor *t);
int ct_ndim(const ct_tensor *t);
int64_t ct_size(const ct_tensor *t, int dim); /* negative dims count from the end */
bool ct_same_shape(const ct_tensor *a, const ct_tensor *b);
/* Writes "[2, 3, 4]" into buf (for error messages); returns buf. */
const char *ct_shape_str(const ct_tensor *t, char *buf, size_t n);
#define CT_SHAPE_STR(t) ct_shape_str((t), (char[96]){0}, 96)

void ct_retain(ct_tensor *t);
void ct_release(ct_tensor *t);

/* ---- release scopes ---------------------------------------------------------------- */

/* Opens a scope and returns its mark. ct_scope_end drops every tensor that entered the
 * scope after the mark. ct_scope_keep moves t into the enclosing scope (so it outlives
 * this one) and returns it. */
size_t ct_scope_begin(void);
void ct_scope_end(size_t mark);
ct_tensor *ct_scope_keep(ct_tensor *t);
/* Takes t out of the innermost scope and hands that reference to the caller, who gives it
 * back with ct_release (modules own their parameters this way). */
ct_tensor *ct_own(ct_tensor *t);
/* The opposite of ct_own: hands a reference the caller owns to the innermost scope. */
ct_tensor *ct_scope_adopt(ct_tensor *t);
/* Scopes are per thread: each thread has its own list and nesting, and a thread's exit
 * releases what its scopes still hold. */
/* Releases what was created outside any scope and frees the scope lists (end of main). */
void ct_scope_shutdown(void);

/* CT_SCOPE { ... } : everything created in the block is dropped when it ends, except
 * what was retained or kept. Do not `return` or `break` out of it. */
#define CT_SCOPE                                                                          \
    for (size_t ct__m = ct_scope_begin(), ct__once = 1; ct__once; ct_scope_end(ct__m), ct__once = 0)

/* ---- RNG --------------------------------------------------------------------------- */

/* xoshiro256** generator; the state is four words so checkpoints can save it. */
typedef struct {
    uint64_t s[4];
} ct_rng;
void ct_rng_seed(ct_rng *r, uint64_t seed);
uint64_t ct_rng_next(ct_rng *r);
float ct_rng_uniform(ct_rng *r); /* [0, 1) */
float ct_rng_normal(ct_rng *r);  /* N(0, 1) */
uint64_t ct_rng_below(ct_rng *r, uint64_t n); /* [0, n) */

ct_tensor *ct_rand_uniform(int ndim, const int64_t *shape, float lo, float hi, ct_rng *r);
ct_tensor *ct_rand_normal(int ndim, const int64_t *shape, float mean, float std, ct_rng *r);

/* ---- BLAS -------------------------------------------------------------------------- */

/* The only entry point to cblas. Row-major C = alpha * op(A) @ op(B) + beta * C, with
 * op(A) M x K and op(B) K x N; transposes go through sgemm's flags, never a copy. */
void ct_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
             const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
             int64_t ldc);
/* Large products are split into blocks along the longer side of C, a split fixed by the
 * shape alone, and the blocks run in parallel on the intra-op threads, each a one-thread
 * OpenBLAS call. OpenBLAS's own threads are not used: its multi-threaded sgemm rounds
 * differently from its one-thread sgemm (measured), so results would depend on the
 * thread count. */
/* ct_gemm as one block on the calling thread, for callers that run their own blocks in
 * parallel (the convolution's chunks). */
void ct_gemm_serial(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                    float *c, int64_t ldc);
/* OpenBLAS's own thread count (1 once ctrain runs a GEMM or sets its threads). */
void ct_blas_set_threads(int n);
/* The kernel set OpenBLAS chose at load time ("SkylakeX", "Haswell", "Prescott", ...). */
const char *ct_blas_core(void);

/* ---- intra-op threads (thread.c) --------------------------------------------------- */
/* One thread count for the ops' own loops (OpenMP) and for OpenBLAS's GEMMs. The thread
 * model: any thread may create and release tensors (the allocator and the counters are
 * thread-safe; scopes and grad mode are per thread), but a tensor, its views and a model
 * are used by one thread at a time (their reference counts and graph nodes are not
 * atomic). The ops' worker threads only compute on float arrays the calling thread
 * allocated, each writing its own disjoint part. Every parallel loop splits
 * its work into pieces whose bounds do not depend on the thread count, and reductions
 * combine per-piece results in a fixed order, so results are bit-identical for any count. */
void ct_set_threads(int n); /* n >= 1 (smaller is taken as 1) */
int ct_get_threads(void);
/* Which worker of the current parallel region this is (0 outside one). */
int ct_thread_id(void);

/* Work (elements) below which a loop stays on the calling thread: waking the team costs a
 * few microseconds, about the time of 30k simple float operations. */
#define CT_PAR_MIN 32768
#define CT_PRAGMA_(x) _Pragma(#x)
/* Before a `for` whose iterations are independent and write disjoint memory, with about
 * `work` elements of work in all. */
#define CT_PAR_FOR(work) CT_PRAGMA_(omp parallel for schedule(static) if ((work) >= CT_PAR_MIN))

/* ---- CPU features (cpu.c) --------------------------------------------------------- */
/* True when the CPU has AVX-512 F/BW/DQ/VL and CT_NO_AVX512 is unset (or 0). The kernels
 * that gain from it choose their AVX-512 version with this at run time. */
bool ct_cpu_avx512(void);
/* For tests: turn the AVX-512 kernels off, or back on where the CPU has them. Not for use
 * while other threads run kernels. */
void ct_cpu_force_avx512(bool on);

#endif
