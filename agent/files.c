/*
 * Files: READ, WRITE, LIST, STAT, MKDIR, REMOVE, RENAME. Paths are resolved
 * by the kernel inside the sandbox's root (the agent is its init), so they
 * never reach the host; READ and LIST stream under credit.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "files.h"
#include "xattr.h"

#define TARGET_MAX 4096
#define ENTRY_MAX (1 + 4 + 8 + 8 + 4 + 512 + 4 + TARGET_MAX + XA_BLOCK_MAX + 1) /* + xattr.c's block and its spare byte */
#define MAX_LIST 1000000u
#define RM_DEPTH 256

/* With F_LARGE_DATA an upload may have this much in flight (1 MiB frames): the daemon always has credit
 * for the next frame while we write the last one. Granted with one WINDOW right after the OK. */
#define WRITE_WINDOW (4u << 20)

static unsigned tmp_counter;

/* Read an absolute path field. Returns NULL and sends an error when invalid. */
static char *get_path(struct conn *c, uint32_t id, struct rd *r) {
  uint32_t n;
  const uint8_t *p = rd_bytes(r, &n);
  if (!p) { c->dead = 1; return NULL; }
  if (n == 0 || p[0] != '/') { send_error(c, id, EINVAL, "path must be absolute"); return NULL; }
  if (memchr(p, 0, n)) { send_error(c, id, EINVAL, "path contains a NUL byte"); return NULL; }
  if (n >= PATH_MAX) { send_error(c, id, ENAMETOOLONG, "path is too long"); return NULL; }
  char *s = malloc(n + 1);
  if (!s) { send_error(c, id, ENOMEM, "out of memory"); return NULL; }
  memcpy(s, p, n);
  s[n] = 0;
  return s;
}

static int is_root_path(const char *p) {
  for (; *p; p++) if (*p != '/') return 0;
  return 1;
}

static uint8_t mode_type(mode_t m) {
  if (S_ISREG(m)) return T_FILE;
  if (S_ISDIR(m)) return T_DIR;
  if (S_ISLNK(m)) return T_SYMLINK;
  if (S_ISFIFO(m)) return T_FIFO;
  if (S_ISSOCK(m)) return T_SOCKET;
  if (S_ISCHR(m)) return T_CHAR;
  if (S_ISBLK(m)) return T_BLOCK;
  return T_UNKNOWN;
}

/* Encode one entry (lstat semantics) into out; returns its length or 0 when it vanished. */
static size_t encode_entry(uint8_t *out, int dirfd, const char *name, const char *shown) {
  struct stat st;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW)) return 0;
  size_t nl = strlen(shown);
  if (nl > 512) nl = 512;
  uint8_t *o = out;
  *o++ = mode_type(st.st_mode);
  wr_u32(o, (uint32_t)st.st_mode); o += 4;
  wr_u64(o, (uint64_t)st.st_size); o += 8;
  int64_t ms = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
  wr_u64(o, (uint64_t)ms); o += 8;
  wr_u32(o, (uint32_t)nl); o += 4;
  memcpy(o, shown, nl); o += nl;
  ssize_t tl = 0;
  if (S_ISLNK(st.st_mode)) {
    tl = readlinkat(dirfd, name, (char *)o + 4, TARGET_MAX);
    if (tl < 0) tl = 0;
  }
  wr_u32(o, (uint32_t)tl); o += 4 + tl;
  return (size_t)(o - out);
}

void handle_stat(struct conn *c, uint32_t id, struct rd *r) {
  char *path = get_path(c, id, r);
  if (!path) return;
  char *xprefix;
  if (xattr_read_prefix(c, id, r, &xprefix)) { free(path); return; }
  const char *base = strrchr(path, '/') + 1;
  uint8_t *e = malloc(ENTRY_MAX);
  if (!e) { send_error(c, id, ENOMEM, "out of memory"); free(path); free(xprefix); return; }
  size_t n = encode_entry(e, AT_FDCWD, path, *base ? base : "/");
  if (n && xprefix) n += xattr_entry(e, n, NULL, path, xprefix);
  if (!n) send_error(c, id, errno, "stat %.300s: %s", path, strerror(errno));
  else send_simple(c, id, FT_OK, 0, e, n);
  free(e);
  free(path);
  free(xprefix);
}

