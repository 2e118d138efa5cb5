/* IDX files (the MNIST family): a big-endian magic 0x0000TTDD (TT = element type, 0x08 for
 * unsigned byte; DD = number of dims), DD big-endian uint32 sizes, then the raw data. */
#include "internal.h"

#include <stdlib.h>

/* Largest payload we accept: the dims are untrusted and their product must not overflow. */
#define IDX_MAX_BYTES ((int64_t)1 << 40)

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static ct_status idx_parse(gzFile f, const char *path, int ndim, ct_array *out) {
    unsigned char hdr[4 + 4 * CT_MAX_DIMS];
    int hlen = 4 + 4 * ndim;
    int64_t got = ct__gz_read(f, path, hdr, 4);
    if (got < 0) return CT_ERR_IO;
    if (got < 4)
        return ct_error(CT_ERR_FORMAT, "%s: truncated: expected a %d-byte header, got %lld bytes",
                        path, hlen, (long long)got);
    uint32_t magic = be32(hdr), want = 0x0800u | (uint32_t)ndim;
    if (magic != want)
        return ct_error(CT_ERR_FORMAT,
                        "%s: wrong magic number 0x%08x, expected 0x%08x (unsigned-byte IDX "
                        "with %d dims)", path, magic, want, ndim);
    got = ct__gz_read(f, path, hdr + 4, hlen - 4);
    if (got < 0) return CT_ERR_IO;
    if (got < hlen - 4)
        return ct_error(CT_ERR_FORMAT, "%s: truncated: expected a %d-byte header, got %lld bytes",
                        path, hlen, (long long)(got + 4));

    ct_array a = {.dtype = CT_DTYPE_U8, .ndim = ndim, .numel = 1};
    for (int i = 0; i < ndim; i++) {
        a.shape[i] = be32(hdr + 4 + 4 * i);
        /* the count (dim 0) may be 0; a sample with a zero-size dim is meaningless */
        if (i > 0 && a.shape[i] == 0)
            return ct_error(CT_ERR_FORMAT, "%s: unsupported dims: dim %d has size 0", path, i);
        if (a.shape[i] > 0 && a.numel > IDX_MAX_BYTES / a.shape[i])
            return ct_error(CT_ERR_FORMAT,
                            "%s: unsupported dims: more than %lld bytes of data", path,
                            (long long)IDX_MAX_BYTES);
        a.numel *= a.shape[i];
    }
    ct_status st = ct__read_payload(f, path, a.numel, &a.data);
    if (st != CT_OK) return st;
    *out = a;
    return CT_OK;
}

ct_status ct_idx_read(const char *path, int ndim, ct_array *out) {
    if (ndim < 1 || ndim > CT_MAX_DIMS)
        return ct_error(CT_ERR_ARG, "%s: unsupported dims: asked for %d, IDX reader takes 1..%d",
                        path, ndim, CT_MAX_DIMS);
    gzFile f;
    ct_status st = ct__gz_open(path, &f);
    if (st != CT_OK) return st;
    st = idx_parse(f, path, ndim, out);
    gzclose(f);
    return st;
}
