/* File watches: WATCH requests backed by inotify (watch.c). */
#ifndef CAPSULE_WATCH_H
#define CAPSULE_WATCH_H

#include "agent.h"

struct watch;

void handle_watch(struct conn *c, uint32_t id, struct rd *r);
/* The inotify descriptor to poll for reading. */
int watch_fd(const struct watch *w);
/* Read what the kernel has queued and turn it into events (bounded; overflow is an event). */
void watch_read(struct conn *c, struct chan *ch);
/* Send queued events under credit; 1 when more could go at once. May free the channel (after GONE). */
int pump_watch(struct conn *c, struct chan *ch);
/* A frame on a WATCH channel after its reply (WINDOW). */
void watch_frame(struct conn *c, struct chan *ch, uint8_t type, uint8_t stream, const uint8_t *d, uint32_t len);
void watch_free(struct watch *w);

#endif
