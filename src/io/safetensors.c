/* safetensors (https://github.com/huggingface/safetensors): an 8-byte little-endian header
 * length N, N bytes of JSON describing each tensor's dtype, shape and [begin, end) byte range
 * in the data section that follows, and an optional "__metadata__" string map. The JSON is
 * built and parsed by jansson. A "data_crc32" metadata value (ctrain's checkpoints carry
 * one) is checked against the data section on every load. */
#include "io.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader copies it as-is"
#endif

/* ---- entries --------------------------------------------------------------------------- */

int64_t ct_st_numel(const ct_st_entry *e) {
    int64_t n = 1;
    for (int i = 0; i < e->ndim; i++) n *= e->shape[i];
    return n;
}

size_t ct_st_nbytes(const ct_st_entry *e) {
    return (size_t)ct_st_numel(e) * ct_dtype_size(e->dtype);
}

ct_st_entry ct_st_from_tensor(const char *name, const ct_tensor *t) {
    ct_st_entry e = {.name = name, .dtype = CT_DTYPE_F32, .ndim = t->ndim, .data = t->data};
    for (int i = 0; i < t->ndim; i++) e.shape[i] = t->shape[i];
    return e;
}

static const char *shape_str(int ndim, const int64_t *shape, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}
#define SHAPE_STR(nd, s) shape_str((nd), (s), (char[128]){0}, 128)

/* Bytes of a shape's data, or false on a negative size or overflow. */
static bool shape_bytes(int ndim, const int64_t *shape, size_t esize, uint64_t *out) {
    uint64_t n = esize;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return false;
        if (shape[i] && n > UINT64_MAX / (uint64_t)shape[i]) return false;
        n *= (uint64_t)shape[i];
    }
    *out = n;
    return true;
}

/* ---- writing --------------------------------------------------------------------------- */

typedef struct {
    const ct_st_entry *entries;
    const int *layout; /* entry indices in data order */
    int n;
    const char *header;
    size_t header_len, padded_len;
} save_ctx;

static ct_status save_write(FILE *f, void *vctx) {
    const save_ctx *s = vctx;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)s->padded_len >> (8 * i));
    bool ok = fwrite(len8, 1, 8, f) == 8 &&
              fwrite(s->header, 1, s->header_len, f) == s->header_len;
    for (size_t i = s->header_len; ok && i < s->padded_len; i++) ok = fputc(' ', f) != EOF;
    for (int k = 0; ok && k < s->n; k++) {
        const ct_st_entry *e = &s->entries[s->layout[k]];
        size_t nb = ct_st_nbytes(e);
        ok = nb == 0 || fwrite(e->data, 1, nb, f) == nb;
    }
    return ok ? CT_OK : ct_error(CT_ERR_IO, "short write: %s", strerror(errno));
}

static void data_layout(const ct_st_entry *entries, int n, int *layout);

uint32_t ct_st_entries_crc32(const ct_st_entry *entries, int n) {
    int *layout = malloc(sizeof *layout * (size_t)n + 1);
    CT_ASSERT(layout, "safetensors: out of memory");
    data_layout(entries, n, layout);
    uLong crc = crc32_z(0L, Z_NULL, 0);
    for (int k = 0; k < n; k++) {
        const ct_st_entry *e = &entries[layout[k]];
        if (ct_st_nbytes(e)) crc = crc32_z(crc, e->data, ct_st_nbytes(e));
    }
    free(layout);
    return (uint32_t)crc;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first name that appears twice in names[0..n), or NULL. Sorts names. */
static const char *find_duplicate(const char **names, int n) {
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0) return names[i];
    return NULL;
}

