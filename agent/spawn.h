/* Process spawning: clone/exec with stdio, cwd and credentials (spawn.c). */
#ifndef CAPSULE_SPAWN_H
#define CAPSULE_SPAWN_H

#include <sched.h>
#include <stdint.h>
#include <sys/types.h>

#include "protocol.h"
#include "users.h"

/* How far the child got when it failed before exec. */
enum { STAGE_CRED = 1, STAGE_CWD, STAGE_EXEC, STAGE_STDIO };

struct spawn {
  char **argv, **envp;
  const char *cwd;                /* "" = / */
  struct { int src, dst; } map[MAX_CHILD_FD + 1]; /* the child's fd dst becomes a copy of our src */
  int nmap;
  const struct cred *cr;          /* NULL: keep the agent's */
  int ctty;                       /* the child's fd to make its controlling terminal (a PTY stream), or -1 */
  volatile int32_t stage, err;    /* set by the child when it fails before exec */
  cpu_set_t cpus;                 /* the agent's own CPUs, for the child to take back before exec */
  int pinned;
};

/* Once at start, after the agent set up its own signal handling: which dispositions a child must reset. */
void spawn_init(void);

/*
 * Starts the child; returns its pid (s->stage says whether it got as far as exec), or -1 with errno.
 * On failure before exec the child has exited: reap it with waitpid before looking at s->stage.
 */
pid_t spawn_child(struct spawn *s);

#endif
