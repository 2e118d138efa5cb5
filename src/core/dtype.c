/* Element types of the file formats. */
#include <string.h>

#include "core.h"

static const struct {
    const char *name;
    size_t size;
} dtypes[CT_DTYPE_COUNT] = {
    [CT_DTYPE_F64] = {"F64", 8}, [CT_DTYPE_F32] = {"F32", 4}, [CT_DTYPE_F16] = {"F16", 2},
    [CT_DTYPE_BF16] = {"BF16", 2}, [CT_DTYPE_I64] = {"I64", 8}, [CT_DTYPE_I32] = {"I32", 4},
    [CT_DTYPE_I16] = {"I16", 2}, [CT_DTYPE_I8] = {"I8", 1}, [CT_DTYPE_U64] = {"U64", 8},
    [CT_DTYPE_U32] = {"U32", 4}, [CT_DTYPE_U16] = {"U16", 2}, [CT_DTYPE_U8] = {"U8", 1},
    [CT_DTYPE_BOOL] = {"BOOL", 1},
};

static bool dtype_ok(ct_dtype d) { return (unsigned)d < CT_DTYPE_COUNT; }

const char *ct_dtype_name(ct_dtype d) { return dtype_ok(d) ? dtypes[d].name : NULL; }
size_t ct_dtype_size(ct_dtype d) { return dtype_ok(d) ? dtypes[d].size : 0; }

bool ct_dtype_parse(const char *s, ct_dtype *out) {
    for (int d = 0; d < CT_DTYPE_COUNT; d++)
        if (strcmp(s, dtypes[d].name) == 0) {
            *out = (ct_dtype)d;
            return true;
        }
    return false;
}
