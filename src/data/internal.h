/* Helpers shared by the data layer's file readers (not part of the public API). */
#ifndef CT_DATA_INTERNAL_H
#define CT_DATA_INTERNAL_H

#include <zlib.h>

#include "data.h"

/* Opens path for reading through zlib, which reads gzip and plain files alike.
 * CT_ERR_IO naming the file and the system's reason if it cannot be opened. */
ct_status ct__gz_open(const char *path, gzFile *out);
/* Reads up to n bytes; returns how many arrived (fewer only at end of file), or -1 on a
 * read or decompression error, with the message (naming path) already recorded. */
int64_t ct__gz_read(gzFile f, const char *path, void *buf, int64_t n);
/* Reads exactly nbytes of array data (what the header promised) into a malloc'd *out.
 * The buffer grows as data arrives, so a header claiming more than the file holds fails as
 * truncated ("expected N bytes of data, got M") rather than allocating it up front; bytes
 * after the data are an error too. */
ct_status ct__read_payload(gzFile f, const char *path, int64_t nbytes, void **out);

/* The files behind an image data set; sample i is paths[i] (ds->n of them). */
struct ct_image_files {
    char **paths;  /* malloc'd each */
    int channels;  /* 1 or 3 */
    ct_classes classes;
    int64_t h0, w0; /* the size of the first readable file, before transforms */
    ct_transforms tf;
};

/* ct_image_read_box without the copy: *out holds the box at view = {top, left, h, w} (a
 * JPEG's decoded rows are a little wider than the box, a PNG is decoded whole). */
ct_status ct__image_read_view(const char *path, int channels, ct_image_box_fn choose, void *ctx,
                              ct_image *out, int64_t view[4]);
/* ct_image_resize of the view {top, left, h, w} of in. */
void ct__image_resize_view(const ct_image *in, const int64_t view[4], int64_t h, int64_t w, ct_image *out);

/* Frees f and everything it holds (n paths); NULL is fine. */
void ct__image_files_free(ct_image_files *f, int64_t n);

#endif
