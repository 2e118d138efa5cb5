/* Elementwise ops: broadcasting add/sub/mul/div, the affine scalar forms (which also give
 * neg), exp and log. */
#include "internal.h"

#include <math.h>
#include <string.h>

void ct__check_same_shape(const char *op, const ct_tensor *a, const ct_tensor *b) {
    CT_ASSERT(ct_same_shape(a, b), "%s: shapes %s and %s must match", op, CT_SHAPE_STR(a),
              CT_SHAPE_STR(b));
}

void ct__check_ndim(const char *op, const ct_tensor *x, int ndim, const char *what) {
    CT_ASSERT(x->ndim == ndim, "%s: expected a %d-d input %s, got %s", op, ndim, what,
              CT_SHAPE_STR(x));
}

int ct__dim(const char *op, const ct_tensor *x, int dim) {
    int d = dim < 0 ? dim + x->ndim : dim;
    CT_ASSERT(d >= 0 && d < x->ndim, "%s: dim %d out of range for %s", op, dim,
              CT_SHAPE_STR(x));
    return d;
}

/* ---- broadcasting ------------------------------------------------------------------ */

/* The output shape and each operand's strides over it (0 along broadcast dims). */
typedef struct {
    int nd;
    int64_t shape[CT_MAX_DIMS], sa[CT_MAX_DIMS], sb[CT_MAX_DIMS];
    int64_t n;
    bool plain; /* no broadcasting: both operands are laid out as the output */
} bcast;

static bcast bcast_make(const char *op, const ct_tensor *a, const ct_tensor *b) {
    bcast bc = {.nd = a->ndim > b->ndim ? a->ndim : b->ndim, .n = 1};
    int64_t stra = 1, strb = 1;
    for (int d = bc.nd - 1; d >= 0; d--) {
        int da = d - (bc.nd - a->ndim), db = d - (bc.nd - b->ndim);
        int64_t na = da >= 0 ? a->shape[da] : 1, nb = db >= 0 ? b->shape[db] : 1;
        CT_ASSERT(na == nb || na == 1 || nb == 1,
                  "%s: shapes %s and %s cannot be broadcast (dim %d: %lld vs %lld)", op,
                  CT_SHAPE_STR(a), CT_SHAPE_STR(b), d, (long long)na, (long long)nb);
        bc.shape[d] = na > nb ? na : nb;
        bc.sa[d] = na == 1 ? 0 : stra;
        bc.sb[d] = nb == 1 ? 0 : strb;
        stra *= na;
        strb *= nb;
        bc.n *= bc.shape[d];
    }
    bc.plain = a->numel == bc.n && b->numel == bc.n;
    return bc;
}

/* Runs BODY for every output element i with operand offsets oa and ob. Without
 * broadcasting that is one loop on the intra-op threads (every i writes only element i of
 * its output, or of a gradient shaped like it). Otherwise the innermost dim is a plain
 * loop (vectorisable when its strides are 0 or 1) and outer dims use an odometer, on the
 * calling thread (a broadcast gradient sums many i into one element). */
#define BCAST_FOR(bc, BODY)                                                               \
    do {                                                                                  \
        if ((bc).plain) {                                                                 \
            CT_PAR_FOR((bc).n)                                                            \
            for (int64_t i = 0; i < (bc).n; i++) {                                        \
                int64_t oa = i, ob = i;                                                   \
                (void)oa, (void)ob;                                                       \
                BODY;                                                                     \
            }                                                                             \
            break;                                                                        \
        }                                                                                 \
        int ct__nd = (bc).nd;                                                             \
        int64_t ct__in = ct__nd ? (bc).shape[ct__nd - 1] : 1;                             \
        int64_t ct__ia = ct__nd ? (bc).sa[ct__nd - 1] : 0;                                \
        int64_t ct__ib = ct__nd ? (bc).sb[ct__nd - 1] : 0;                                \
        int64_t ct__idx[CT_MAX_DIMS] = {0}, ct__a0 = 0, ct__b0 = 0;                       \
        for (int64_t ct__i0 = 0; ct__i0 < (bc).n; ct__i0 += ct__in) {                     \
            for (int64_t ct__j = 0; ct__j < ct__in; ct__j++) {                            \
                int64_t i = ct__i0 + ct__j, oa = ct__a0 + ct__j * ct__ia,                 \
                        ob = ct__b0 + ct__j * ct__ib;                                     \
                (void)i, (void)oa, (void)ob;                                              \
                BODY;                                                                     \
            }                                                                             \
            for (int d = ct__nd - 2; d >= 0; d--) {                                       \
                if (++ct__idx[d] < (bc).shape[d]) {                                       \
                    ct__a0 += (bc).sa[d];                                                 \
                    ct__b0 += (bc).sb[d];                                                 \
                    break;                                                                \
                }                                                                         \
                ct__a0 -= (bc).sa[d] * (ct__idx[d] - 1);                                  \
                ct__b0 -= (bc).sb[d] * (ct__idx[d] - 1);                                  \
                ct__idx[d] = 0;                                                           \
            }                                                                             \
        }                                                                                 \
    } while (0)

