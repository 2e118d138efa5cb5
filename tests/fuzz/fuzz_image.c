/* JPEG (libjpeg-turbo) and PNG (libspng) decoding: any bytes give CT_OK or an error naming
 * the file, never a crash, a leak or an allocation the image cannot need; an image that
 * decodes has the size its header gives (ct_image_info) and every pixel is readable. The
 * first byte picks 1 (L) or 3 (RGB) channels. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int channels = data[0] & 1 ? 3 : 1;
    ct_image im = {0};
    if (ct_image_decode(data + 1, size - 1, "fuzz", channels, &im) == CT_OK) {
        if (im.c != channels || im.h <= 0 || im.w <= 0) __builtin_trap();
        unsigned sum = 0;
        for (int64_t i = 0; i < im.h * im.w * im.c; i++) sum += im.px[i];
        (void)sum;
        char path[64];
        int fd = fuzz_memfile(data + 1, size - 1, path, sizeof path);
        int64_t h = 0, w = 0;
        if (fd >= 0) {
            if (ct_image_info(path, &h, &w) != CT_OK || h != im.h || w != im.w) __builtin_trap();
            close(fd);
        }
        ct_image_free(&im);
    }
    return 0;
}