void handle_read(struct conn *c, uint32_t id, struct rd *r) {
  uint64_t max = rd_u64(r);
  char *path = get_path(c, id, r);
  if (!path) return;
  struct stat st;
  int fd = -1;
  if (stat(path, &st)) { send_error(c, id, errno, "%.300s: %s", path, strerror(errno)); goto out; }
  if (S_ISDIR(st.st_mode)) { send_error(c, id, EISDIR, "%.300s is a directory", path); goto out; }
  if (!S_ISREG(st.st_mode)) { send_error(c, id, EINVAL, "%.300s is not a regular file", path); goto out; }
  fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) { send_error(c, id, errno, "open %.300s: %s", path, strerror(errno)); goto out; }
  if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
    send_error(c, id, S_ISDIR(st.st_mode) ? EISDIR : EINVAL, "%.300s is not a regular file", path);
    goto out;
  }
  struct chan *ch = chan_new(c, id, CH_READ);
  if (!ch) { send_error(c, id, ENOMEM, "out of memory"); goto out; }
  ch->fd = fd;
  fd = -1;
  ch->credit = INIT_WINDOW;
  ch->remaining = max ? max : UINT64_MAX;
  /* 1.1: the download is the file as it was at open, so the size announced below is exactly what is sent
   * (a file that grows meanwhile is cut there; one that shrinks ends early, and the daemon sees it). */
  if ((c->features & F_READ_TO_SIZE) && (uint64_t)st.st_size < ch->remaining) ch->remaining = (uint64_t)st.st_size;
  uint8_t b[8];
  wr_u64(b, (uint64_t)st.st_size);
  send_simple(c, id, FT_OK, 0, b, 8);
out:
  if (fd >= 0) close(fd);
  free(path);
}

/* Produce read data while there is credit. Returns 1 if it could do more. */
int pump_read(struct conn *c, struct chan *ch) {
  for (int i = 0; i < 8; i++) {
    if (ch->credit <= 0 || c->out.len >= OUT_HIGH || c->dead) return 0;
    size_t want = c->max_data;
    if ((int64_t)want > ch->credit) want = (size_t)ch->credit;
    if (want > ch->remaining) want = (size_t)ch->remaining;
    if (!want) { send_simple(c, ch->id, FT_END, 0, NULL, 0); chan_free(c, ch); return 0; }
    if (buf_reserve(&c->out, HDR_LEN + want)) { c->dead = 1; return 0; }
    fr_begin(c, ch->id, FT_DATA, S_OUT);
    ssize_t n = read(ch->fd, buf_tail(&c->out), want);
    if (n < 0 && errno == EINTR) { c->out.len -= HDR_LEN; continue; }
    if (n <= 0) {
      int e = errno;
      c->out.len -= HDR_LEN;
      if (n == 0) send_simple(c, ch->id, FT_END, 0, NULL, 0);
      else send_error(c, ch->id, e, "read: %s", strerror(e));
      chan_free(c, ch);
      return 0;
    }
    c->out.len += (size_t)n;
    fr_end(c);
    ch->credit -= n;
    ch->remaining -= (uint64_t)n;
  }
  return ch->credit > 0;
}

static int mkdir_p(char *path) {
  size_t len = strlen(path);
  for (size_t i = 1; i <= len; i++) {
    if (path[i] != '/' && path[i] != 0) continue;
    if (path[i - 1] == '/') continue;
    char save = path[i];
    path[i] = 0;
    int rc = mkdir(path, 0755);
    int e = errno;
    if (rc && e == EEXIST) {
      struct stat st;
      if (stat(path, &st) == 0 && !S_ISDIR(st.st_mode)) e = save ? ENOTDIR : EEXIST;
      else rc = 0;
    }
    path[i] = save;
    if (rc) { errno = e; return -1; }
  }
  return 0;
}

void handle_mkdir(struct conn *c, uint32_t id, struct rd *r) {
  char *path = get_path(c, id, r);
  if (!path) return;
  if (mkdir_p(path)) send_error(c, id, errno, "mkdir %.300s: %s", path, strerror(errno));
  else send_simple(c, id, FT_OK, 0, NULL, 0);
  free(path);
}

