/* The checked allocator: the library's one answer to running out of memory. A failed
 * allocation is not a condition any caller can repair, so it goes through the abort hook
 * (in an MPI job, MPI_Abort with the rank) with the size asked for, and callers never test
 * for NULL. Tensor storage has its own caching allocator (alloc.c) on top of this. */
#include "core.h"

#include <stdlib.h>
#include <string.h>

_Noreturn static void out_of_memory(size_t bytes) {
    ct_fatal("out of memory allocating %zu bytes", bytes);
}

void *ct_malloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) out_of_memory(bytes);
    return p;
}

void *ct_calloc(size_t count, size_t size) {
    if (size && count > SIZE_MAX / size) out_of_memory(SIZE_MAX);
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) out_of_memory(count * size);
    return p;
}

void *ct_realloc(void *p, size_t bytes) {
    void *q = realloc(p, bytes ? bytes : 1);
    if (!q) out_of_memory(bytes);
    return q;
}

void *ct_aligned_malloc(size_t align, size_t bytes) {
    size_t n = (bytes + align - 1) / align * align; /* aligned_alloc wants a multiple */
    void *p = aligned_alloc(align, n ? n : align);
    if (!p) out_of_memory(n);
    return p;
}

char *ct_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    return memcpy(ct_malloc(n), s, n);
}
