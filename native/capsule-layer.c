/*
 * capsule-layer: the few filesystem operations on layer trees that Node cannot
 * make. Runs on the host as root, called by the daemon (src/layers/); never
 * inside a sandbox.
 *
 *   capsule-layer whiteout ROOT UID REL...   overlay whiteouts: a 0/0 character device at each ROOT/REL
 *   capsule-layer opaque ROOT UID REL...     mark each directory ROOT/REL opaque (trusted.overlay.opaque=y)
 *
 * An image layer says "this path is deleted" with a `.wh.<name>` file and
 * "hide everything below this directory" with `.wh..wh..opq`; overlayfs wants
 * a 0/0 character device and an xattr in the trusted namespace instead, which
 * need CAP_MKNOD and CAP_SYS_ADMIN. Missing parent directories are made (mode
 * 0755, owned by UID:UID, the sandboxes' mapped root).
 *
 * Every REL is resolved from ROOT one component at a time with O_NOFOLLOW, so
 * a symlink inside the layer (which may point anywhere) is never followed:
 * nothing is created or changed outside ROOT. ".." and empty components are
 * refused.
 *
 * Exit codes: 0 done, 2 usage, 3 a path could not be made (stderr says which).
 *
 * capsule-build: static=yes
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

static void fail(int code, const char *what, const char *path) {
  fprintf(stderr, "capsule-layer: %s %s: %s\n", what, path, errno ? strerror(errno) : "refused");
  exit(code);
}

/* The directory that holds the last component of rel (made when missing), opened O_NOFOLLOW. */
static int open_parent(int root, char *rel, const char **last, uid_t uid) {
  int dir = dup(root);
  if (dir < 0) fail(3, "dup", rel);
  char *save = NULL;
  char *comp = strtok_r(rel, "/", &save);
  if (!comp) {
    errno = EINVAL;
    fail(3, "empty path", "");
  }
  for (;;) {
    char *next = strtok_r(NULL, "/", &save);
    if (strcmp(comp, "..") == 0 || strcmp(comp, ".") == 0) {
      errno = EINVAL;
      fail(3, "path component", comp);
    }
    if (!next) {
      *last = comp;
      return dir;
    }
    int sub = openat(dir, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sub < 0 && errno == ENOENT) {
      if (mkdirat(dir, comp, 0755) < 0 && errno != EEXIST) fail(3, "mkdir", comp);
      sub = openat(dir, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub >= 0 && fchown(sub, uid, uid) < 0) fail(3, "chown", comp);
    }
    if (sub < 0) fail(3, "open directory", comp);
    close(dir);
    dir = sub;
    comp = next;
  }
}

int main(int argc, char **argv) {
  if (argc < 4 || (strcmp(argv[1], "whiteout") != 0 && strcmp(argv[1], "opaque") != 0)) {
    fprintf(stderr, "usage: capsule-layer whiteout|opaque ROOT UID REL...\n");
    return 2;
  }
  int whiteout = strcmp(argv[1], "whiteout") == 0;
  char *end = NULL;
  long uid = strtol(argv[3], &end, 10);
  if (!*argv[3] || *end || uid < 0 || uid > INT32_MAX) {
    fprintf(stderr, "capsule-layer: bad UID %s\n", argv[3]);
    return 2;
  }
  int root = open(argv[2], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (root < 0) fail(3, "open root", argv[2]);
  for (int i = 4; i < argc; i++) {
    char rel[PATH_MAX];
    if (strlen(argv[i]) >= sizeof rel) {
      errno = ENAMETOOLONG;
      fail(3, "path", argv[i]);
    }
    strcpy(rel, argv[i]);
    const char *last = NULL;
    errno = 0;
    if (whiteout) {
      int dir = open_parent(root, rel, &last, (uid_t)uid);
      /* A whiteout replaces whatever this layer has at that name. */
      if (unlinkat(dir, last, 0) < 0 && errno != ENOENT) {
        if (errno != EISDIR || unlinkat(dir, last, AT_REMOVEDIR) < 0) fail(3, "replace", argv[i]);
      }
      if (mknodat(dir, last, S_IFCHR | 0, makedev(0, 0)) < 0) fail(3, "mknod whiteout", argv[i]);
      if (fchownat(dir, last, (uid_t)uid, (gid_t)uid, AT_SYMLINK_NOFOLLOW) < 0) fail(3, "chown whiteout", argv[i]);
      close(dir);
    } else {
      /* Append a component so open_parent makes and opens the directory itself as the "parent". */
      size_t n = strlen(rel);
      if (n + 3 >= sizeof rel) {
        errno = ENAMETOOLONG;
        fail(3, "path", argv[i]);
      }
      strcat(rel, "/x");
      int dir = open_parent(root, rel, &last, (uid_t)uid);
      if (fsetxattr(dir, "trusted.overlay.opaque", "y", 1, 0) < 0) fail(3, "mark opaque", argv[i]);
      close(dir);
    }
  }
  return 0;
}