void handle_write(struct conn *c, uint32_t id, struct rd *r) {
  uint32_t raw_mode = rd_u32(r);
  uint32_t mode = raw_mode & 07777;
  int handoff = (raw_mode & WRITE_HANDOFF) && (c->features & F_FILE_HANDOFF);
  char *path = get_path(c, id, r);
  if (!path) return;
  struct xattrs *xa;
  if (xattr_read_set(c, id, r, &xa)) { free(path); return; }
  char *slash = strrchr(path, '/');
  struct stat st;
  char *tmp = NULL;
  if (!slash[1]) { send_error(c, id, EISDIR, "%.300s names a directory", path); goto out; }
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) { send_error(c, id, EISDIR, "%.300s is a directory", path); goto out; }
  if (slash != path) {
    *slash = 0;
    int rc = mkdir_p(path);
    int e = errno;
    *slash = '/';
    if (rc) { send_error(c, id, e, "cannot create parent directory of %.300s: %s", path, strerror(e)); goto out; }
  }
  size_t dl = (size_t)(slash - path);
  tmp = malloc(dl + 64);
  if (!tmp) { send_error(c, id, ENOMEM, "out of memory"); goto out; }
  memcpy(tmp, path, dl);
  snprintf(tmp + dl, 64, "/.capsule-write-%d-%u", (int)getpid(), ++tmp_counter);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) { send_error(c, id, errno, "create %.300s: %s", path, strerror(errno)); goto out; }
  if (xa) {
    fchmod(fd, 0600); /* writable while its attributes are set, whatever the final mode */
    int e = xattr_apply(fd, xa);
    if (e) {
      close(fd);
      unlink(tmp);
      send_error(c, id, e, "set attributes of %.300s: %s", path, e == E2BIG ? "they do not fit the file system's attribute space"
                                       : e == ENOTSUP ? "the file system there has no user extended attributes" : strerror(e));
      goto out;
    }
  }
  fchmod(fd, mode);
  struct chan *ch = chan_new(c, id, CH_WRITE);
  if (!ch) { close(fd); unlink(tmp); send_error(c, id, ENOMEM, "out of memory"); goto out; }
  ch->fd = fd;
  ch->tmp = tmp;
  ch->dst = path;
  ch->rwin = INIT_WINDOW;
  /* The handoff names the temp file by descriptor and inode: the daemon opens it through /proc (it checks
   * what it opened is this empty file on the sandbox's root), fills it, and says at EOF how much it wrote.
   * It may also decline and send DATA as usual. */
  struct stat tst;
  if (handoff && fstat(fd, &tst) == 0) {
    uint8_t b[12];
    wr_u32(b, (uint32_t)fd);
    wr_u64(b + 4, (uint64_t)tst.st_ino);
    ch->handoff = 1;
    send_simple(c, id, FT_OK, 0, b, 12);
  } else {
    send_simple(c, id, FT_OK, 0, NULL, 0);
  }
  if (c->features & F_LARGE_DATA) {
    ch->rwin += WRITE_WINDOW - INIT_WINDOW;
    send_window(c, id, S_IN, WRITE_WINDOW - INIT_WINDOW);
  }
  xattr_free(xa);
  return;
out:
  xattr_free(xa);
  free(tmp);
  free(path);
}

static void write_data(struct conn *c, struct chan *ch, const uint8_t *d, size_t n) {
  size_t off = 0;
  while (off < n) {
    ssize_t w = write(ch->fd, d + off, n - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int e = w < 0 ? errno : EIO;
      send_error(c, ch->id, e, "write %.300s: %s", ch->dst, strerror(e));
      chan_free(c, ch);
      return;
    }
    off += (size_t)w;
  }
  ch->written += n;
  ch->rwin += (int64_t)n;
  send_window(c, ch->id, S_IN, (uint32_t)n);
}

/* EOF of an upload. After a handoff its payload is the u64 count of bytes the daemon wrote into the file
 * itself (then no DATA came): the file must hold exactly that many. */
