/*
 * fileio.c - whole-file read, crash-safe write and copy (see fileio.h).
 * Invariant: every write goes to "<path>.tmp" and is renamed only after a
 * successful fsync; any failure unlinks the temporary file.  After the
 * rename the parent directory is fsynced (best effort) so that the new name
 * itself survives a crash.
 */
#include "dsv4-build.h"
#include "engine/io/fileio.h"
#include "base/dsv4.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define COPY_CHUNK (1u << 20)

static int io_error(const char *what, const char *path, int e)
{
    return dsv4_error(e == ENOSPC || e == EDQUOT || e == EFBIG ? DSV4_ENOSPC : DSV4_EIO,
                      "%s %s: %s", what, path, strerror(e));
}

int dsv4_file_read(const char *path, size_t max, char **out, size_t *len)
{
    /* O_NONBLOCK: a FIFO without a writer must not block the open (it is
     * refused below); regular files ignore the flag */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat sb;
    char *buf;
    size_t got = 0;

    *out = NULL;
    if (fd < 0)
        return dsv4_error(errno == ENOENT ? DSV4_ENOENT : DSV4_EIO, "%s: %s", path,
                          strerror(errno));
    if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return dsv4_error(DSV4_EIO, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > max) {
        close(fd);
        return dsv4_error(DSV4_ERANGE, "%s: %lld bytes, more than %zu", path, (long long)sb.st_size,
                          max);
    }
    buf = malloc((size_t)sb.st_size + 1);
    if (!buf) {
        close(fd);
        return dsv4_error(DSV4_ENOMEM, "%s: out of memory", path);
    }
    while (got < (size_t)sb.st_size) {
        ssize_t k = read(fd, buf + got, (size_t)sb.st_size - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            int e = k < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return io_error("read", path, e);
        }
        got += (size_t)k;
    }
    close(fd);
    buf[got] = 0;
    *out = buf;
    *len = got;
    return 0;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return k < 0 ? errno : ENOSPC; /* a write of 0 bytes: no room */
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Opens "<path>.tmp" for writing; tmp receives its name. */
static int open_tmp(const char *path, char *tmp, size_t tlen, int *fd)
{
    if ((size_t)snprintf(tmp, tlen, "%s.tmp", path) >= tlen)
        return dsv4_error(DSV4_ERANGE, "%s: path too long", path);
    *fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (*fd < 0)
        return io_error("create", tmp, errno);
    return 0;
}

void dsv4_file_sync_parent(const char *path)
{
    char *copy = strdup(path);
    int fd;

    if (!copy)
        return;
    fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

/* fsync, close and rename tmp to path, then fsync the directory; unlinks tmp
 * on failure. */
static int finish_tmp(int fd, const char *tmp, const char *path)
{
    if (fsync(fd) < 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return io_error("fsync", tmp, e);
    }
    if (close(fd) < 0 || rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        return io_error("rename", tmp, e);
    }
    dsv4_file_sync_parent(path);
    return 0;
}

int dsv4_file_write(const char *path, const void *data, size_t len)
{
    char tmp[4096];
    int fd, e, rc = open_tmp(path, tmp, sizeof(tmp), &fd);

    if (rc)
        return rc;
    if ((e = write_all(fd, data, len))) {
        close(fd);
        unlink(tmp);
        return io_error("write", tmp, e);
    }
    return finish_tmp(fd, tmp, path);
}

int dsv4_file_copy(const char *from, const char *to)
{
    char tmp[4096], *buf = NULL;
    int in, out = -1, rc;

    struct stat sb;

    in = open(from, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* as in dsv4_file_read */
    if (in < 0)
        return dsv4_error(errno == ENOENT ? DSV4_ENOENT : DSV4_EIO, "%s: %s", from,
                          strerror(errno));
    if (fstat(in, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        close(in);
        return dsv4_error(DSV4_EIO, "%s: not a regular file", from);
    }
    if ((rc = open_tmp(to, tmp, sizeof(tmp), &out)))
        goto fail;
    if (!(buf = malloc(COPY_CHUNK))) {
        rc = dsv4_error(DSV4_ENOMEM, "copy %s: out of memory", from);
        goto fail;
    }
    for (;;) {
        ssize_t k = read(in, buf, COPY_CHUNK);
        int e;
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            rc = io_error("read", from, errno);
            goto fail;
        }
        if (k == 0)
            break;
        if ((e = write_all(out, buf, (size_t)k))) {
            rc = io_error("write", tmp, e);
            goto fail;
        }
    }
    free(buf);
    close(in);
    return finish_tmp(out, tmp, to);
fail:
    free(buf);
    close(in);
    if (out >= 0) {
        close(out);
        unlink(tmp);
    }
    return rc;
}
