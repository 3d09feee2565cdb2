/*
 * Shared state of the agent: connections, channels and processes, and the
 * limits that bound them. Each module's own functions are declared in its
 * header (wire.h, process.h, files.h, users.h, spawn.h, pty.h, watch.h).
 */
#ifndef CAPSULE_AGENT_H
#define CAPSULE_AGENT_H

#include <dirent.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "protocol.h"
#include "wire.h"

#define RING_CAP 65536u          /* kept output per stream of a process */
#define OUT_HIGH (2u << 20)      /* stop reading a connection / producing while its queue is above */
#define MAX_CONNS 64
#define MAX_CHANS 4096           /* per connection */

struct conn;
struct watch;

struct ring { uint8_t *p; size_t head, len; };

/*
 * One stream of a process: a pipe to or from the daemon, a terminal (both directions on its master), or /dev/null. The classic layout (1.0, or an
 * EXEC without a stream table) is 0 = stdin (pipe or null), 1 = stdout, 2 = stderr.
 */
struct pstream {
  uint8_t id, kind;               /* wire stream id; SK_* */
  int fd;                         /* our end of the pipe, -1 when closed (always -1 for SK_NULL) */
  struct ring ring;               /* SK_PIPE_OUT/SK_PTY: output not yet sent (attached) or kept (detached) */
  int64_t credit;                 /* SK_PIPE_OUT/SK_PTY: what the daemon lets us send */
  struct buf ibuf;                /* SK_PIPE_IN/SK_PTY: input not yet written */
  int iclose;                     /* SK_PIPE_IN: close once ibuf drained */
  int64_t rwin;                   /* SK_PIPE_IN/SK_PTY/SK_NULL: credit the daemon still has */
};

struct proc {
  struct proc *next;
  pid_t pid;
  uint8_t *ps; size_t ps_len;     /* encoded argv: u32 argc, then bytes... */
  int nstreams;
  struct pstream st[MAX_STREAMS];
  int classic;                    /* started without a stream table: ATTACH answers without one */
  int truncated;
  int exited, status;
  int64_t deadline;               /* after exit: close pipes when idle past this */
  struct conn *conn;              /* attached channel, or NULL */
  uint32_t ch;
  uint64_t fin_seq;               /* >0 once finished and unattached */
  int64_t ok_due;                 /* EXEC reply held until exit or this time (now_us); 0 = no reply pending */
  int dead;                       /* free at next sweep */
};

enum { CH_EXEC = 1, CH_READ, CH_WRITE, CH_LIST, CH_WATCH };

struct chan {
  struct chan *next;
  uint32_t id;
  int kind;
  struct proc *proc;
  int fd;
  uint64_t remaining;             /* READ: bytes still allowed */
  int64_t credit;                 /* READ/LIST: our send credit */
  int64_t rwin;                   /* WRITE: daemon's remaining credit */
  char *tmp, *dst;
  uint64_t written;
  int handoff;                    /* WRITE: the daemon was given the temp file's descriptor (F_FILE_HANDOFF) */
  DIR *dir;
  char *dpath;
  uint32_t limit, count;
  uint8_t *pend; size_t pend_len; /* LIST: encoded entry that did not fit */
  char *xprefix;                  /* LIST with F_XATTR: entries carry the attributes under this prefix */
  struct watch *watch;            /* WATCH: its inotify state and event queue (watch.c) */
};

struct conn {
  struct conn *next;
  int fd;
  struct buf in, out;
  size_t fs;                      /* start of the frame being built, relative to out.off */
  int hello;
  uint64_t features;              /* F_* in effect: ours and the daemon's */
  uint32_t max_data;              /* largest DATA payload we send on it */
  int dead;
  struct chan *chans;
  int nchans;
};

/* Channels of a connection (capsule-agent.c). chan_free detaches a bound process, never stops it. */
struct chan *chan_find(struct conn *c, uint32_t id);
struct chan *chan_new(struct conn *c, uint32_t id, int kind);
void chan_free(struct conn *c, struct chan *ch);

static inline int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
static inline int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

#endif
