/* Shared by the libFuzzer harnesses: the readers take paths, so each input is handed over
 * as an anonymous in-memory file (/proc/self/fd/N of a memfd), never touching the disk. */
#ifndef CT_FUZZ_H
#define CT_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ctrain.h"

/* Writes data to a fresh memfd and its /proc path into path; returns the fd (close it). */
static inline int fuzz_memfile(const uint8_t *data, size_t size, char *path, size_t n) {
    int fd = memfd_create("fuzz", 0);
    if (fd < 0) return -1;
    for (size_t done = 0; done < size;) {
        ssize_t w = write(fd, data + done, size - done);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        done += (size_t)w;
    }
    snprintf(path, n, "/proc/self/fd/%d", fd);
    return fd;
}

#endif
