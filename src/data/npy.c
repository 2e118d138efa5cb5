/* NPY files: "\x93NUMPY", a version (1.0: uint16 header length; 2.0: uint32), then an
 * ASCII Python dict literal such as {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 * padded with spaces and ending in '\n', then the raw data. The dict is parsed strictly:
 * exactly those three keys, each once, with the value types numpy writes. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NPY_MAX_HEADER (1 << 20) /* numpy writes a few hundred bytes; reject absurd lengths */
#define NPY_MAX_BYTES ((int64_t)1 << 40)

static const struct {
    const char *descr;
    ct_dtype dtype;
} npy_dtypes[] = {{"<f4", CT_DTYPE_F32}, {"|u1", CT_DTYPE_U8}, {"<i8", CT_DTYPE_I64}};

/* ---- header dict parser --------------------------------------------------------------- */

typedef struct {
    const char *path;
    const char *s; /* NUL-terminated header text */
    size_t pos;
} parser;

static ct_status bad(parser *p, const char *what) {
    return ct_error(CT_ERR_FORMAT, "%s: bad NPY header: %s at offset %zu in \"%.80s\"", p->path,
                    what, p->pos, p->s);
}

static void skip_ws(parser *p) {
    while (p->s[p->pos] == ' ' || p->s[p->pos] == '\t') p->pos++;
}

static bool eat(parser *p, char c) {
    skip_ws(p);
    if (p->s[p->pos] != c) return false;
    p->pos++;
    return true;
}

/* A quoted string (no escapes; numpy never writes any) into buf. */
static ct_status parse_str(parser *p, char *buf, size_t n) {
    skip_ws(p);
    char q = p->s[p->pos];
    if (q != '\'' && q != '"') return bad(p, "expected a quoted string");
    size_t start = ++p->pos;
    while (p->s[p->pos] && p->s[p->pos] != q && p->s[p->pos] != '\\') p->pos++;
    if (p->s[p->pos] != q) return bad(p, "unterminated or escaped string");
    size_t len = p->pos - start;
    if (len >= n) return bad(p, "string too long");
    memcpy(buf, p->s + start, len);
    buf[len] = 0;
    p->pos++;
    return CT_OK;
}

static ct_status parse_bool(parser *p, bool *out) {
    skip_ws(p);
    if (strncmp(p->s + p->pos, "True", 4) == 0) {
        *out = true;
        p->pos += 4;
    } else if (strncmp(p->s + p->pos, "False", 5) == 0) {
        *out = false;
        p->pos += 5;
    } else {
        return bad(p, "expected True or False");
    }
    return CT_OK;
}

/* A tuple of non-negative integers, Python syntax: (), (5,), (2, 3) or (2, 3,). */
static ct_status parse_shape(parser *p, ct_array *a) {
    if (!eat(p, '(')) return bad(p, "expected '(' to start the shape tuple");
    a->ndim = 0;
    bool comma = false; /* whether the last element was followed by a comma */
    for (;;) {
        skip_ws(p);
        if (p->s[p->pos] == ')') break;
        if (a->ndim > 0 && !comma) return bad(p, "expected ',' or ')' in the shape tuple");
        if (p->s[p->pos] < '0' || p->s[p->pos] > '9')
            return bad(p, "expected a non-negative integer in the shape tuple");
        if (a->ndim == CT_MAX_DIMS) return bad(p, "more dims than ctrain supports (6)");
        int64_t v = 0;
        while (p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
            if (v > (NPY_MAX_BYTES - 9) / 10) return bad(p, "dimension too large");
            v = v * 10 + (p->s[p->pos++] - '0');
        }
        a->shape[a->ndim++] = v;
        comma = eat(p, ',');
    }
    /* (5) is the integer 5 in Python, not a tuple */
    if (a->ndim == 1 && !comma) return bad(p, "a 1-element shape tuple needs a trailing comma");
    p->pos++;
    return CT_OK;
}

