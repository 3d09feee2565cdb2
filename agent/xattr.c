/*
 * File metadata as extended attributes (1.3, F_XATTR). Set only on the temp file of an upload, by
 * descriptor, before it is renamed into place: the file appears with exactly the attributes it was
 * given, nothing is resolved twice, and no link is followed. Read with l*xattr calls, so a symlink
 * is never followed to its target. All paths resolve in the sandbox's own root (the agent is its init).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include "agent.h"
#include "xattr.h"

struct xattr_kv { const uint8_t *k, *v; uint32_t kl, vl; };
struct xattrs {
  const uint8_t *prefix; /* points into the request frame: used before the handler returns */
  uint32_t plen, count;
  struct xattr_kv e[XA_MAX_COUNT];
};

static int prefix_ok(const uint8_t *p, uint32_t n) {
  return n >= 5 && n <= XA_MAX_PREFIX && !memcmp(p, "user.", 5) && !memchr(p, 0, n);
}

int xattr_read_set(struct conn *c, uint32_t id, struct rd *r, struct xattrs **out) {
  *out = NULL;
  if (!(c->features & F_XATTR) || r->pos >= r->len) return 0;
  uint32_t plen, count;
  const uint8_t *prefix = rd_bytes(r, &plen);
  count = rd_u32(r);
  if (r->bad) { c->dead = 1; return -1; }
  if (!prefix_ok(prefix, plen)) { send_error(c, id, EINVAL, "attribute prefix must start with user. and have at most %d bytes", XA_MAX_PREFIX); return -1; }
  if (count > XA_MAX_COUNT) { send_error(c, id, E2BIG, "%u attributes, at most %d per file", count, XA_MAX_COUNT); return -1; }
  if (!count) return 0;
  struct xattrs *x = calloc(1, sizeof *x);
  if (!x) { send_error(c, id, ENOMEM, "out of memory"); return -1; }
  x->prefix = prefix;
  x->plen = plen;
  size_t total = 0;
  for (uint32_t i = 0; i < count; i++) {
    struct xattr_kv *e = &x->e[i];
    e->k = rd_bytes(r, &e->kl);
    e->v = rd_bytes(r, &e->vl);
    if (r->bad) { free(x); c->dead = 1; return -1; }
    if (!e->kl || memchr(e->k, 0, e->kl)) { free(x); send_error(c, id, EINVAL, "attribute name empty or with a NUL byte"); return -1; }
    if (plen + e->kl > XA_MAX_NAME) { free(x); send_error(c, id, E2BIG, "attribute name over %d bytes", XA_MAX_NAME); return -1; }
    total += plen + e->kl + e->vl;
    if (total > XA_MAX_TOTAL) { free(x); send_error(c, id, E2BIG, "attributes over %d bytes per file", XA_MAX_TOTAL); return -1; }
  }
  x->count = count;
  *out = x;
  return 0;
}

int xattr_apply(int fd, const struct xattrs *x) {
  char name[XA_MAX_NAME + 1];
  for (uint32_t i = 0; i < x->count; i++) {
    const struct xattr_kv *e = &x->e[i];
    memcpy(name, x->prefix, x->plen);
    memcpy(name + x->plen, e->k, e->kl);
    name[x->plen + e->kl] = 0;
    if (fsetxattr(fd, name, e->v, e->vl, XATTR_CREATE)) {
      int err = errno;
      if (err == EEXIST) return EINVAL; /* the same name twice */
      if (err == ENOSPC || err == ERANGE || err == EDQUOT) return E2BIG; /* does not fit this file system's attribute space */
      return err;
    }
  }
  return 0;
}

void xattr_free(struct xattrs *x) { free(x); }

int xattr_read_prefix(struct conn *c, uint32_t id, struct rd *r, char **prefix) {
  *prefix = NULL;
  if (!(c->features & F_XATTR) || r->pos >= r->len) return 0;
  uint32_t n;
  const uint8_t *p = rd_bytes(r, &n);
  if (!p) { c->dead = 1; return -1; }
  if (!prefix_ok(p, n)) { send_error(c, id, EINVAL, "attribute prefix must start with user. and have at most %d bytes", XA_MAX_PREFIX); return -1; }
  char *s = malloc(n + 1);
  if (!s) { send_error(c, id, ENOMEM, "out of memory"); return -1; }
  memcpy(s, p, n);
  s[n] = 0;
  *prefix = s;
  return 0;
}

/* The agent is single-threaded: one list buffer (the kernel's XATTR_LIST_MAX) and one path buffer. */
static char names[65536];
static char joined[PATH_MAX * 2];

size_t xattr_entry(uint8_t *entry, size_t len, const char *dir, const char *name, const char *prefix) {
  uint8_t *out = entry + len, *o = out + 5;
  uint8_t flags = 0;
  uint32_t count = 0;
  size_t total = 0, plen = strlen(prefix);
  mode_t mode = (mode_t)rd32(entry + 1);
  const char *path = name;
  if (S_ISREG(mode) || S_ISDIR(mode)) {
    if (dir) {
      int n = snprintf(joined, sizeof joined, "%s/%s", dir, name);
      path = n > 0 && (size_t)n < sizeof joined ? joined : NULL;
    }
    ssize_t nl = path ? llistxattr(path, names, sizeof names) : -1;
    if (nl < 0) {
      if (!path || (errno != ENOTSUP && errno != ENOENT)) flags |= XA_PARTIAL;
      nl = 0;
    }
    for (size_t at = 0; at < (size_t)nl;) {
      const char *n = names + at;
      size_t l = strnlen(n, (size_t)nl - at);
      at += l + 1;
      if (l <= plen || memcmp(n, prefix, plen)) continue;
      size_t kl = l - plen;
      if (count >= XA_MAX_COUNT || total + l > XA_MAX_TOTAL) { flags |= XA_PARTIAL; continue; }
      size_t room = XA_MAX_TOTAL - total - l;
      /* One byte more than the room: a value that fills it is told from one that is larger (ERANGE). */
      ssize_t vl = lgetxattr(path, n, o + 8 + kl, room + 1);
      if (vl < 0 || (size_t)vl > room) {
        if (vl >= 0 || errno != ENODATA) flags |= XA_PARTIAL;
        continue;
      }
      wr_u32(o, (uint32_t)kl);
      memcpy(o + 4, n + plen, kl);
      wr_u32(o + 4 + kl, (uint32_t)vl);
      o += 8 + kl + (size_t)vl;
      total += l + (size_t)vl;
      count++;
    }
  }
  out[0] = flags;
  wr_u32(out + 1, count);
  return (size_t)(o - out);
}