typedef enum { BIN_ADD, BIN_SUB, BIN_MUL, BIN_DIV } binop;
static const char *bin_name[] = {"add", "sub", "mul", "div"};

static void binary_backward(ct_node *n, const ct_tensor *gout) {
    binop op = (binop)n->i[0];
    /* The operand shapes are all the broadcast needs; rebuild it from the saved sizes. */
    ct_tensor *a = n->saved[0], *b = n->saved[1];
    ct_tensor *ga = ct_node_grad_in(n, 0), *gb = ct_node_grad_in(n, 1);
    bcast bc = bcast_make(bin_name[op], a, b);
    const float *g = gout->data, *x = a->data, *y = b->data;
    switch (op) {
    case BIN_ADD:
    case BIN_SUB: {
        float sb = op == BIN_ADD ? 1.0f : -1.0f;
        if (ga) BCAST_FOR(bc, ga->data[oa] += g[i]);
        if (gb) BCAST_FOR(bc, gb->data[ob] += sb * g[i]);
        break;
    }
    case BIN_MUL:
        if (ga) BCAST_FOR(bc, ga->data[oa] += g[i] * y[ob]);
        if (gb) BCAST_FOR(bc, gb->data[ob] += g[i] * x[oa]);
        break;
    case BIN_DIV:
        if (ga) BCAST_FOR(bc, ga->data[oa] += g[i] / y[ob]);
        if (gb) BCAST_FOR(bc, gb->data[ob] -= g[i] * x[oa] / (y[ob] * y[ob]));
        break;
    }
}

static ct_tensor *binary(binop op, ct_tensor *a, ct_tensor *b) {
    bcast bc = bcast_make(bin_name[op], a, b);
    ct_tensor *out = ct_tensor_new(bc.nd, bc.shape);
    float *o = out->data;
    const float *x = a->data, *y = b->data;
    switch (op) {
    case BIN_ADD: BCAST_FOR(bc, o[i] = x[oa] + y[ob]); break;
    case BIN_SUB: BCAST_FOR(bc, o[i] = x[oa] - y[ob]); break;
    case BIN_MUL: BCAST_FOR(bc, o[i] = x[oa] * y[ob]); break;
    case BIN_DIV: BCAST_FOR(bc, o[i] = x[oa] / y[ob]); break;
    }
    ct_node *n = CT_RECORD(bin_name[op], binary_backward, out, a, b);
    if (n) {
        n->i[0] = op;
        /* add/sub only need the shapes, but saving costs a handle, not a copy. */
        ct_save(n, a);
        ct_save(n, b);
    }
    return out;
}

ct_tensor *ct_add(ct_tensor *a, ct_tensor *b) { return binary(BIN_ADD, a, b); }
ct_tensor *ct_sub(ct_tensor *a, ct_tensor *b) { return binary(BIN_SUB, a, b); }
ct_tensor *ct_mul(ct_tensor *a, ct_tensor *b) { return binary(BIN_MUL, a, b); }
ct_tensor *ct_div(ct_tensor *a, ct_tensor *b) { return binary(BIN_DIV, a, b); }

/* ---- affine: y = s * x + c (the scalar forms and neg) ------------------------------- */

static void affine_backward(ct_node *n, const ct_tensor *gout) {
    ct_tensor *gx = ct_node_grad_in(n, 0);
    float s = n->f[0];
    CT_PAR_FOR(gout->numel)
    for (int64_t i = 0; i < gout->numel; i++) gx->data[i] += s * gout->data[i];
}