static ct_status check_entries(const char *path, const ct_st_entry *entries, int n,
                               const ct_st_meta *meta, int nmeta) {
    if (n < 0 || nmeta < 0 || (n > 0 && !entries) || (nmeta > 0 && !meta))
        return ct_error(CT_ERR_ARG, "%s: bad entry or metadata count", path);
    for (int i = 0; i < n; i++) {
        const ct_st_entry *e = &entries[i];
        if (!e->name || !*e->name || strcmp(e->name, "__metadata__") == 0)
            return ct_error(CT_ERR_ARG, "%s: entry %d has an empty or reserved name", path, i);
        if (!ct_dtype_size(e->dtype))
            return ct_error(CT_ERR_ARG, "%s: entry '%s' has invalid dtype %d", path, e->name,
                            (int)e->dtype);
        if (e->ndim < 0 || e->ndim > CT_MAX_DIMS)
            return ct_error(CT_ERR_ARG, "%s: entry '%s' has ndim %d outside 0..%d", path,
                            e->name, e->ndim, CT_MAX_DIMS);
        uint64_t nb;
        if (!shape_bytes(e->ndim, e->shape, ct_dtype_size(e->dtype), &nb) || nb > SIZE_MAX / 2)
            return ct_error(CT_ERR_ARG, "%s: entry '%s' has invalid shape %s", path, e->name,
                            SHAPE_STR(e->ndim, e->shape));
        if (nb > 0 && !e->data)
            return ct_error(CT_ERR_ARG, "%s: entry '%s' has no data", path, e->name);
    }
    for (int i = 0; i < nmeta; i++)
        if (!meta[i].key || !meta[i].value)
            return ct_error(CT_ERR_ARG, "%s: metadata item %d has a NULL key or value", path, i);

    const char **names = ct_malloc(sizeof *names * (size_t)(n > nmeta ? n : nmeta) + 1);
    for (int i = 0; i < n; i++) names[i] = entries[i].name;
    const char *dup = find_duplicate(names, n);
    ct_status st = CT_OK;
    if (dup) st = ct_error(CT_ERR_ARG, "%s: two entries are named '%s'", path, dup);
    for (int i = 0; i < nmeta; i++) names[i] = meta[i].key;
    if (!st && (dup = find_duplicate(names, nmeta)))
        st = ct_error(CT_ERR_ARG, "%s: metadata key '%s' appears twice", path, dup);
    free(names);
    return st;
}

/* Largest element first keeps every tensor aligned to its element size (the data section
 * starts at a multiple of 8); ties keep the caller's order. */
static void data_layout(const ct_st_entry *entries, int n, int *layout) {
    int k = 0;
    for (size_t size = 8; size >= 1; size /= 2)
        for (int i = 0; i < n; i++)
            if (ct_dtype_size(entries[i].dtype) == size) layout[k++] = i;
}

/* json_object_set_new that reports failure (e.g. a key that is not UTF-8). */
static bool set_new(json_t *obj, const char *key, json_t *v) {
    return v && json_object_set_new(obj, key, v) == 0;
}

/* Builds the header object into *out; CT_ERR_ARG for a name jansson rejects (not UTF-8). */
static ct_status build_header(const ct_st_entry *entries, int n, const uint64_t *begin,
                              const ct_st_meta *meta, int nmeta, const char *path, json_t **out) {
    /* jansson's *_new calls take the value's reference even when they fail, so each value is
     * handed to its parent as soon as it exists and one json_decref(root) frees everything */
    json_t *root = *out = json_object();
    if (!root) return ct_error(CT_ERR_IO, "%s: out of memory", path);
    ct_status st = CT_OK;
    if (nmeta > 0) {
        json_t *m = json_object();
        if (!set_new(root, "__metadata__", m)) st = ct_error(CT_ERR_IO, "%s: out of memory", path);
        for (int i = 0; !st && i < nmeta; i++)
            if (!set_new(m, meta[i].key, json_string(meta[i].value)))
                st = ct_error(CT_ERR_ARG, "%s: metadata '%s' could not be encoded (not UTF-8?)",
                              path, meta[i].key);
    }
    for (int i = 0; !st && i < n; i++) {
        const ct_st_entry *e = &entries[i];
        json_t *t = json_object(), *shape = NULL, *off = NULL;
        bool ok = set_new(root, e->name, t) &&
                  set_new(t, "dtype", json_string(ct_dtype_name(e->dtype)));
        ok = ok && set_new(t, "shape", shape = json_array());
        for (int d = 0; ok && d < e->ndim; d++)
            ok = json_array_append_new(shape, json_integer(e->shape[d])) == 0;
        ok = ok && set_new(t, "data_offsets", off = json_array());
        ok = ok && json_array_append_new(off, json_integer((json_int_t)begin[i])) == 0;
        ok = ok &&
             json_array_append_new(off, json_integer((json_int_t)(begin[i] + ct_st_nbytes(e)))) == 0;
        if (!ok)
            st = ct_error(CT_ERR_ARG, "%s: entry '%s' could not be encoded (name not UTF-8?)",
                          path, e->name);
    }
    if (st) {
        json_decref(root);
        *out = NULL;
    }
    return st;
}

