/* Helpers shared by the op files (not public). */
#ifndef CT_OPS_INTERNAL_H
#define CT_OPS_INTERNAL_H

#include "ops.h"

/* Aborts naming the op and both shapes unless a and b have the same shape. */
void ct__check_same_shape(const char *op, const ct_tensor *a, const ct_tensor *b);
/* Aborts naming the op unless x has exactly `ndim` dims (what = "[N, C, H, W]" etc). */
void ct__check_ndim(const char *op, const ct_tensor *x, int ndim, const char *what);
/* Normalises a possibly negative dim, aborting when out of range. */
int ct__dim(const char *op, const ct_tensor *x, int dim);

#endif
