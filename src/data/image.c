/* Image decoding: JPEG through libjpeg-turbo, PNG through libspng, into 8-bit pixels with
 * exactly the values PIL gives for Image.open(path).convert("RGB") (torchvision's
 * ImageFolder loader) or .convert("L"). The format comes from the file's first bytes, not
 * its name. */
#include "internal.h"

#include <errno.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h> /* message codes (JWRN_JPEG_EOF) */
#include <spng.h>

/* Larger than any photo a trainer sees; a corrupt header cannot make us allocate more.
 * MAX_PIXELS is PIL's MAX_IMAGE_PIXELS (its decompression-bomb limit): a few hundred bytes
 * of header must not cost gigabytes (found by fuzz_image). */
#define MAX_SIDE 32768
#define MAX_PIXELS 89478485LL

/* A decoded image of h x w pixels would be too large: the error naming the file, else OK. */
static ct_status check_size(const char *name, int64_t h, int64_t w) {
    if (h > MAX_SIDE || w > MAX_SIDE || h * w > MAX_PIXELS)
        return ct_error(CT_ERR_FORMAT, "%s: %lldx%lld image is larger than %d pixels a side or %lld "
                        "pixels in all (PIL's decompression-bomb limit)", name, (long long)w,
                        (long long)h, MAX_SIDE, MAX_PIXELS);
    return CT_OK;
}

void ct_image_free(ct_image *im) {
    free(im->px);
    memset(im, 0, sizeof *im);
}