ct_status ct_st_save(const char *path, const ct_st_entry *entries, int n, const ct_st_meta *meta,
                     int nmeta) {
    ct_status st = check_entries(path, entries, n, meta, nmeta);
    if (st) return st;
    int *layout = ct_malloc(sizeof *layout * (size_t)n + 1);
    uint64_t *begin = ct_malloc(sizeof *begin * (size_t)n + 1);
    data_layout(entries, n, layout);
    uint64_t off = 0;
    for (int k = 0; k < n; k++) {
        begin[layout[k]] = off;
        off += ct_st_nbytes(&entries[layout[k]]);
    }
    json_t *root;
    st = build_header(entries, n, begin, meta, nmeta, path, &root);
    free(begin);
    if (st) {
        free(layout);
        return st;
    }
    char *header = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!header) {
        free(layout);
        return ct_error(CT_ERR_IO, "%s: could not encode the JSON header", path);
    }
    size_t len = strlen(header);
    save_ctx s = {entries, layout, n, header, len, (len + 7) / 8 * 8};
    st = ct_write_atomic(path, save_write, &s);
    free(header);
    free(layout);
    return st;
}

/* ---- reading --------------------------------------------------------------------------- */

struct ct_st_file {
    char *path;
    json_t *root; /* owns the name, dtype and metadata strings */
    unsigned char *data;
    int n, nmeta;
    ct_st_entry *entries;
    void **copies; /* per entry: an aligned copy when the file's offset is misaligned */
    int *by_name;  /* entry indices sorted by name */
    ct_st_meta *meta;
};

void ct_st_free(ct_st_file *f) {
    if (!f) return;
    for (int i = 0; f->copies && i < f->n; i++) free(f->copies[i]);
    free(f->copies);
    free(f->entries);
    free(f->by_name);
    free(f->meta);
    free(f->data);
    json_decref(f->root);
    free(f->path);
    free(f);
}

const char *ct_st_path(const ct_st_file *f) { return f->path; }
int ct_st_count(const ct_st_file *f) { return f->n; }
int ct_st_meta_count(const ct_st_file *f) { return f->nmeta; }

const ct_st_entry *ct_st_at(const ct_st_file *f, int i) {
    CT_ASSERT(i >= 0 && i < f->n, "ct_st_at: index %d outside 0..%d of %s", i, f->n, f->path);
    return &f->entries[i];
}

ct_st_meta ct_st_meta_at(const ct_st_file *f, int i) {
    CT_ASSERT(i >= 0 && i < f->nmeta, "ct_st_meta_at: index %d outside 0..%d of %s", i,
              f->nmeta, f->path);
    return f->meta[i];
}

const char *ct_st_meta_get(const ct_st_file *f, const char *key) {
    for (int i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta[i].key, key) == 0) return f->meta[i].value;
    return NULL;
}

