/* ctrain: the umbrella public header. */
#ifndef CTRAIN_H
#define CTRAIN_H

#include "core/core.h"
#include "autograd/autograd.h"
#include "ops/ops.h"
#include "optim/optim.h"

#endif