/* The whole file in a malloc'd buffer. */
static ct_status read_file(const char *path, uint8_t **buf, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return ct_error(CT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    uint8_t *b = ct_malloc(cap);
    size_t got;
    while ((got = fread(b + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            uint8_t *nb = realloc(b, cap *= 2);
            CT_ASSERT(nb, "data: out of memory reading %s", path);
            b = nb;
        }
    }
    bool err = ferror(f);
    fclose(f);
    if (err) {
        free(b);
        return ct_error(CT_ERR_IO, "%s: read error", path);
    }
    *buf = b;
    *n = len;
    return CT_OK;
}

/* PIL's RGB -> L (Convert.c, ITU-R 601-2 luma in 16-bit fixed point, rounded). */
static inline uint8_t luma(const uint8_t *rgb) {
    return (uint8_t)((rgb[0] * 19595u + rgb[1] * 38470u + rgb[2] * 7471u + 0x8000u) >> 16);
}

/* Turns n pixels of src, of sc = 1 (L) or 3 (RGB) bytes, or 4 (RGBA) whose alpha PIL's
 * convert drops, into dst's c channels, as PIL's convert does: L -> RGB replicates, RGB -> L
 * is luma(). */
static void convert(const uint8_t *src, int sc, uint8_t *d, int c, int64_t n) {
    if (sc == c) {
        memcpy(d, src, (size_t)(n * c));
    } else if (c == 1) {
        for (int64_t i = 0; i < n; i++, src += sc) d[i] = sc >= 3 ? luma(src) : src[0];
    } else {
        for (int64_t i = 0; i < n; i++, src += sc, d += 3) {
            if (sc >= 3) {
                d[0] = src[0], d[1] = src[1], d[2] = src[2];
            } else {
                d[0] = d[1] = d[2] = src[0];
            }
        }
    }
}

/* ---- JPEG ---- */

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    bool truncated;
} jpeg_err;

static void jpeg_fail(j_common_ptr ci) { longjmp(((jpeg_err *)ci->err)->jb, 1); }

/* libjpeg warns and pads with grey when the data ends early; PIL refuses such a file
 * ("image file is truncated"), and so do we, at once: a 100-byte file whose header claims
 * 20000x20000 pixels must not cost a full decode of padding. Other warnings (extraneous
 * bytes) pass, as in PIL. */
static void jpeg_warn(j_common_ptr ci, int level) {
    if (level >= 0) return; /* trace messages */
    int code = ci->err->msg_code;
    if (code == JWRN_JPEG_EOF) {
        ((jpeg_err *)ci->err)->truncated = true;
        longjmp(((jpeg_err *)ci->err)->jb, 1);
    }
    /* Corrupt entropy-coded data: libjpeg would go on decoding garbage (seconds for a tiny
     * file that claims a huge image); a file that cannot be decoded is an error. */
    if (code == JWRN_HIT_MARKER || code == JWRN_HUFF_BAD_CODE || code == JWRN_MUST_RESYNC ||
        code == JWRN_NOT_SEQUENTIAL || code == JWRN_BOGUS_PROGRESSION)
        longjmp(((jpeg_err *)ci->err)->jb, 1);
}

/* Rows and columns decoded around a box and thrown away: libjpeg-turbo's cropped decode
 * (jpeg_crop_scanline, jpeg_skip_scanlines) upsamples the chroma at the edges of what it
 * decodes as if they were the image's edges, unlike a full decode; fancy upsampling reads
 * one chroma sample either side, so a pixel or two further in they agree (one is enough
 * for every box of test_image's JPEGs, none is not: decode_box_matches_full_decode). */
#define JPEG_MARGIN 2

static ct_status decode_jpeg(const uint8_t *buf, size_t n, const char *name, int channels,
                             bool header_only, ct_image_box_fn choose, void *ctx, ct_image *out,
                             int64_t view[4]) {
    struct jpeg_decompress_struct ci;
    jpeg_err je;
    ci.err = jpeg_std_error(&je.pub);
    je.pub.error_exit = jpeg_fail;
    je.pub.emit_message = jpeg_warn;
    je.truncated = false;
    uint8_t *volatile row = NULL, *volatile px = NULL; /* volatile: still valid after a longjmp */
    if (setjmp(je.jb)) {
        char msg[JMSG_LENGTH_MAX];
        je.pub.format_message((j_common_ptr)&ci, msg);
        jpeg_destroy_decompress(&ci);
        free(row);
        free(px);
        if (je.truncated)
            return ct_error(CT_ERR_FORMAT, "%s: cannot decode JPEG: the data ends early (truncated "
                            "file)", name);
        return ct_error(CT_ERR_FORMAT, "%s: cannot decode JPEG: %s", name, msg);
    }
    jpeg_create_decompress(&ci);
    jpeg_mem_src(&ci, buf, (unsigned long)n);
    jpeg_read_header(&ci, TRUE);
    J_COLOR_SPACE cs = ci.jpeg_color_space;
    if (cs != JCS_GRAYSCALE && cs != JCS_YCbCr && cs != JCS_RGB) {
        jpeg_destroy_decompress(&ci);
        return ct_error(CT_ERR_FORMAT, "%s: JPEG colour space %s is not supported (only gray, "
                        "YCbCr and RGB)", name, cs == JCS_CMYK || cs == JCS_YCCK ? "CMYK" : "unknown");
    }
    /* PIL's decoder asks for exactly these: gray stays gray, colour becomes RGB, with
     * libjpeg's default islow IDCT and fancy upsampling; conversion to the wanted
     * channels follows in convert(), like Image.convert. */
    ci.out_color_space = cs == JCS_GRAYSCALE ? JCS_GRAYSCALE : JCS_RGB;
    int64_t H = ci.image_height, W = ci.image_width;
    if (header_only) {
        jpeg_destroy_decompress(&ci);
        *out = (ct_image){.h = H, .w = W, .c = channels};
        return CT_OK;
    }
    if (check_size(name, H, W) != CT_OK) {
        jpeg_destroy_decompress(&ci);
        return CT_ERR_FORMAT;
    }
    int64_t box[4] = {0, 0, H, W}; /* top, left, h, w */
    if (choose) choose(ctx, H, W, box);
    CT_ASSERT(box[0] >= 0 && box[1] >= 0 && box[2] > 0 && box[3] > 0 && box[0] + box[2] <= H &&
              box[1] + box[3] <= W, "image: box outside the %lldx%lld image", (long long)W, (long long)H);
    jpeg_start_decompress(&ci);
    int sc = ci.output_components, M = JPEG_MARGIN;
    /* the columns x0..x1 and rows from y0 around the box; crop_scanline may start earlier */
    JDIMENSION x0 = (JDIMENSION)(box[1] > M ? box[1] - M : 0);
    JDIMENSION x1 = (JDIMENSION)(box[1] + box[3] + M < W ? box[1] + box[3] + M : W), xw = x1 - x0;
    if (xw < ci.output_width) jpeg_crop_scanline(&ci, &x0, &xw);
    JDIMENSION y0 = (JDIMENSION)(box[0] > M ? box[0] - M : 0);
    if (y0) jpeg_skip_scanlines(&ci, y0);
    /* Rows in the pixel format wanted are decoded straight into the image, xw wide, and
     * the box is a view of them; others are converted row by row into a box-sized image. */
    bool direct = sc == channels;
    int64_t stride = direct ? (int64_t)xw * sc : box[3] * channels;
    row = ct_malloc((size_t)xw * (size_t)sc);
    px = ct_malloc((size_t)(box[2] * stride));
    for (int64_t y; (y = ci.output_scanline) < box[0] + box[2];) {
        JSAMPROW r = direct && y >= box[0] ? px + (y - box[0]) * stride : row;
        jpeg_read_scanlines(&ci, &r, 1);
        if (!direct && y >= box[0])
            convert(row + (box[1] - x0) * sc, sc, px + (y - box[0]) * stride, channels, box[3]);
    }
    /* The rows below the box go through the entropy decoder only, so that a truncated or
     * corrupt file is refused as PIL refuses it whatever the box: skipping to the very end
     * would not decode them, hence the last row is read. */
    if (ci.output_scanline < ci.output_height) {
        if (ci.output_scanline + 1 < ci.output_height)
            jpeg_skip_scanlines(&ci, ci.output_height - 1 - ci.output_scanline);
        JSAMPROW r = row;
        jpeg_read_scanlines(&ci, &r, 1);
    }
    jpeg_finish_decompress(&ci);
    jpeg_destroy_decompress(&ci);
    free(row);
    *out = (ct_image){.h = box[2], .w = stride / channels, .c = channels, .px = px};
    view[0] = 0, view[1] = direct ? box[1] - x0 : 0, view[2] = box[2], view[3] = box[3];
    return CT_OK;
}

/* ---- PNG ---- */

static ct_status decode_png(const uint8_t *buf, size_t n, const char *name, int channels,
                            bool header_only, ct_image *out) {
    spng_ctx *ctx = spng_ctx_new(0);
    CT_ASSERT(ctx, "data: out of memory (spng)");
    struct spng_ihdr h;
    uint8_t *raw = NULL;
    const char *what = "header";
    int e = spng_set_image_limits(ctx, MAX_SIDE, MAX_SIDE);
    if (!e) e = spng_set_png_buffer(ctx, buf, n);
    if (!e) e = spng_get_ihdr(ctx, &h);
    if (e) goto fail;
    out->h = h.height;
    out->w = h.width;
    out->c = channels;
    if (header_only) {
        spng_ctx_free(ctx);
        return CT_OK;
    }
    if (check_size(name, out->h, out->w) != CT_OK) {
        spng_ctx_free(ctx);
        return CT_ERR_FORMAT;
    }
    if (h.bit_depth == 16) {
        spng_ctx_free(ctx);
        return ct_error(CT_ERR_FORMAT, "%s: 16-bit PNG is not supported (convert it to 8 bits, "
                        "e.g. PIL's Image.convert)", name);
    }
    /* The output format that keeps what PIL keeps: gray as gray (low bit depths scaled to
     * 0..255 as PIL unpacks them), alpha dropped afterwards (convert ignores it), palette
     * expanded through its colours. */
    int fmt, sc;
    switch (h.color_type) {
    case SPNG_COLOR_TYPE_GRAYSCALE: fmt = SPNG_FMT_G8, sc = 1; break;
    /* libspng 0.7 decodes gray+alpha only to RGBA8: R = G = B = gray, and luma() of
     * three equal values is that value (the weights sum to 65536), so L stays exact */
    case SPNG_COLOR_TYPE_GRAYSCALE_ALPHA:
    case SPNG_COLOR_TYPE_TRUECOLOR_ALPHA: fmt = SPNG_FMT_RGBA8, sc = 4; break;
    default: fmt = SPNG_FMT_RGB8, sc = 3; break; /* truecolor, indexed */
    }
    size_t len;
    what = "image";
    if ((e = spng_decoded_image_size(ctx, fmt, &len))) goto fail;
    raw = ct_malloc(len);
    if ((e = spng_decode_image(ctx, raw, len, fmt, 0))) goto fail;
    spng_ctx_free(ctx);
    out->px = ct_malloc((size_t)(out->h * out->w) * (size_t)channels);
    convert(raw, sc, out->px, channels, out->h * out->w);
    free(raw);
    return CT_OK;
fail:
    spng_ctx_free(ctx);
    free(raw);
    return ct_error(CT_ERR_FORMAT, "%s: cannot decode PNG %s: %s", name, what, spng_strerror(e));
}

/* ---- dispatch ---- */

/* Decodes the image, or with choose, the box it picks: *out holds it at view = {top, left,
 * h, w} (a JPEG's decoded rows may be wider than the box; a PNG is decoded whole). */
static ct_status decode(const uint8_t *buf, size_t n, const char *name, int channels,
                        bool header_only, ct_image_box_fn choose, void *ctx, ct_image *out, int64_t view[4]) {
    if (channels != 1 && channels != 3)
        return ct_error(CT_ERR_ARG, "%s: images decode to 1 or 3 channels, not %d", name, channels);
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (n >= 3 && buf[0] == 0xff && buf[1] == 0xd8 && buf[2] == 0xff)
        return decode_jpeg(buf, n, name, channels, header_only, choose, ctx, out, view);
    if (!(n >= 8 && !memcmp(buf, png_sig, 8)))
        return ct_error(CT_ERR_FORMAT, "%s: not a JPEG or PNG file (%zu bytes, unknown signature)",
                        name, n);
    ct_image im = {0};
    ct_status st = decode_png(buf, n, name, channels, header_only, &im);
    if (st != CT_OK) return st;
    int64_t box[4] = {0, 0, im.h, im.w};
    if (choose && !header_only) choose(ctx, im.h, im.w, box);
    memcpy(view, box, sizeof box);
    *out = im;
    return CT_OK;
}

/* A view's pixels as an image of their own (the image itself when the view is all of it). */
static void own_view(ct_image *im, const int64_t view[4]) {
    if (view[2] == im->h && view[3] == im->w) return;
    ct_image c;
    ct_image_crop(im, view[0], view[1], view[2], view[3], &c);
    ct_image_free(im);
    *im = c;
}

ct_status ct_image_decode(const void *buf, size_t n, const char *name, int channels, ct_image *out) {
    int64_t view[4];
    return decode(buf, n, name, channels, false, NULL, NULL, out, view);
}

ct_status ct__image_read_view(const char *path, int channels, ct_image_box_fn choose, void *ctx,
                              ct_image *out, int64_t view[4]) {
    uint8_t *buf = NULL;
    size_t n = 0;
    ct_status st = read_file(path, &buf, &n);
    if (st != CT_OK) return st;
    st = decode(buf, n, path, channels, false, choose, ctx, out, view);
    free(buf);
    return st;
}

ct_status ct_image_read(const char *path, int channels, ct_image *out) {
    int64_t view[4];
    return ct__image_read_view(path, channels, NULL, NULL, out, view);
}

ct_status ct_image_read_box(const char *path, int channels, ct_image_box_fn choose, void *ctx, ct_image *out) {
    int64_t view[4];
    ct_image im;
    ct_status st = ct__image_read_view(path, channels, choose, ctx, &im, view);
    if (st != CT_OK) return st;
    own_view(&im, view);
    *out = im;
    return CT_OK;
}

ct_status ct_image_info(const char *path, int64_t *h, int64_t *w) {
    uint8_t *buf = NULL;
    size_t n = 0;
    ct_status st = read_file(path, &buf, &n);
    if (st != CT_OK) return st;
    ct_image im = {0};
    int64_t view[4];
    st = decode(buf, n, path, 3, true, NULL, NULL, &im, view);
    free(buf);
    if (st == CT_OK) *h = im.h, *w = im.w;
    return st;
}
