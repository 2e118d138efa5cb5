/* NPY reader (format 1.0/2.0, plain or gzip): any bytes give CT_OK or an error; a file it
 * accepts has a consistent shape and survives a write-and-read-back unchanged. */
#include "fuzz.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;
    ct_array a = {0};
    if (ct_npy_read(path, &a) == CT_OK) {
        int64_t numel = 1;
        for (int d = 0; d < a.ndim; d++) numel *= a.shape[d];
        if (numel != a.numel) __builtin_trap();
        char back[64];
        int fd2 = memfd_create("fuzz-back", 0);
        snprintf(back, sizeof back, "/proc/self/fd/%d", fd2);
        ct_array b = {0};
        if (fd2 < 0 || ct_npy_write(back, &a) != CT_OK || ct_npy_read(back, &b) != CT_OK)
            __builtin_trap();
        size_t bytes = (size_t)a.numel * ct_dtype_size(a.dtype);
        if (b.dtype != a.dtype || b.ndim != a.ndim || b.numel != a.numel ||
            memcmp(a.data, b.data, bytes) != 0)
            __builtin_trap();
        ct_array_free(&b);
        close(fd2);
    }
    ct_array_free(&a);
    close(fd);
    return 0;
}
