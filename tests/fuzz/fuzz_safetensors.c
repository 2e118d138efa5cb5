/* safetensors reader: any bytes give CT_OK or an error naming the file; an accepted file's
 * entries lie inside it, and every entry can be read through. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;
    ct_st_file *f = NULL;
    if (ct_st_load(path, &f) == CT_OK) {
        uint64_t sum = 0;
        for (int i = 0; i < ct_st_count(f); i++) {
            const ct_st_entry *e = ct_st_at(f, i);
            const uint8_t *p = e->data;
            size_t nb = ct_st_nbytes(e);
            for (size_t j = 0; j < nb; j++) sum += p[j]; /* ASan checks the bounds */
            if (ct_st_find(f, e->name) != e) __builtin_trap();
        }
        for (int i = 0; i < ct_st_meta_count(f); i++) sum += (uint8_t)ct_st_meta_at(f, i).key[0];
        (void)sum;
    }
    ct_st_free(f);
    close(fd);
    return 0;
}
