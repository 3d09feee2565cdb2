/* File requests (files.c). Each handle_* opens or answers the channel `id`. */
#ifndef CAPSULE_FILES_H
#define CAPSULE_FILES_H

#include "agent.h"

void handle_read(struct conn *c, uint32_t id, struct rd *r);
void handle_write(struct conn *c, uint32_t id, struct rd *r);
void handle_list(struct conn *c, uint32_t id, struct rd *r);
void handle_stat(struct conn *c, uint32_t id, struct rd *r);
void handle_mkdir(struct conn *c, uint32_t id, struct rd *r);
void handle_remove(struct conn *c, uint32_t id, struct rd *r);
void handle_rename(struct conn *c, uint32_t id, struct rd *r);

/* Produce READ data / LIST entries while the channel has credit; 1 when more could go at once. */
int pump_read(struct conn *c, struct chan *ch);
int pump_list(struct conn *c, struct chan *ch);
/* A frame on a READ, WRITE or LIST channel after its reply. */
void file_frame(struct conn *c, struct chan *ch, uint8_t type, uint8_t stream, const uint8_t *d, uint32_t len);

#endif
