/*
 * Wire codec: byte buffers, payload readers and frame writers
 * (docs/agent-protocol.md, "Frames"). All integers are big-endian.
 */
#ifndef CAPSULE_WIRE_H
#define CAPSULE_WIRE_H

#include <stddef.h>
#include <stdint.h>

struct conn;

static inline void wr_u32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static inline void wr_u64(uint8_t *p, uint64_t v) { wr_u32(p, (uint32_t)(v >> 32)); wr_u32(p + 4, (uint32_t)v); }
static inline uint32_t rd32(const uint8_t *p) { return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]; }

/* The errno's symbolic name for ERROR frames ("EIO" for any we do not list). */
const char *errname(int e);

/* Growable byte buffer: valid bytes are p[off, off+len). */
struct buf { uint8_t *p; size_t off, len, cap; };

int buf_reserve(struct buf *b, size_t extra);
static inline uint8_t *buf_head(struct buf *b) { return b->p + b->off; }
static inline uint8_t *buf_tail(struct buf *b) { return b->p + b->off + b->len; }
void buf_consume(struct buf *b, size_t n);
void buf_free(struct buf *b);

/* Payload reader: any overrun or bad field sets `bad`, and later reads return zeroes. */
struct rd { const uint8_t *p; size_t len, pos; int bad; };

int rd_need(struct rd *r, size_t n);
uint8_t rd_u8(struct rd *r);
uint32_t rd_u32(struct rd *r);
uint64_t rd_u64(struct rd *r);
const uint8_t *rd_bytes(struct rd *r, uint32_t *n);
/* A string field as a fresh NUL-terminated allocation; refuses embedded NULs and fields over max. */
char *rd_cstr(struct rd *r, uint32_t max);

/* Frame output to a connection's queue. Allocation failure marks the connection dead. */
void put(struct conn *c, const void *d, size_t n);
void put_u8(struct conn *c, uint8_t v);
void put_u32(struct conn *c, uint32_t v);
void put_bytes(struct conn *c, const void *d, size_t n);
/* A frame is built between fr_begin and fr_end, which fills in its length. */
void fr_begin(struct conn *c, uint32_t ch, uint8_t type, uint8_t stream);
void fr_end(struct conn *c);
void send_simple(struct conn *c, uint32_t ch, uint8_t type, uint8_t stream, const void *d, size_t n);
void send_window(struct conn *c, uint32_t ch, uint8_t stream, uint32_t n);
void send_error(struct conn *c, uint32_t ch, int err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