static void write_finish(struct conn *c, struct chan *ch, const uint8_t *d, uint32_t len) {
  if (len >= 8 && ch->handoff) {
    struct rd r = { d, len, 0, 0 };
    uint64_t direct = rd_u64(&r);
    struct stat st;
    if (ch->written > 0 && direct > 0) {
      send_error(c, ch->id, EPROTO, "upload of %.300s came both as data and through its descriptor", ch->dst);
      chan_free(c, ch);
      return;
    }
    if (fstat(ch->fd, &st)) { send_error(c, ch->id, errno, "write %.300s: %s", ch->dst, strerror(errno)); chan_free(c, ch); return; }
    if ((uint64_t)st.st_size != ch->written + direct) {
      send_error(c, ch->id, EIO, "write %.300s: the file holds %llu bytes, %llu were sent", ch->dst,
                 (unsigned long long)st.st_size, (unsigned long long)(ch->written + direct));
      chan_free(c, ch);
      return;
    }
    ch->written += direct;
  }
  int fd = ch->fd;
  ch->fd = -1;
  if (close(fd)) { send_error(c, ch->id, errno, "write %.300s: %s", ch->dst, strerror(errno)); chan_free(c, ch); return; }
  if (rename(ch->tmp, ch->dst)) {
    send_error(c, ch->id, errno, "rename onto %.300s: %s", ch->dst, strerror(errno));
    chan_free(c, ch);
    return;
  }
  free(ch->tmp);
  ch->tmp = NULL;
  uint8_t b[8];
  wr_u64(b, ch->written);
  send_simple(c, ch->id, FT_END, 0, b, 8);
  chan_free(c, ch);
}

void handle_list(struct conn *c, uint32_t id, struct rd *r) {
  uint32_t limit = rd_u32(r);
  char *path = get_path(c, id, r);
  if (!path) return;
  char *xprefix;
  if (xattr_read_prefix(c, id, r, &xprefix)) { free(path); return; }
  if (limit == 0 || limit > MAX_LIST) limit = MAX_LIST;
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) { send_error(c, id, errno, "%.300s: %s", path, strerror(errno)); free(path); free(xprefix); return; }
  DIR *d = fdopendir(fd);
  struct chan *ch = d ? chan_new(c, id, CH_LIST) : NULL;
  uint8_t *pend = ch ? malloc(ENTRY_MAX) : NULL;
  if (!pend) {
    if (ch) chan_free(c, ch);
    if (d) closedir(d); else close(fd);
    send_error(c, id, ENOMEM, "out of memory");
    free(path);
    free(xprefix);
    return;
  }
  ch->xprefix = xprefix;
  ch->dir = d;
  ch->dpath = path;
  ch->limit = limit;
  ch->credit = INIT_WINDOW;
  ch->pend = pend;
  send_simple(c, id, FT_OK, 0, NULL, 0);
}

/* Fill ENTRIES frames from the directory while there is credit. */
int pump_list(struct conn *c, struct chan *ch) {
  for (int round = 0; round < 4; round++) {
    if (ch->credit <= 0 || c->out.len >= OUT_HIGH || c->dead) return 0;
    size_t budget = MAX_DATA;
    if ((int64_t)budget > ch->credit) budget = (size_t)ch->credit;
    fr_begin(c, ch->id, FT_ENTRIES, S_OUT);
    size_t count_at = c->out.len;
    put_u32(c, 0);
    uint32_t n = 0;
    int done = 0, truncated = 0;
    for (;;) {
      if (!ch->pend_len) {
        if (ch->count >= ch->limit) {
          /* limit reached: is there anything left? */
          for (;;) {
            errno = 0;
            struct dirent *de = readdir(ch->dir);
            if (!de) break;
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) { truncated = 1; break; }
          }
          done = 1;
          break;
        }
        errno = 0;
        struct dirent *de = readdir(ch->dir);
        if (!de) { done = 1; break; }
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        ch->pend_len = encode_entry(ch->pend, dirfd(ch->dir), de->d_name, de->d_name);
        if (!ch->pend_len) continue;
        if (ch->xprefix) ch->pend_len += xattr_entry(ch->pend, ch->pend_len, ch->dpath, de->d_name, ch->xprefix);
      }
      if (c->out.len - count_at + ch->pend_len > budget) break;
      put(c, ch->pend, ch->pend_len);
      ch->pend_len = 0;
      ch->count++;
      n++;
    }
    if (c->dead) return 0;
    if (n) {
      wr_u32(buf_head(&c->out) + count_at, n);
      fr_end(c);
      ch->credit -= (int64_t)(c->out.len - count_at);
    } else {
      c->out.len = c->fs; /* nothing fit: drop the empty frame */
    }
    if (done) {
      uint8_t t = (uint8_t)truncated;
      send_simple(c, ch->id, FT_END, 0, &t, 1);
      chan_free(c, ch);
      return 0;
    }
    if (!n) return 0;
  }
  return ch->credit > 0;
}

