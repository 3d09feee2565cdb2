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

/* Read what output pipe s has (flow-controlled while attached). */
void proc_read(struct proc *p, int s);
int proc_finished(struct proc *p);
/* Forward buffered output under credit, the held EXEC reply and the EXIT; `now` in ms. */
void proc_progress(struct proc *p, int64_t now);
void proc_write_stdin(struct proc *p);
/* Collect exited children (SIGCHLD). */
void reap(void);
void proc_sweep(void);
void proc_terminate_all(void);

#endif
