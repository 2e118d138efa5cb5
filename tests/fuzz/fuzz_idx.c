/* IDX reader (plain and gzip): any bytes give CT_OK or an error, never a crash, a leak or
 * an allocation the file cannot back. The first byte picks 1 (labels) or 3 (images) dims. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    char path[64];
    int fd = fuzz_memfile(data + 1, size - 1, path, sizeof path);
    if (fd < 0) return 0;
    ct_array a = {0};
    if (ct_idx_read(path, data[0] & 1 ? 3 : 1, &a) == CT_OK) {
        /* what it returns must be consistent: numel = product of the shape, all readable */
        int64_t numel = 1, sum = 0;
        for (int d = 0; d < a.ndim; d++) numel *= a.shape[d];
        if (numel != a.numel) __builtin_trap();
        for (int64_t i = 0; i < a.numel; i++) sum += ((const uint8_t *)a.data)[i];
        (void)sum;
    }
    ct_array_free(&a);
    close(fd);
    return 0;
}
