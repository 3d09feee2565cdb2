/*
 * The agent inside a microVM (src/runtime/microvm): `capsule-agent --vm-init`
 * runs as the guest's init from the initramfs, sets up the root filesystem
 * (vm_init), and serves the daemon over one virtio-serial port that carries
 * many streams (vm_mux_*). Each stream gets a socketpair whose other end is an
 * ordinary agent connection (conn_adopt), so the request handlers never know.
 *
 * Mux frames, both directions, all integers big-endian (the daemon's side:
 * src/runtime/microvm/mux.ts, which documents the protocol):
 *   u8 type, u8 flags (0), u16 length, u32 stream, then length bytes (<= MUX_MAX_DATA).
 */
#ifndef CAPSULE_VM_H
#define CAPSULE_VM_H

#include <poll.h>
#include <stddef.h>
#include <stdint.h>

#define MUX_HDR 8
#define MUX_MAX_DATA 32768
#define MUX_WINDOW (256u * 1024)  /* bytes in flight per stream and direction */
#define MUX_MAX_STREAMS 64
#define MUX_OUT_HIGH (256u * 1024) /* stop reading streams while the port's queue is above */

enum { MT_OPEN = 1, MT_DATA = 2, MT_CLOSE = 3, MT_CREDIT = 4, MT_SYNC = 0xA5 };
#define MUX_MAGIC "capsule-mux1" /* SYNC payload: 12 bytes */

/* Mount the guest's root (lower image, writable disk, overlay), switch to it and open the agent's port.
 * Returns the port's fd; exits (the VM powers off) when the guest cannot be set up. */
int vm_init(void);

void vm_mux_start(int port_fd);
/* Descriptors to poll, and the agent's timeout (ms, -1 none) while the host is away. */
size_t vm_nfds(void);
size_t vm_fill(struct pollfd *pfd, int *tags);
void vm_event(int tag, short revents);
int64_t vm_timeout_ms(int64_t now);
void vm_tick(int64_t now);

/* capsule-agent.c: serve fd as one more connection (0), or refuse it (-1, fd closed). */
int conn_adopt(int fd);

#endif
