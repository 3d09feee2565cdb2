/* Commands: EXEC, ATTACH, PS, process output and stdin, reaping (process.c). */
#ifndef CAPSULE_PROCESS_H
#define CAPSULE_PROCESS_H

#include "agent.h"

/* Every process the agent started and has not freed yet (running, or finished and kept). */
extern struct proc *procs;

void proc_init(void);
void handle_exec(struct conn *c, uint32_t id, struct rd *r);
void handle_attach(struct conn *c, uint32_t id, struct rd *r);
void handle_ps(struct conn *c, uint32_t id);

/* Read what output stream i (an index into p->st) has; flow-controlled while attached. */
void proc_read(struct proc *p, int i);
/* Output pipes not yet at EOF (or given up on after the exit). */
int proc_open_outputs(struct proc *p);
int proc_finished(struct proc *p);
/* Forward buffered output under credit, the held EXEC reply and the EXIT; `now` in ms. */
void proc_progress(struct proc *p, int64_t now);
/* Write what input stream i has queued. */
void proc_write_in(struct proc *p, int i);
/* A frame on an EXEC/ATTACH channel after its reply (DATA, WINDOW, EOF, SIGNAL, CONTROL). */
void proc_frame(struct conn *c, struct chan *ch, uint8_t type, uint8_t stream, const uint8_t *d, uint32_t len);
/* Collect exited children (SIGCHLD). */
void reap(void);
void proc_sweep(void);
void proc_terminate_all(void);

#endif
