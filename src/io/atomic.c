/* Atomic file replacement: write a temporary file next to the target, make it durable,
 * rename it over the target, then make the rename durable. A crash at any point leaves
 * either the old file or the complete new one under the real name. */
#include "io.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* fsync of the directory holding path, so the rename itself survives a crash. */
static int fsync_parent(const char *path) {
    const char *slash = strrchr(path, '/');
    char dir[4096];
    if (!slash) {
        strcpy(dir, ".");
    } else {
        size_t len = slash == path ? 1 : (size_t)(slash - path);
        if (len >= sizeof dir) {
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(dir, path, len);
        dir[len] = '\0';
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

ct_status ct_write_atomic(const char *path, ct_write_fn fn, void *ctx) {
    char tmp[4096];
    int len = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (len < 0 || (size_t)len >= sizeof tmp) return ct_error(CT_ERR_IO, "%s: path too long", path);

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0)
        return ct_error(CT_ERR_IO, "%s: cannot create temporary file %s: %s", path, tmp,
                        strerror(errno));
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return ct_error(CT_ERR_IO, "%s: fdopen: %s", path, strerror(e));
    }

    ct_status st = fn(f, ctx);
    if (st != CT_OK) {
        /* keep fn's explanation, but make sure the target is named */
        char why[768];
        snprintf(why, sizeof why, "%s", ct_last_error());
        fclose(f);
        unlink(tmp);
        return ct_error(st, "%s: write failed: %s", path, why);
    }
    const char *step = NULL;
    if (fflush(f) != 0 || ferror(f)) step = "write";
    else if (fsync(fileno(f)) != 0) step = "fsync";
    int e = errno;
    if (fclose(f) != 0 && !step) {
        step = "close";
        e = errno;
    }
    if (!step && rename(tmp, path) != 0) {
        step = "rename";
        e = errno;
    }
    if (step) {
        unlink(tmp);
        return ct_error(CT_ERR_IO, "%s: %s failed: %s", path, step, strerror(e));
    }
    if (fsync_parent(path) != 0)
        return ct_error(CT_ERR_IO, "%s: written, but fsync of its directory failed: %s", path,
                        strerror(errno));
    return CT_OK;
}

typedef struct {
    const void *data;
    size_t n;
} bytes_ctx;

static ct_status write_bytes(FILE *f, void *ctx) {
    const bytes_ctx *b = ctx;
    if (b->n && fwrite(b->data, 1, b->n, f) != b->n)
        return ct_error(CT_ERR_IO, "short write: %s", strerror(errno));
    return CT_OK;
}

ct_status ct_write_file_atomic(const char *path, const void *data, size_t n) {
    bytes_ctx b = {data, n};
    return ct_write_atomic(path, write_bytes, &b);
}

/* The pid of a ct_write_atomic temporary ("<name>.tmp.<pid>"), or 0 if name is not one. */
static long tmp_pid(const char *name) {
    const char *t = NULL;
    for (const char *q = strstr(name, ".tmp."); q; q = strstr(q + 1, ".tmp.")) t = q;
    if (!t || t == name || !isdigit((unsigned char)t[5])) return 0;
    char *end;
    long pid = strtol(t + 5, &end, 10);
    return *end ? 0 : pid;
}

int ct_remove_stale_tmp(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long pid = tmp_pid(e->d_name);
        /* a live process (on this host) may still be writing it; ESRCH means none has the pid */
        if (!pid || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path) continue;
        struct stat sb;
        if (lstat(path, &sb) == 0 && S_ISREG(sb.st_mode) && unlink(path) == 0) removed++;
    }
    closedir(d);
    return removed;
}