static int rm_tree(int dfd, int depth) {
  if (depth > RM_DEPTH) { close(dfd); errno = ENAMETOOLONG; return -1; }
  DIR *d = fdopendir(dfd);
  if (!d) { int e = errno; close(dfd); errno = e; return -1; }
  int err = 0;
  for (int pass = 0; pass < 8; pass++) {
    int removed = 0;
    struct dirent *de;
    rewinddir(d);
    while ((de = readdir(d))) {
      if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
      struct stat st;
      if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW)) continue;
      if (S_ISDIR(st.st_mode)) {
        int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0) { err = errno; continue; }
        if (rm_tree(sub, depth + 1)) { err = errno; continue; }
        if (unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR)) { err = errno; continue; }
      } else if (unlinkat(dirfd(d), de->d_name, 0)) {
        err = errno;
        continue;
      }
      removed++;
    }
    if (!removed) break;
  }
  closedir(d);
  if (err) { errno = err; return -1; }
  return 0;
}

void handle_remove(struct conn *c, uint32_t id, struct rd *r) {
  uint8_t flags = rd_u8(r);
  char *path = get_path(c, id, r);
  if (!path) return;
  struct stat st;
  if (is_root_path(path)) { send_error(c, id, EINVAL, "refusing to remove /"); goto out; }
  if (lstat(path, &st)) { send_error(c, id, errno, "%.300s: %s", path, strerror(errno)); goto out; }
  if (S_ISDIR(st.st_mode)) {
    /* The path may name the root after resolution: gVisor (runsc 20221219) resolves "<symlink to />/x" as "/". */
    struct stat root;
    if (!stat("/", &root) && root.st_dev == st.st_dev && root.st_ino == st.st_ino) {
      send_error(c, id, EINVAL, "refusing to remove %.300s: it resolves to /", path);
      goto out;
    }
    if (flags & 1) {
      int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0 || rm_tree(fd, 0)) { send_error(c, id, errno, "remove %.300s: %s", path, strerror(errno)); goto out; }
    }
    if (rmdir(path)) { send_error(c, id, errno, "remove %.300s: %s", path, strerror(errno)); goto out; }
  } else if (unlink(path)) {
    send_error(c, id, errno, "remove %.300s: %s", path, strerror(errno));
    goto out;
  }
  send_simple(c, id, FT_OK, 0, NULL, 0);
out:
  free(path);
}

void handle_rename(struct conn *c, uint32_t id, struct rd *r) {
  char *from = get_path(c, id, r);
  if (!from) return;
  char *to = get_path(c, id, r);
  if (to) {
    if (rename(from, to)) send_error(c, id, errno, "rename %.300s -> %.300s: %s", from, to, strerror(errno));
    else send_simple(c, id, FT_OK, 0, NULL, 0);
  }
  free(from);
  free(to);
}

/* Frames on a file channel after its reply: credit for READ/LIST, data and EOF for WRITE. */
void file_frame(struct conn *c, struct chan *ch, uint8_t type, uint8_t stream, const uint8_t *d, uint32_t len) {
  struct rd r = { d, len, 0, 0 };
  switch (type) {
    case FT_WINDOW: {
      uint32_t n = rd_u32(&r);
      if (r.bad) { c->dead = 1; return; }
      if ((ch->kind != CH_READ && ch->kind != CH_LIST) || stream != S_OUT) return;
      ch->credit += n;
      if (ch->credit > (int64_t)MAX_WINDOW) c->dead = 1;
      return;
    }
    case FT_DATA:
      if (stream != S_IN) { c->dead = 1; return; }
      if (ch->kind != CH_WRITE) return;
      if ((int64_t)len > ch->rwin) { c->dead = 1; return; }
      ch->rwin -= len;
      write_data(c, ch, d, len);
      return;
    case FT_EOF:
      if (ch->kind == CH_WRITE) write_finish(c, ch, d, len);
      return;
    default:
      return; /* unknown frame types on a channel are ignored */
  }
}