static ct_tensor *affine(const char *op, ct_tensor *x, float s, float c) {
    ct_tensor *out = ct_empty_like(x);
    CT_PAR_FOR(x->numel)
    for (int64_t i = 0; i < x->numel; i++) out->data[i] = s * x->data[i] + c;
    ct_node *n = CT_RECORD(op, affine_backward, out, x);
    if (n) n->f[0] = s;
    return out;
}

ct_tensor *ct_add_scalar(ct_tensor *a, float s) { return affine("add_scalar", a, 1, s); }
ct_tensor *ct_sub_scalar(ct_tensor *a, float s) { return affine("sub_scalar", a, 1, -s); }
ct_tensor *ct_mul_scalar(ct_tensor *a, float s) { return affine("mul_scalar", a, s, 0); }
ct_tensor *ct_div_scalar(ct_tensor *a, float s) { return affine("div_scalar", a, 1 / s, 0); }
ct_tensor *ct_neg(ct_tensor *a) { return affine("neg", a, -1, 0); }

/* ---- exp and log ------------------------------------------------------------------- */

ct_tensor *ct__map(const char *op, ct_tensor *x, float (*f)(float), ct_backward_fn bw,
                   bool save_output) {
    ct_tensor *out = ct_empty_like(x);
    CT_PAR_FOR(x->numel)
    for (int64_t i = 0; i < x->numel; i++) out->data[i] = f(x->data[i]);
    ct_node *n = CT_RECORD(op, bw, out, x);
    if (n) ct_save(n, save_output ? out : x);
    return out;
}

static void exp_backward(ct_node *n, const ct_tensor *gout) {
    ct_tensor *gx = ct_node_grad_in(n, 0);
    const float *y = n->saved[0]->data; /* d exp(x) = exp(x): reuse the output */
    CT_PAR_FOR(gout->numel)
    for (int64_t i = 0; i < gout->numel; i++) gx->data[i] += gout->data[i] * y[i];
}

ct_tensor *ct_exp(ct_tensor *a) { return ct__map("exp", a, expf, exp_backward, true); }

static void log_backward(ct_node *n, const ct_tensor *gout) {
    ct_tensor *gx = ct_node_grad_in(n, 0);
    const float *x = n->saved[0]->data;
    CT_PAR_FOR(gout->numel)
    for (int64_t i = 0; i < gout->numel; i++) gx->data[i] += gout->data[i] / x[i];
}

ct_tensor *ct_log(ct_tensor *a) { return ct__map("log", a, logf, log_backward, false); }

/* ---- expand: broadcast to a shape ----------------------------------------------------- */

/* The broadcast of x against a shape (only ndim and shape of the stand-in are read). */
static bcast expand_bcast(const ct_tensor *x, int ndim, const int64_t *shape) {
    ct_tensor target = {.ndim = ndim};
    memcpy(target.shape, shape, (size_t)ndim * sizeof *shape);
    bcast bc = bcast_make("expand", x, &target);
    bool ok = bc.nd == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = bc.shape[d] == shape[d];
    CT_ASSERT(ok, "expand: %s cannot be expanded to a %d-d shape (only size-1 dims stretch)",
              CT_SHAPE_STR(x), ndim);
    return bc;
}

static void expand_backward(ct_node *n, const ct_tensor *gout) {
    bcast bc = expand_bcast(n->saved[0], gout->ndim, gout->shape);
    float *gx = ct_node_grad_in(n, 0)->data;
    const float *g = gout->data;
    BCAST_FOR(bc, gx[oa] += g[i]);
}

ct_tensor *ct_expand(ct_tensor *x, int ndim, const int64_t *shape) {
    CT_ASSERT(ndim >= 0 && ndim <= CT_MAX_DIMS, "expand: %d dims requested for %s", ndim, CT_SHAPE_STR(x));
    bcast bc = expand_bcast(x, ndim, shape);
    ct_tensor *out = ct_tensor_new(ndim, shape);
    float *o = out->data;
    const float *xd = x->data;
    BCAST_FOR(bc, o[i] = xd[oa]);
    ct_node *n = CT_RECORD("expand", expand_backward, out, x);
    if (n) ct_save(n, x); /* for its shape only: a handle, not a copy */
    return out;
}
