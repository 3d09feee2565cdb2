/*
 * File metadata as extended attributes (1.3, F_XATTR): attributes set on an upload's temp file
 * before it is renamed into place, and read back into STAT and LIST entries. Only names under a
 * prefix in the `user.` namespace, bounded in count and bytes both ways: what a sandbox's own
 * processes set on its files is read with the same bounds.
 */
#ifndef CAPSULE_XATTR_H
#define CAPSULE_XATTR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent.h"

#define XA_MAX_COUNT 128   /* attributes per file */
#define XA_MAX_NAME 255    /* a full name, prefix included (the kernel's XATTR_NAME_MAX) */
#define XA_MAX_TOTAL 4096  /* per file: full names plus values (one ext4 attribute block) */
#define XA_MAX_PREFIX 64
/* The metadata block after an entry: u8 flags, u32 count, count x (bytes key, bytes value). */
#define XA_BLOCK_MAX (1 + 4 + XA_MAX_COUNT * 8 + XA_MAX_TOTAL)
#define XA_PARTIAL 1       /* block flag: some attributes were left out (over the bounds, or unreadable) */

struct xattrs;

/*
 * WRITE with F_XATTR: the optional fields after the path (bytes prefix, u32 count, count x (bytes key,
 * bytes value)). 0 with *out set (NULL when absent or empty); -1 after an ERROR was sent or the
 * connection was marked dead.
 */
int xattr_read_set(struct conn *c, uint32_t id, struct rd *r, struct xattrs **out);
/* Sets them on an open file that has none (XATTR_CREATE). 0, or an errno (E2BIG: does not fit). */
int xattr_apply(int fd, const struct xattrs *x);
void xattr_free(struct xattrs *x);

/* STAT or LIST with F_XATTR: the optional prefix after the path. 0 with *prefix (NULL when absent), or -1 after an ERROR. */
int xattr_read_prefix(struct conn *c, uint32_t id, struct rd *r, char **prefix);
/*
 * Appends the metadata block to the encoded entry at `entry` (its st_mode says whether to look: only
 * regular files and directories carry user attributes). The file is `dir`/`name`, or `name` when dir
 * is NULL; never followed when it is a symlink. Returns the block's length (at most XA_BLOCK_MAX).
 */
size_t xattr_entry(uint8_t *entry, size_t len, const char *dir, const char *name, const char *prefix);

#endif
