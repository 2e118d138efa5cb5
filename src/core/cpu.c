/* Which instruction sets the running CPU has. The default build targets x86-64-v3 (AVX2),
 * so one binary runs on every node of a cluster; the few kernels that gain from AVX-512
 * are compiled for it as well and ask here at run time which version to use. */
#include "core.h"

#include <stdlib.h>

static int has_avx512 = -1; /* what the CPU has; -1: not asked yet */
static int use_avx512 = -1; /* what the kernels use */

static bool cpu_has_avx512(void) {
    if (has_avx512 < 0) {
        __builtin_cpu_init();
        has_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    }
    return has_avx512;
}

bool ct_cpu_avx512(void) {
    if (use_avx512 < 0) {
        const char *off = getenv("CT_NO_AVX512"); /* to test or time the AVX2 paths */
        use_avx512 = cpu_has_avx512() && !(off && *off && *off != '0');
    }
    return use_avx512;
}

void ct_cpu_force_avx512(bool on) { use_avx512 = on && cpu_has_avx512(); }
