/*
 * Wire codec of the agent protocol: byte buffers, big-endian field readers for
 * request payloads (every overrun marks the reader bad), errno names, and the
 * frame writers that append to a connection's output queue.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "wire.h"

static const struct { int e; const char *n; } errnames[] = {
  {EPERM, "EPERM"}, {ENOENT, "ENOENT"}, {ESRCH, "ESRCH"}, {EINTR, "EINTR"}, {EIO, "EIO"},
  {ENXIO, "ENXIO"}, {E2BIG, "E2BIG"}, {ENOEXEC, "ENOEXEC"}, {EBADF, "EBADF"}, {ECHILD, "ECHILD"},
  {EAGAIN, "EAGAIN"}, {ENOMEM, "ENOMEM"}, {EACCES, "EACCES"}, {EFAULT, "EFAULT"}, {EBUSY, "EBUSY"},
  {EEXIST, "EEXIST"}, {EXDEV, "EXDEV"}, {ENODEV, "ENODEV"}, {ENOTDIR, "ENOTDIR"}, {EISDIR, "EISDIR"},
  {EINVAL, "EINVAL"}, {ENFILE, "ENFILE"}, {EMFILE, "EMFILE"}, {ETXTBSY, "ETXTBSY"}, {EFBIG, "EFBIG"},
  {ENOSPC, "ENOSPC"}, {EROFS, "EROFS"}, {EMLINK, "EMLINK"}, {EPIPE, "EPIPE"}, {ENAMETOOLONG, "ENAMETOOLONG"},
  {ENOSYS, "ENOSYS"}, {ENOTEMPTY, "ENOTEMPTY"}, {ELOOP, "ELOOP"}, {EOVERFLOW, "EOVERFLOW"},
  {EPROTO, "EPROTO"}, {ECANCELED, "ECANCELED"}, {EDQUOT, "EDQUOT"}, {ENOTSUP, "ENOTSUP"},
};

const char *errname(int e) {
  for (size_t i = 0; i < sizeof errnames / sizeof errnames[0]; i++)
    if (errnames[i].e == e) return errnames[i].n;
  return "EIO";
}

/* ------------------------------------------------------------------ */
/* growable byte buffer: valid bytes are p[off, off+len)               */

int buf_reserve(struct buf *b, size_t extra) {
  if (b->off + b->len + extra <= b->cap) return 0;
  if (b->off) { memmove(b->p, b->p + b->off, b->len); b->off = 0; }
  if (b->len + extra <= b->cap) return 0;
  size_t nc = b->cap ? b->cap : 4096;
  while (nc < b->len + extra) nc *= 2;
  uint8_t *np = realloc(b->p, nc);
  if (!np) return -1;
  b->p = np;
  b->cap = nc;
  return 0;
}
void buf_consume(struct buf *b, size_t n) {
  b->off += n;
  b->len -= n;
  if (!b->len) {
    b->off = 0;
    if (b->cap > (4u << 20)) { free(b->p); b->p = NULL; b->cap = 0; }
  }
}
void buf_free(struct buf *b) { free(b->p); memset(b, 0, sizeof *b); }

/* ------------------------------------------------------------------ */
/* payload reader                                                      */

int rd_need(struct rd *r, size_t n) {
  if (r->bad || r->len - r->pos < n) { r->bad = 1; return 0; }
  return 1;
}
uint8_t rd_u8(struct rd *r) { return rd_need(r, 1) ? r->p[r->pos++] : 0; }
uint32_t rd_u32(struct rd *r) {
  if (!rd_need(r, 4)) return 0;
  uint32_t v = rd32(r->p + r->pos);
  r->pos += 4;
  return v;
}
uint64_t rd_u64(struct rd *r) {
  uint64_t hi = rd_u32(r);
  return (hi << 32) | rd_u32(r);
}
const uint8_t *rd_bytes(struct rd *r, uint32_t *n) {
  *n = rd_u32(r);
  if (!rd_need(r, *n)) return NULL;
  const uint8_t *p = r->p + r->pos;
  r->pos += *n;
  return p;
}
/* Copy a string field into a fresh NUL-terminated allocation; refuses embedded NULs. */
char *rd_cstr(struct rd *r, uint32_t max) {
  uint32_t n;
  const uint8_t *p = rd_bytes(r, &n);
  if (!p || n > max || memchr(p, 0, n)) { r->bad = 1; return NULL; }
  char *s = malloc(n + 1);
  if (!s) { r->bad = 1; return NULL; }
  memcpy(s, p, n);
  s[n] = 0;
  return s;
}

/* ------------------------------------------------------------------ */
/* frame output                                                        */

void put(struct conn *c, const void *d, size_t n) {
  if (c->dead) return;
  if (buf_reserve(&c->out, n)) { c->dead = 1; return; }
  memcpy(buf_tail(&c->out), d, n);
  c->out.len += n;
}
void put_u8(struct conn *c, uint8_t v) { put(c, &v, 1); }
void put_u32(struct conn *c, uint32_t v) { uint8_t b[4]; wr_u32(b, v); put(c, b, 4); }
void put_bytes(struct conn *c, const void *d, size_t n) { put_u32(c, (uint32_t)n); put(c, d, n); }

void fr_begin(struct conn *c, uint32_t ch, uint8_t type, uint8_t stream) {
  uint8_t h[HDR_LEN] = {0};
  wr_u32(h + 4, ch);
  h[8] = type;
  h[9] = stream;
  c->fs = c->out.len;
  put(c, h, HDR_LEN);
}
void fr_end(struct conn *c) {
  if (c->dead) return;
  wr_u32(buf_head(&c->out) + c->fs, (uint32_t)(c->out.len - c->fs - HDR_LEN));
}
void send_simple(struct conn *c, uint32_t ch, uint8_t type, uint8_t stream, const void *d, size_t n) {
  fr_begin(c, ch, type, stream);
  put(c, d, n);
  fr_end(c);
}
void send_window(struct conn *c, uint32_t ch, uint8_t stream, uint32_t n) {
  uint8_t b[4];
  wr_u32(b, n);
  send_simple(c, ch, FT_WINDOW, stream, b, 4);
}
void send_error(struct conn *c, uint32_t ch, int err, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  const char *n = errname(err);
  fr_begin(c, ch, FT_ERROR, 0);
  put_bytes(c, n, strlen(n));
  put_bytes(c, msg, strlen(msg));
  fr_end(c);
}
