/*
 * fileio.h - whole-file helpers shared by the tools and the engine: read a
 * file into memory with a size bound, write a file crash-safely (temporary
 * name, fsync, rename), copy a file the same way.
 *
 * Errors: DSV4_ENOENT (missing), DSV4_ERANGE (larger than the bound),
 * DSV4_ENOSPC (disk full, quota, or file-size limit: ENOSPC/EDQUOT/EFBIG),
 * DSV4_EIO, DSV4_ENOMEM; the message names the path.  Written files get mode
 * 0644 (less the umask); after the rename the parent directory is fsynced
 * so that the new name is durable too.  A final name never holds a half-written file.  Sources must be
 * regular files (a directory, FIFO or device is refused, never waited on).
 */
#ifndef DSV4_FILEIO_H
#define DSV4_FILEIO_H

#include <stddef.h>

/* Reads `path` (at most `max` bytes) into a malloc'ed, NUL-terminated buffer. */
int dsv4_file_read(const char *path, size_t max, char **out, size_t *len);
/* Writes `len` bytes to `path` through "<path>.tmp", fsync and rename. */
int dsv4_file_write(const char *path, const void *data, size_t len);
/* Copies the file `from` to `to` (through "<to>.tmp"). */
int dsv4_file_copy(const char *from, const char *to);
/* fsyncs the directory holding `path` so that a rename into it survives a
 * crash; best effort (some file systems refuse a directory fsync, and the
 * file itself is already complete), hence no status. */
void dsv4_file_sync_parent(const char *path);

#endif
