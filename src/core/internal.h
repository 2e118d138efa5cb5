/* Internal to the library (not installed): the counters ct_stats_get reads, which core and
 * autograd update. */
#ifndef CT_CORE_INTERNAL_H
#define CT_CORE_INTERNAL_H

#include "core.h"

extern ct_stats ct__stats;

#endif
