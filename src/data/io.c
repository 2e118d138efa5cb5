/* Raw arrays and the zlib-backed reading shared by the IDX and NPY readers. zlib's gzread
 * passes plain files through unchanged, so every reader accepts .gz for free. */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

void ct_array_free(ct_array *a) {
    free(a->data);
    memset(a, 0, sizeof *a);
}

ct_status ct__gz_open(const char *path, gzFile *out) {
    errno = 0;
    gzFile f = gzopen(path, "rb");
    if (!f)
        return ct_error(CT_ERR_IO, "%s: cannot open: %s", path,
                        errno ? strerror(errno) : "out of memory");
    gzbuffer(f, 1 << 17); /* fewer read() calls than the 8 KiB default */
    *out = f;
    return CT_OK;
}

int64_t ct__gz_read(gzFile f, const char *path, void *buf, int64_t n) {
    int64_t got = 0;
    while (got < n) {
        /* gzread takes an unsigned and returns an int: read at most 1 GiB at a time */
        int64_t want = n - got < (1 << 30) ? n - got : (1 << 30);
        int r = gzread(f, (char *)buf + got, (unsigned)want);
        if (r < 0) {
            int zerr;
            const char *msg = gzerror(f, &zerr);
            ct_error(CT_ERR_IO, "%s: read error: %s", path,
                     zerr == Z_ERRNO ? strerror(errno) : msg);
            return -1;
        }
        if (r == 0) break;
        got += r;
    }
    return got;
}

ct_status ct__read_payload(gzFile f, const char *path, int64_t nbytes, void **out) {
    const int64_t first = (int64_t)1 << 26; /* 64 MiB: MNIST's train images fit at once */
    int64_t cap = nbytes < first ? nbytes : first;
    char *buf = ct_malloc((size_t)cap);
    int64_t got = 0;
    for (;;) {
        int64_t r = ct__gz_read(f, path, buf + got, cap - got);
        if (r < 0) {
            free(buf);
            return CT_ERR_IO;
        }
        got += r;
        if (got < cap || cap == nbytes) break; /* end of file, or everything arrived */
        cap = cap > nbytes / 2 ? nbytes : 2 * cap;
        buf = ct_realloc(buf, (size_t)cap);
    }
    if (got < nbytes) {
        free(buf);
        return ct_error(CT_ERR_FORMAT, "%s: truncated: expected %lld bytes of data, got %lld",
                        path, (long long)nbytes, (long long)got);
    }
    char extra[256];
    int64_t more = ct__gz_read(f, path, extra, sizeof extra);
    if (more != 0) {
        free(buf);
        if (more < 0) return CT_ERR_IO;
        return ct_error(CT_ERR_FORMAT,
                        "%s: trailing bytes after the expected %lld bytes of data", path,
                        (long long)nbytes);
    }
    *out = buf;
    return CT_OK;
}