const ct_st_entry *ct_st_find(const ct_st_file *f, const char *name) {
    int lo = 0, hi = f->n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(f->entries[f->by_name[mid]].name, name);
        if (c == 0) return &f->entries[f->by_name[mid]];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

ct_status ct_st_copy_f32(const ct_st_file *f, const char *name, ct_tensor *dst) {
    const ct_st_entry *e = ct_st_find(f, name);
    if (!e) return ct_error(CT_ERR_SHAPE, "%s: no tensor named '%s'", f->path, name);
    if (e->dtype != CT_DTYPE_F32)
        return ct_error(CT_ERR_SHAPE, "%s: tensor '%s' is %s, expected F32", f->path, name,
                        ct_dtype_name(e->dtype));
    bool same = e->ndim == dst->ndim;
    for (int i = 0; same && i < e->ndim; i++) same = e->shape[i] == dst->shape[i];
    if (!same)
        return ct_error(CT_ERR_SHAPE, "%s: tensor '%s' has shape %s but the destination has %s",
                        f->path, name, SHAPE_STR(e->ndim, e->shape), CT_SHAPE_STR(dst));
    if (dst->numel) memcpy(dst->data, e->data, (size_t)dst->numel * sizeof(float));
    return CT_OK;
}

/* Sets a CT_ERR_FORMAT message and evaluates to false. */
#define FORMAT_FAIL(...) (ct_error(CT_ERR_FORMAT, __VA_ARGS__), false)

/* Reads an integer JSON value >= 0 into *out. */
static bool json_nonneg(const json_t *v, int64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return false;
    *out = json_integer_value(v);
    return true;
}

/* Fills e (and *begin, *end) from one header entry; false with the message set. */
static bool parse_entry(const char *path, const char *name, json_t *v, uint64_t data_size,
                        ct_st_entry *e, uint64_t *begin, uint64_t *end) {
    if (!json_is_object(v))
        return FORMAT_FAIL("%s: header entry '%s' is not a JSON object", path, name);
    json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
           *off = json_object_get(v, "data_offsets");
    if (!json_is_string(dt) || !json_is_array(sh) || !json_is_array(off))
        return FORMAT_FAIL("%s: tensor '%s' needs a string \"dtype\", an array \"shape\" and "
                           "an array \"data_offsets\"", path, name);
    e->name = name;
    if (!ct_dtype_parse(json_string_value(dt), &e->dtype))
        return FORMAT_FAIL("%s: tensor '%s' has unknown dtype \"%s\"", path, name,
                        json_string_value(dt));
    size_t nd = json_array_size(sh);
    if (nd > CT_MAX_DIMS)
        return FORMAT_FAIL("%s: tensor '%s' has %zu dims; at most %d are supported",
                        path, name, nd, CT_MAX_DIMS);
    e->ndim = (int)nd;
    for (size_t d = 0; d < nd; d++)
        if (!json_nonneg(json_array_get(sh, d), &e->shape[d]))
            return FORMAT_FAIL("%s: tensor '%s' has a shape entry that is not an "
                            "integer >= 0", path, name);
    int64_t b, en;
    if (json_array_size(off) != 2 || !json_nonneg(json_array_get(off, 0), &b) ||
        !json_nonneg(json_array_get(off, 1), &en) || b > en)
        return FORMAT_FAIL("%s: tensor '%s' needs data_offsets [begin, end] with "
                        "0 <= begin <= end", path, name);
    *begin = (uint64_t)b;
    *end = (uint64_t)en;
    if (*end > data_size)
        return FORMAT_FAIL("%s: tensor '%s' has data_offsets [%llu, %llu] past the "
                        "end of the %llu-byte data section", path, name,
                        (unsigned long long)*begin, (unsigned long long)*end,
                        (unsigned long long)data_size);
    uint64_t need = 0;
    if (!shape_bytes(e->ndim, e->shape, ct_dtype_size(e->dtype), &need))
        return FORMAT_FAIL("%s: tensor '%s' has shape %s, too large", path, name,
                           SHAPE_STR(e->ndim, e->shape));
    if (need != *end - *begin)
        return FORMAT_FAIL("%s: tensor '%s' of shape %s and dtype %s needs %llu "
                        "bytes but its data_offsets [%llu, %llu] span %llu", path, name,
                        SHAPE_STR(e->ndim, e->shape), ct_dtype_name(e->dtype),
                        (unsigned long long)need, (unsigned long long)*begin,
                        (unsigned long long)*end, (unsigned long long)(*end - *begin));
    return true;
}

static int cmp_begin(const void *a, const void *b, void *begin) {
    uint64_t x = ((const uint64_t *)begin)[*(const int *)a];
    uint64_t y = ((const uint64_t *)begin)[*(const int *)b];
    return x < y ? -1 : x > y;
}
static int cmp_name(const void *a, const void *b, void *entries) {
    const ct_st_entry *e = entries;
    return strcmp(e[*(const int *)a].name, e[*(const int *)b].name);
}

/* Builds entries, metadata and indices from the parsed header. */
static ct_status index_header(ct_st_file *f, uint64_t data_size) {
    const char *path = f->path;
    size_t nkeys = json_object_size(f->root);
    f->entries = ct_calloc(nkeys + 1, sizeof *f->entries);
    f->copies = ct_calloc(nkeys + 1, sizeof *f->copies);
    f->by_name = ct_calloc(nkeys + 1, sizeof *f->by_name);
    uint64_t *begin = ct_calloc(nkeys + 1, sizeof *begin), *end = ct_calloc(nkeys + 1, sizeof *end);
    int *order = ct_calloc(nkeys + 1, sizeof *order);
    ct_status st = CT_OK;

    const char *key;
    json_t *v;
    json_object_foreach(f->root, key, v) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(v)) {
                st = ct_error(CT_ERR_FORMAT, "%s: __metadata__ is not a JSON object", path);
                goto done;
            }
            f->meta = ct_calloc(json_object_size(v) + 1, sizeof *f->meta);
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv) {
                if (!json_is_string(mv)) {
                    st = ct_error(CT_ERR_FORMAT, "%s: __metadata__ value of '%s' is not a string",
                                  path, mk);
                    goto done;
                }
                f->meta[f->nmeta++] = (ct_st_meta){mk, json_string_value(mv)};
            }
            continue;
        }
        if (!parse_entry(path, key, v, data_size, &f->entries[f->n], &begin[f->n], &end[f->n])) {
            st = CT_ERR_FORMAT;
            goto done;
        }
        f->n++;
    }

    /* The non-empty ranges must tile the data section exactly, as the format requires: a
     * hole or trailing bytes would let one file mean two things, and a header length a
     * few bytes short (its padding cut off) would shift every tensor silently. */
    int m = 0;
    for (int i = 0; i < f->n; i++)
        if (end[i] > begin[i]) order[m++] = i;
    qsort_r(order, (size_t)m, sizeof *order, cmp_begin, begin);
    uint64_t covered = 0;
    for (int k = 0; k < m && st == CT_OK; k++) {
        int i = order[k], prev = k ? order[k - 1] : -1;
        if (begin[i] < covered)
            st = ct_error(CT_ERR_FORMAT, "%s: tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap", path,
                          f->entries[prev].name, (unsigned long long)begin[prev], (unsigned long long)end[prev],
                          f->entries[i].name, (unsigned long long)begin[i], (unsigned long long)end[i]);
        else if (begin[i] > covered)
            st = ct_error(CT_ERR_FORMAT, "%s: bytes [%llu, %llu) of the data section, before tensor '%s', belong "
                          "to no tensor (a hole, or a wrong header length)", path, (unsigned long long)covered,
                          (unsigned long long)begin[i], f->entries[i].name);
        covered = end[i];
    }
    if (st == CT_OK && covered != data_size)
        st = ct_error(CT_ERR_FORMAT, "%s: the tensors end at byte %llu of the %llu-byte data section; the "
                      "rest belongs to no tensor (trailing bytes, or a wrong header length)", path, (unsigned long long)covered,
                      (unsigned long long)data_size);
    if (st != CT_OK) goto done;

    for (int i = 0; i < f->n; i++) {
        ct_st_entry *e = &f->entries[i];
        size_t es = ct_dtype_size(e->dtype), nb = (size_t)(end[i] - begin[i]);
        e->data = f->data + begin[i];
        if (begin[i] % es != 0 && nb > 0) {
            /* the data section is 64-byte aligned, so only an odd offset needs a copy */
            f->copies[i] = ct_malloc(nb);
            memcpy(f->copies[i], e->data, nb);
            e->data = f->copies[i];
        }
        f->by_name[i] = i;
    }
    qsort_r(f->by_name, (size_t)f->n, sizeof *f->by_name, cmp_name, f->entries);

