/* torchvision's image transforms on 8-bit images, with the same pixels torchvision 0.14
 * gives on PIL images: Resize (PIL's bilinear resampling, which antialiases when it
 * shrinks), CenterCrop, RandomResizedCrop (torchvision's 10-try algorithm, then PIL's
 * crop and resize) and RandomHorizontalFlip. Images stay uint8 throughout, as in PIL. */
#include "internal.h"

#ifdef __AVX2__
#include <immintrin.h>
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- PIL's resampling (libImaging/Resample.c, 8 bits per channel, bilinear filter) ---- */

#define PRECISION_BITS (32 - 8 - 2)

static double bilinear(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

/* PIL's precompute_coeffs + normalize_coeffs_8bpc: for each output index, the first input
 * index and count (bounds) and ksize fixed-point weights. Returns ksize. */
static int coeffs(int64_t in_size, int64_t out_size, int64_t **bounds, int32_t **kk) {
    double scale = (double)in_size / (double)out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 1.0 * filterscale; /* the bilinear filter's support is 1 */
    int ksize = (int)ceil(support) * 2 + 1;
    double *k = ct_malloc((size_t)(out_size * ksize) * sizeof *k);
    *bounds = ct_malloc((size_t)out_size * 2 * sizeof **bounds);
    *kk = ct_malloc((size_t)(out_size * ksize) * sizeof **kk);
    for (int64_t xx = 0; xx < out_size; xx++) {
        double center = ((double)xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int64_t xmin = (int64_t)(center - support + 0.5), xmax = (int64_t)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double *kx = k + xx * ksize;
        int64_t x;
        for (x = 0; x < xmax; x++) {
            double w = bilinear(((double)(x + xmin) - center + 0.5) * ss);
            kx[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0) kx[x] /= ww;
        for (; x < ksize; x++) kx[x] = 0;
        (*bounds)[xx * 2] = xmin;
        (*bounds)[xx * 2 + 1] = xmax;
    }
    for (int64_t i = 0; i < out_size * ksize; i++)
        (*kk)[i] = k[i] < 0 ? (int32_t)(-0.5 + k[i] * (1 << PRECISION_BITS))
                            : (int32_t)(0.5 + k[i] * (1 << PRECISION_BITS));
    free(k);
    return ksize;
}

static inline uint8_t clip8(int32_t v) {
    v >>= PRECISION_BITS; /* arithmetic: negative sums stay negative */
    return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

/* PIL's horizontal pass over rows rows (stride bytes apart) of C channels into rows of w
 * pixels, from output from_x on. RGB
 * has its own loop, whose three sums stay in registers. */
static void resample_rows(const uint8_t *restrict src, int64_t stride, int64_t rows, int C,
                          uint8_t *restrict dst, int64_t w, int64_t from_x, const int64_t *bounds,
                          const int32_t *kk, int ks) {
    const int32_t half = 1 << (PRECISION_BITS - 1);
    for (int64_t y = 0; y < rows; y++, src += stride) {
        for (int64_t xx = from_x; xx < w; xx++) {
            uint8_t *d = dst + (y * w + xx) * C;
            const int32_t *k = kk + xx * ks;
            const uint8_t *p = src + bounds[xx * 2] * C;
            int n = (int)bounds[xx * 2 + 1];
            if (C == 3) {
                int32_t s0 = half, s1 = half, s2 = half;
                for (int x = 0; x < n; x++, p += 3) {
                    s0 += p[0] * k[x];
                    s1 += p[1] * k[x];
                    s2 += p[2] * k[x];
                }
                d[0] = clip8(s0), d[1] = clip8(s1), d[2] = clip8(s2);
            } else {
                for (int c = 0; c < C; c++) {
                    int32_t ss = half;
                    for (int x = 0; x < n; x++) ss += p[x * C + c] * k[x];
                    d[c] = clip8(ss);
                }
            }
        }
    }
}

#ifdef __AVX2__
/* resample_rows for RGB, 8 output pixels at a time in AVX2 lanes: each tap gathers the 8
 * input pixels (4 bytes from each, R G B and one more) and adds their channels times the
 * 8 weights, the same int32 sums as the scalar loop. Every output runs as many taps as the
 * most of the 8 has: those past its own count have weight 0 (coeffs pads with zeros), and
 * their pixel index is clamped to the row (whose width bounds gives). The gather reads one
 * byte past a pixel, so the last row goes to the scalar loop when that byte may lie outside
 * the buffer, as do the last w % 8 outputs. */
static int64_t resample_rows_rgb8(const uint8_t *src, int64_t stride, int64_t rows, bool last_row_of_buffer,
                                  uint8_t *dst, int64_t w, const int64_t *bounds, const int32_t *kk, int ks) {
    int64_t w8 = w / 8 * 8, simd_rows = rows - (last_row_of_buffer ? 1 : 0);
    if (w8 == 0 || simd_rows <= 0) return 0;
    int32_t *kt = ct_malloc((size_t)(ks * w8) * sizeof *kt), *off0 = ct_malloc((size_t)w8 * sizeof *off0);
    int64_t w_in = bounds[(w - 1) * 2] + bounds[(w - 1) * 2 + 1]; /* the last output reaches the edge */
    for (int64_t xx = 0; xx < w8; xx++) {
        off0[xx] = (int32_t)(bounds[xx * 2] * 3);
        for (int t = 0; t < ks; t++) kt[t * w8 + xx] = kk[xx * ks + t];
    }
    const __m256i half = _mm256_set1_epi32(1 << (PRECISION_BITS - 1)), lo = _mm256_set1_epi32(0xff),
                  three = _mm256_set1_epi32(3), last = _mm256_set1_epi32((int32_t)((w_in - 1) * 3)),
                  zero = _mm256_setzero_si256(), max8 = _mm256_set1_epi32(255);
    for (int64_t y = 0; y < simd_rows; y++) {
        const uint8_t *row = src + y * stride;
        uint8_t *out = dst + y * w * 3;
        for (int64_t x0 = 0; x0 < w8; x0 += 8) {
            __m256i s0 = half, s1 = half, s2 = half;
            __m256i off = _mm256_loadu_si256((const __m256i *)(off0 + x0));
            int taps = 0; /* the most any of the 8 has; the rest are zero weights */
            for (int j = 0; j < 8; j++)
                if (bounds[(x0 + j) * 2 + 1] > taps) taps = (int)bounds[(x0 + j) * 2 + 1];
            for (int t = 0; t < taps; t++) {
                __m256i px = _mm256_i32gather_epi32((const int *)row, _mm256_min_epi32(off, last), 1);
                __m256i k = _mm256_loadu_si256((const __m256i *)(kt + t * w8 + x0));
                s0 = _mm256_add_epi32(s0, _mm256_mullo_epi32(_mm256_and_si256(px, lo), k));
                s1 = _mm256_add_epi32(s1, _mm256_mullo_epi32(_mm256_and_si256(_mm256_srli_epi32(px, 8), lo), k));
                s2 = _mm256_add_epi32(s2, _mm256_mullo_epi32(_mm256_and_si256(_mm256_srli_epi32(px, 16), lo), k));
                off = _mm256_add_epi32(off, three);
            }
            int32_t v[3][8];
            __m256i *vs[3] = {&s0, &s1, &s2};
            for (int c = 0; c < 3; c++) /* clip8: arithmetic shift, then 0..255 */
                _mm256_storeu_si256((__m256i *)v[c], _mm256_min_epi32(_mm256_max_epi32(
                    _mm256_srai_epi32(*vs[c], PRECISION_BITS), zero), max8));
            for (int j = 0; j < 8; j++)
                for (int c = 0; c < 3; c++) out[(x0 + j) * 3 + c] = (uint8_t)v[c][j];
        }
    }
    free(kt);
    free(off0);
    return simd_rows;
}
#endif

/* PIL's vertical pass for one output row: the n values of dst from taps rows of n values
 * (stride apart) from src, row by row, so that the loops over a row vectorise. */
static void resample_column(const uint8_t *restrict src, int64_t stride, int64_t n, int64_t taps,
                            const int32_t *restrict k, int32_t *restrict acc, uint8_t *restrict dst) {
    for (int64_t i = 0; i < n; i++) acc[i] = 1 << (PRECISION_BITS - 1);
    for (int64_t y = 0; y < taps; y++, src += stride) {
        int32_t ky = k[y];
        for (int64_t i = 0; i < n; i++) acc[i] += src[i] * ky;
    }
    for (int64_t i = 0; i < n; i++) {
        int32_t v = acc[i] >> PRECISION_BITS;
        dst[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
}

void ct__image_resize_view(const ct_image *in, const int64_t view[4], int64_t h, int64_t w, ct_image *out) {
    int64_t ih = view[2], iw = view[3];
    CT_ASSERT(h > 0 && w > 0 && ih > 0 && iw > 0, "resize: %lldx%lld to %lldx%lld", (long long)iw,
              (long long)ih, (long long)w, (long long)h);
    int C = in->c;
    int64_t stride = in->w * C; /* between rows of the view */
    const uint8_t *px = in->px + (view[0] * in->w + view[1]) * C, *end = in->px + in->h * stride;
    *out = (ct_image){.h = h, .w = w, .c = C, .px = ct_malloc((size_t)(h * w * C))};
    if (h == ih && w == iw) { /* PIL returns a copy */
        for (int64_t y = 0; y < h; y++) memcpy(out->px + y * w * C, px + y * stride, (size_t)(w * C));
        return;
    }
    int64_t *bh, *bv;
    int32_t *kh, *kv;
    int ksh = coeffs(iw, w, &bh, &kh), ksv = coeffs(ih, h, &bv, &kv);
    /* PIL resamples horizontally first, only the rows the vertical pass will read, into an
     * 8-bit image (rounded and clipped), then vertically */
    const uint8_t *src = px;
    int64_t first = 0, src_stride = stride;
    uint8_t *tmp = NULL;
    if (w != iw) {
        first = bv[0];
        int64_t rows = bv[(h - 1) * 2] + bv[(h - 1) * 2 + 1] - first;
        tmp = ct_malloc((size_t)(rows * w * C));
        const uint8_t *from = px + first * stride;
        int64_t done = 0; /* rows done by SIMD (all outputs but the last w % 8) */
#ifdef __AVX2__
        if (C == 3) {
            /* its gathers read a byte past a row's last pixel: inside the buffer? */
            bool tail_safe = from + (rows - 1) * stride + iw * C < end;
            done = resample_rows_rgb8(from, stride, rows, !tail_safe, tmp, w, bh, kh, ksh);
            if (done) resample_rows(from, stride, done, C, tmp, w, w / 8 * 8, bh, kh, ksh);
        }
#endif
        resample_rows(from + done * stride, stride, rows - done, C, tmp + done * w * C, w, 0, bh, kh, ksh);
        src = tmp;
        src_stride = w * C;
    }
    if (h != ih) {
        int64_t n = w * C;
        int32_t *acc = ct_malloc((size_t)n * sizeof *acc);
        for (int64_t yy = 0; yy < h; yy++)
            resample_column(src + (bv[yy * 2] - first) * src_stride, src_stride, n, bv[yy * 2 + 1],
                            kv + yy * ksv, acc, out->px + yy * n);
        free(acc);
    } else {
        for (int64_t y = 0; y < h; y++) memcpy(out->px + y * w * C, src + y * src_stride, (size_t)(w * C));
    }
    free(tmp);
    free(bh);
    free(bv);
    free(kh);
    free(kv);
}

void ct_image_resize(const ct_image *in, int64_t h, int64_t w, ct_image *out) {
    int64_t all[4] = {0, 0, in->h, in->w};
    ct__image_resize_view(in, all, h, w, out);
}

void ct_image_crop(const ct_image *in, int64_t top, int64_t left, int64_t h, int64_t w, ct_image *out) {
    CT_ASSERT(h > 0 && w > 0, "crop: %lldx%lld", (long long)w, (long long)h);
    int C = in->c;
    *out = (ct_image){.h = h, .w = w, .c = C, .px = ct_malloc((size_t)(h * w * C))};
    for (int64_t y = 0; y < h; y++) {
        int64_t sy = y + top;
        for (int64_t x = 0; x < w; x++) {
            int64_t sx = x + left;
            bool inside = sy >= 0 && sy < in->h && sx >= 0 && sx < in->w; /* PIL fills 0 outside */
            for (int c = 0; c < C; c++) out->px[(y * w + x) * C + c] = inside ? in->px[(sy * in->w + sx) * C + c] : 0;
        }
    }
}

void ct_image_hflip(ct_image *im) {
    int C = im->c;
    for (int64_t y = 0; y < im->h; y++) {
        uint8_t *row = im->px + y * im->w * C;
        for (int64_t a = 0, b = im->w - 1; a < b; a++, b--)
            for (int c = 0; c < C; c++) {
                uint8_t t = row[a * C + c];
                row[a * C + c] = row[b * C + c];
                row[b * C + c] = t;
            }
    }
}

/* ---- parameters ---- */

/* torchvision's _compute_resized_output_size for Resize(int): the shorter side becomes s,
 * the longer int(s * long / short). */
static void resize_size(int64_t h, int64_t w, int64_t s, int64_t *oh, int64_t *ow) {
    int64_t shorter = w <= h ? w : h, longer = w <= h ? h : w;
    int64_t nl = (int64_t)((double)(s * longer) / (double)shorter);
    *ow = w <= h ? s : nl;
    *oh = w <= h ? nl : s;
}

/* CenterCrop's offset: int(round((size - crop) / 2.0)) with Python's half-to-even round,
 * or, for a crop larger than the image, minus the padding torchvision adds in front. */
static int64_t center_offset(int64_t size, int64_t crop) {
    if (crop > size) return -((crop - size) / 2);
    return (int64_t)nearbyint((double)(size - crop) / 2.0); /* default rounding: half to even */
}

/* A float32 uniform in [lo, hi), as torch.empty(1).uniform_(lo, hi).item() is a float32. */
static double uniform_f32(ct_rng *rng, double lo, double hi) {
    double u = (double)(ct_rng_next(rng) >> 11) * 0x1.0p-53;
    float v = (float)(lo + u * (hi - lo));
    if ((double)v >= hi) v = nextafterf((float)hi, -INFINITY);
    return v;
}

void ct_rrc_params(int64_t H, int64_t W, const double scale[2], const double ratio[2], ct_rng *rng,
                   int64_t out[4]) {
    double area = (double)(H * W);
    /* torch.log(torch.tensor(ratio)): float32 */
    double lr0 = logf((float)ratio[0]), lr1 = logf((float)ratio[1]);
    for (int attempt = 0; attempt < 10; attempt++) {
        double target = area * uniform_f32(rng, scale[0], scale[1]);
        double aspect = expf((float)uniform_f32(rng, lr0, lr1));
        int64_t w = (int64_t)nearbyint(sqrt(target * aspect)), h = (int64_t)nearbyint(sqrt(target / aspect));
        if (w > 0 && w <= W && h > 0 && h <= H) {
            out[0] = (int64_t)ct_rng_below(rng, (uint64_t)(H - h + 1));
            out[1] = (int64_t)ct_rng_below(rng, (uint64_t)(W - w + 1));
            out[2] = h;
            out[3] = w;
            return;
        }
    }
    /* torchvision's fallback: a central crop clamped to the ratio range */
    double in_ratio = (double)W / (double)H, rmin = fmin(ratio[0], ratio[1]), rmax = fmax(ratio[0], ratio[1]);
    int64_t w = W, h = H;
    if (in_ratio < rmin)
        h = (int64_t)nearbyint((double)w / rmin);
    else if (in_ratio > rmax)
        w = (int64_t)nearbyint((double)h * rmax);
    out[0] = (H - h) / 2;
    out[1] = (W - w) / 2;
    out[2] = h;
    out[3] = w;
}

/* ---- pipelines ---- */

static const char *const names[] = {"resize", "center_crop", "random_resized_crop", "random_horizontal_flip"};

ct_status ct_transforms_parse(const char *spec, ct_transforms *out) {
    ct_transforms t = {0};
    char buf[512];
    if (snprintf(buf, sizeof buf, "%s", spec) >= (int)sizeof buf)
        return ct_error(CT_ERR_ARG, "transforms '%.40s...': too long", spec);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        char *arg = strchr(tok, ':');
        if (arg) *arg++ = 0;
        int kind = -1;
        for (int i = 0; i < 4; i++)
            if (!strcmp(tok, names[i])) kind = i;
        if (kind < 0)
            return ct_error(CT_ERR_ARG, "transforms '%s': unknown transform '%s' (expected resize:N, "
                            "center_crop:N, random_resized_crop:N or random_horizontal_flip)", spec, tok);
        if (t.n == CT_MAX_TRANSFORMS)
            return ct_error(CT_ERR_ARG, "transforms '%s': more than %d", spec, CT_MAX_TRANSFORMS);
        ct_transform *x = &t.t[t.n++];
        *x = (ct_transform){.kind = (ct_transform_kind)kind, .scale = {0.08, 1.0}, .ratio = {3.0 / 4.0, 4.0 / 3.0}};
        char *end = NULL;
        long v = arg ? strtol(arg, &end, 10) : 0;
        if (kind == CT_TF_HFLIP) {
            if (arg) return ct_error(CT_ERR_ARG, "transforms '%s': random_horizontal_flip takes no size", spec);
        } else if (!arg || *end || v < 1 || v > 65536) {
            return ct_error(CT_ERR_ARG, "transforms '%s': %s needs a size in pixels, e.g. %s:224", spec, tok, tok);
        }
        x->size = v;
    }
    *out = t;
    return CT_OK;
}

void ct_transforms_out_size(const ct_transforms *t, int64_t h, int64_t w, int64_t *oh, int64_t *ow) {
    for (int i = 0; i < t->n; i++) {
        const ct_transform *x = &t->t[i];
        if (x->kind == CT_TF_RESIZE) resize_size(h, w, x->size, &h, &w);
        if (x->kind == CT_TF_CENTER_CROP || x->kind == CT_TF_RANDOM_RESIZED_CROP) h = w = x->size;
    }
    *oh = h;
    *ow = w;
}

bool ct_transforms_fixed_size(const ct_transforms *t) {
    for (int i = t->n - 1; i >= 0; i--) {
        if (t->t[i].kind == CT_TF_CENTER_CROP || t->t[i].kind == CT_TF_RANDOM_RESIZED_CROP) return true;
        if (t->t[i].kind == CT_TF_RESIZE) return false;
    }
    return false;
}

/* Applies t's transforms from the first-th on. */
static void apply_from(const ct_transforms *t, int first, ct_image *im, ct_rng *rng) {
    for (int i = first; i < t->n; i++) {
        const ct_transform *x = &t->t[i];
        ct_image out = {0};
        int64_t oh, ow, p[4];
        switch (x->kind) {
        case CT_TF_RESIZE:
            resize_size(im->h, im->w, x->size, &oh, &ow);
            ct_image_resize(im, oh, ow, &out);
            break;
        case CT_TF_CENTER_CROP:
            ct_image_crop(im, center_offset(im->h, x->size), center_offset(im->w, x->size), x->size, x->size, &out);
            break;
        case CT_TF_RANDOM_RESIZED_CROP: {
            ct_rrc_params(im->h, im->w, x->scale, x->ratio, rng, p);
            ct_image crop;
            ct_image_crop(im, p[0], p[1], p[2], p[3], &crop);
            ct_image_resize(&crop, x->size, x->size, &out);
            ct_image_free(&crop);
            break;
        }
        case CT_TF_HFLIP:
            if (ct_rng_below(rng, 2)) ct_image_hflip(im); /* p = 0.5 */
            continue;
        }
        ct_image_free(im);
        *im = out;
    }
}

void ct_transforms_apply(const ct_transforms *t, ct_image *im, ct_rng *rng) { apply_from(t, 0, im, rng); }

typedef struct {
    const ct_transform *x;
    ct_rng *rng;
} rrc_ctx;

/* The random_resized_crop box, drawn once the image's size is known. */
static void rrc_box(void *ctx, int64_t h, int64_t w, int64_t box[4]) {
    rrc_ctx *c = ctx;
    ct_rrc_params(h, w, c->x->scale, c->x->ratio, c->rng, box);
}

ct_status ct_transforms_read(const ct_transforms *t, const char *path, int channels, ct_rng *rng,
                             ct_image *out) {
    if (!t->n || t->t[0].kind != CT_TF_RANDOM_RESIZED_CROP) {
        ct_status st = ct_image_read(path, channels, out);
        if (st == CT_OK) apply_from(t, 0, out, rng);
        return st;
    }
    /* The crop box depends only on the image's size and the rng: decode just the box (for a
     * JPEG, most of the work is skipped), then go on as apply() does after its crop. */
    rrc_ctx c = {&t->t[0], rng};
    ct_image im;
    int64_t view[4];
    ct_status st = ct__image_read_view(path, channels, rrc_box, &c, &im, view);
    if (st != CT_OK) return st;
    ct__image_resize_view(&im, view, t->t[0].size, t->t[0].size, out);
    ct_image_free(&im);
    apply_from(t, 1, out, rng);
    return CT_OK;
}
