/* Opening files that come from outside: only regular files are read. open() of a FIFO for
 * reading blocks until a writer appears (forever, for a checkpoint path someone pointed at
 * a pipe), and a directory or device is never a checkpoint. */
#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *kind(mode_t m) {
    return S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO" : S_ISCHR(m) || S_ISBLK(m) ? "a device"
           : S_ISSOCK(m)                          ? "a socket" : "not a regular file";
}

ct_status ct_fopen_regular(const char *path, FILE **out) {
    *out = NULL;
    /* O_NONBLOCK makes open() of a FIFO return at once; fstat then tells what it is */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return ct_error(CT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return ct_error(CT_ERR_IO, "%s: stat failed: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return ct_error(CT_ERR_IO, "%s: not a regular file (%s)", path, kind(sb.st_mode));
    }
    int flags = fcntl(fd, F_GETFL);
    FILE *f = flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0 ? NULL : fdopen(fd, "rb");
    if (!f) {
        int e = errno;
        close(fd);
        return ct_error(CT_ERR_IO, "%s: cannot open: %s", path, strerror(e));
    }
    *out = f;
    return CT_OK;
}