static ct_status parse_header(const char *path, const char *text, ct_array *a) {
    parser p = {path, text, 0};
    bool have_descr = false, have_fortran = false, have_shape = false, fortran = false;
    char descr[32];
    ct_status st;
    if (!eat(&p, '{')) return bad(&p, "expected '{'");
    for (;;) {
        skip_ws(&p);
        if (p.s[p.pos] == '}') break;
        char key[32];
        if ((st = parse_str(&p, key, sizeof key)) != CT_OK) return st;
        if (!eat(&p, ':')) return bad(&p, "expected ':' after a key");
        if (strcmp(key, "descr") == 0 && !have_descr) {
            if ((st = parse_str(&p, descr, sizeof descr)) != CT_OK) return st;
            have_descr = true;
        } else if (strcmp(key, "fortran_order") == 0 && !have_fortran) {
            if ((st = parse_bool(&p, &fortran)) != CT_OK) return st;
            have_fortran = true;
        } else if (strcmp(key, "shape") == 0 && !have_shape) {
            if ((st = parse_shape(&p, a)) != CT_OK) return st;
            have_shape = true;
        } else {
            return ct_error(CT_ERR_FORMAT, "%s: bad NPY header: unexpected or repeated key '%s'",
                            path, key);
        }
        if (!eat(&p, ',')) {
            skip_ws(&p);
            if (p.s[p.pos] != '}') return bad(&p, "expected ',' or '}'");
        }
    }
    p.pos++;
    skip_ws(&p);
    if (p.s[p.pos] != '\n' || p.s[p.pos + 1] != 0)
        return bad(&p, "expected only padding and a final newline after '}'");
    if (!have_descr || !have_fortran || !have_shape)
        return ct_error(CT_ERR_FORMAT,
                        "%s: bad NPY header: missing key '%s' (need descr, fortran_order, shape)",
                        path, !have_descr ? "descr" : !have_fortran ? "fortran_order" : "shape");
    if (fortran)
        return ct_error(CT_ERR_FORMAT,
                        "%s: fortran_order is True; only C-order arrays are supported", path);
    size_t i = 0, nd = sizeof npy_dtypes / sizeof npy_dtypes[0];
    while (i < nd && strcmp(descr, npy_dtypes[i].descr) != 0) i++;
    if (i == nd)
        return ct_error(CT_ERR_FORMAT,
                        "%s: unsupported dtype '%s' (supported: '<f4', '|u1', '<i8')", path,
                        descr);
    a->dtype = npy_dtypes[i].dtype;
    a->numel = 1;
    for (int d = 0; d < a->ndim; d++) {
        if (a->shape[d] > 0 && a->numel > NPY_MAX_BYTES / 8 / a->shape[d])
            return ct_error(CT_ERR_FORMAT, "%s: array larger than %lld bytes", path,
                            (long long)NPY_MAX_BYTES);
        a->numel *= a->shape[d];
    }
    return CT_OK;
}

/* ---- reader and writer ------------------------------------------------------------------ */