done:
    free(begin);
    free(end);
    free(order);
    return st;
}

static ct_status read_exact(FILE *fp, void *buf, size_t n, const char *path, const char *what) {
    if (n && fread(buf, 1, n, fp) != n)
        return ct_error(CT_ERR_IO, "%s: reading the %s failed: %s", path, what,
                        ferror(fp) ? strerror(errno) : "unexpected end of file");
    return CT_OK;
}

static ct_status load_into(ct_st_file *f, FILE *fp) {
    const char *path = f->path;
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0)
        return ct_error(CT_ERR_IO, "%s: stat failed: %s", path, strerror(errno));
    uint64_t size = (uint64_t)sb.st_size;
    if (size < 8)
        return ct_error(CT_ERR_FORMAT, "%s: file is too short (%llu bytes); a safetensors file "
                        "starts with an 8-byte header length", path, (unsigned long long)size);
    unsigned char len8[8];
    ct_status st = read_exact(fp, len8, 8, path, "header length");
    if (st) return st;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | len8[i];
    if (hlen > size - 8)
        return ct_error(CT_ERR_FORMAT, "%s: header length %llu exceeds the file size (%llu bytes)",
                        path, (unsigned long long)hlen, (unsigned long long)size);

    char *header = ct_malloc(hlen + 1);
    st = read_exact(fp, header, hlen, path, "header");
    if (!st) {
        json_error_t err;
        f->root = json_loadb(header, hlen, JSON_REJECT_DUPLICATES, &err);
        if (!f->root)
            st = ct_error(CT_ERR_FORMAT, "%s: invalid JSON header: %s (line %d, column %d)", path,
                          err.text, err.line, err.column);
        else if (!json_is_object(f->root))
            st = ct_error(CT_ERR_FORMAT, "%s: the JSON header is not an object", path);
    }
    free(header);
    if (st) return st;

    uint64_t data_size = size - 8 - hlen;
    if (data_size > SIZE_MAX - 64) return ct_error(CT_ERR_IO, "%s: data section too large", path);
    /* 64-byte aligned so that aligned offsets give aligned tensor pointers */
    f->data = ct_aligned_malloc(64, (data_size + 63) / 64 * 64 + 64);
    st = read_exact(fp, f->data, data_size, path, "data section");
    if (st) return st;
    st = index_header(f, data_size);
    if (st) return st;
    /* The tensors tile the data section exactly (index_header), so its CRC is theirs. */
    const char *want = ct_st_meta_get(f, "data_crc32");
    if (want) {
        char got[16];
        snprintf(got, sizeof got, "%08x", (unsigned)crc32_z(crc32_z(0L, Z_NULL, 0), f->data, data_size));
        if (strcmp(want, got) != 0)
            return ct_error(CT_ERR_FORMAT, "%s: the tensor data does not match its checksum (CRC32 %s, the "
                            "metadata says %.16s): the file is corrupt", path, got, want);
    }
    return CT_OK;
}

ct_status ct_st_load(const char *path, ct_st_file **out) {
    *out = NULL;
    FILE *fp = NULL;
    ct_status st = ct_fopen_regular(path, &fp);
    if (st != CT_OK) return st;
    ct_st_file *f = ct_calloc(1, sizeof *f);
    f->path = ct_strdup(path);
    st = load_into(f, fp);
    fclose(fp);
    if (st) {
        ct_st_free(f);
        return st;
    }
    *out = f;
    return CT_OK;
}
