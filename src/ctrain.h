/* ctrain: the umbrella public header. Layers, top to bottom; each depends only on those
 * listed before it. */
#ifndef CTRAIN_H
#define CTRAIN_H

#include "core/core.h"
#include "autograd/autograd.h"
#include "ops/ops.h"
#include "nn/nn.h"
#include "optim/optim.h"
#include "data/data.h"
#include "io/io.h"
#include "parallel/parallel.h"

#endif