static ct_status npy_parse(gzFile f, const char *path, ct_array *out) {
    unsigned char pre[12];
    int64_t got = ct__gz_read(f, path, pre, 8);
    if (got < 0) return CT_ERR_IO;
    if (got < 8 || memcmp(pre, "\x93NUMPY", 6) != 0)
        return ct_error(CT_ERR_FORMAT, "%s: not an NPY file (no \\x93NUMPY magic)", path);
    int major = pre[6], minor = pre[7];
    if ((major != 1 && major != 2) || minor != 0)
        return ct_error(CT_ERR_FORMAT, "%s: unsupported NPY version %d.%d (supported: 1.0, 2.0)",
                        path, major, minor);
    int lenbytes = major == 1 ? 2 : 4;
    got = ct__gz_read(f, path, pre + 8, lenbytes);
    if (got < 0) return CT_ERR_IO;
    if (got < lenbytes) return ct_error(CT_ERR_FORMAT, "%s: truncated NPY preamble", path);
    uint32_t hlen = pre[8] | (uint32_t)pre[9] << 8;
    if (major == 2) hlen |= (uint32_t)pre[10] << 16 | (uint32_t)pre[11] << 24;
    if (hlen > NPY_MAX_HEADER)
        return ct_error(CT_ERR_FORMAT, "%s: NPY header length %u is too large", path, hlen);
    char *text = ct_malloc(hlen + 1);
    got = ct__gz_read(f, path, text, hlen);
    if (got != (int64_t)hlen) {
        free(text);
        if (got < 0) return CT_ERR_IO;
        return ct_error(CT_ERR_FORMAT, "%s: truncated: expected a %u-byte NPY header, got %lld",
                        path, hlen, (long long)got);
    }
    text[hlen] = 0;
    if (strlen(text) != hlen) {
        free(text);
        return ct_error(CT_ERR_FORMAT, "%s: bad NPY header: contains a NUL byte", path);
    }
    ct_array a = {0};
    ct_status st = parse_header(path, text, &a);
    free(text);
    if (st != CT_OK) return st;
    st = ct__read_payload(f, path, a.numel * (int64_t)ct_dtype_size(a.dtype), &a.data);
    if (st != CT_OK) return st;
    *out = a;
    return CT_OK;
}

ct_status ct_npy_read(const char *path, ct_array *out) {
    gzFile f;
    ct_status st = ct__gz_open(path, &f);
    if (st != CT_OK) return st;
    st = npy_parse(f, path, out);
    gzclose(f);
    return st;
}

ct_status ct_npy_write(const char *path, const ct_array *a) {
    CT_ASSERT(a->ndim >= 0 && a->ndim <= CT_MAX_DIMS, "ct_npy_write(%s): ndim %d", path, a->ndim);
    const char *descr = NULL;
    for (size_t i = 0; i < sizeof npy_dtypes / sizeof npy_dtypes[0]; i++)
        if (npy_dtypes[i].dtype == a->dtype) descr = npy_dtypes[i].descr;
    CT_ASSERT(descr, "ct_npy_write(%s): unknown dtype %d", path, (int)a->dtype);
    int64_t numel = 1;
    for (int d = 0; d < a->ndim; d++) numel *= a->shape[d];
    CT_ASSERT(numel == a->numel, "ct_npy_write(%s): numel %lld does not match the shape", path,
              (long long)a->numel);

    /* the header as numpy writes it, padded so the data starts at a multiple of 64 */
    char dict[64 + 24 * CT_MAX_DIMS];
    int len = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                       descr);
    for (int d = 0; d < a->ndim; d++)
        len += snprintf(dict + len, sizeof dict - len, d ? ", %lld" : "%lld",
                        (long long)a->shape[d]);
    len += snprintf(dict + len, sizeof dict - len, "%s), }", a->ndim == 1 ? "," : "");
    int pre = 10; /* magic, version, uint16 length: format 1.0 always suffices here */
    int hlen = (len + 1 + pre + 63) / 64 * 64 - pre;
    unsigned char head[10 + sizeof dict + 64];
    memcpy(head, "\x93NUMPY\x01\x00", 8);
    head[8] = (unsigned char)(hlen & 0xff);
    head[9] = (unsigned char)(hlen >> 8);
    memcpy(head + pre, dict, (size_t)len);
    memset(head + pre + len, ' ', (size_t)(hlen - len - 1));
    head[pre + hlen - 1] = '\n';

    FILE *f = fopen(path, "wb");
    if (!f) return ct_error(CT_ERR_IO, "%s: cannot open for writing: %s", path, strerror(errno));
    size_t bytes = (size_t)a->numel * ct_dtype_size(a->dtype);
    bool ok = fwrite(head, 1, (size_t)(pre + hlen), f) == (size_t)(pre + hlen) &&
              (bytes == 0 || fwrite(a->data, 1, bytes, f) == bytes);
    int err = errno;
    if (fclose(f) != 0 && ok) {
        ok = false;
        err = errno;
    }
    if (!ok) return ct_error(CT_ERR_IO, "%s: write failed: %s", path, strerror(err));
    return CT_OK;
}
