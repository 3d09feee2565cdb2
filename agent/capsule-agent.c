/*
 * capsule-agent: init process of a Capsule sandbox.
 *
 * Serves the daemon over a unix stream socket (multiplexed channels, credit
 * based flow control, see docs/agent-protocol.md), runs commands and touches
 * files with the sandbox's own view of the system, and reaps every child.
 *
 * Single threaded: one poll() loop. No dependencies beyond libc; built static.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "protocol.h"

#define RING_CAP 65536u          /* kept output per stream of a process */
#define OUT_HIGH (2u << 20)      /* stop reading a connection / producing while its queue is above */
#define MAX_CONNS 64
#define MAX_CHANS 4096           /* per connection */
#define MAX_RUNNING 1024
#define MAX_FINISHED 256
#define DRAIN_MS 50
/* EXEC with EXEC_HOLD_REPLY: how long the OK may wait for the exit (see proc_progress). */
#define HOLD_US 2000
#define MAX_ARGS 65536
#define PS_ARGV_MAX 4096         /* argv bytes remembered per process for PS */
#define TARGET_MAX 4096
#define ENTRY_MAX (1 + 4 + 8 + 8 + 4 + 512 + 4 + TARGET_MAX)
#define MAX_LIST 1000000u
#define MAX_GROUPS 64
#define RM_DEPTH 256
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* ------------------------------------------------------------------ */
/* small utilities                                                     */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void wr_u32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static void wr_u64(uint8_t *p, uint64_t v) { wr_u32(p, (uint32_t)(v >> 32)); wr_u32(p + 4, (uint32_t)v); }
static uint32_t rd32(const uint8_t *p) { return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]; }

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

static const char *errname(int e) {
  for (size_t i = 0; i < sizeof errnames / sizeof errnames[0]; i++)
    if (errnames[i].e == e) return errnames[i].n;
  return "EIO";
}

/* ------------------------------------------------------------------ */
/* growable byte buffer: valid bytes are p[off, off+len)               */

struct buf { uint8_t *p; size_t off, len, cap; };

static int buf_reserve(struct buf *b, size_t extra) {
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
static uint8_t *buf_head(struct buf *b) { return b->p + b->off; }
static uint8_t *buf_tail(struct buf *b) { return b->p + b->off + b->len; }
static void buf_consume(struct buf *b, size_t n) {
  b->off += n;
  b->len -= n;
  if (!b->len) {
    b->off = 0;
    if (b->cap > (4u << 20)) { free(b->p); b->p = NULL; b->cap = 0; }
  }
}
static void buf_free(struct buf *b) { free(b->p); memset(b, 0, sizeof *b); }

/* payload reader: sets bad on any overrun */
struct rd { const uint8_t *p; size_t len, pos; int bad; };

static int rd_need(struct rd *r, size_t n) {
  if (r->bad || r->len - r->pos < n) { r->bad = 1; return 0; }
  return 1;
}
static uint8_t rd_u8(struct rd *r) { return rd_need(r, 1) ? r->p[r->pos++] : 0; }
static uint32_t rd_u32(struct rd *r) {
  if (!rd_need(r, 4)) return 0;
  uint32_t v = rd32(r->p + r->pos);
  r->pos += 4;
  return v;
}
static uint64_t rd_u64(struct rd *r) {
  uint64_t hi = rd_u32(r);
  return (hi << 32) | rd_u32(r);
}
static const uint8_t *rd_bytes(struct rd *r, uint32_t *n) {
  *n = rd_u32(r);
  if (!rd_need(r, *n)) return NULL;
  const uint8_t *p = r->p + r->pos;
  r->pos += *n;
  return p;
}
/* Copy a string field into a fresh NUL-terminated allocation; refuses embedded NULs. */
static char *rd_cstr(struct rd *r, uint32_t max) {
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
/* state                                                               */

struct conn;

struct ring { uint8_t *p; size_t head, len; };

struct proc {
  struct proc *next;
  pid_t pid;
  uint8_t *ps; size_t ps_len;     /* encoded argv: u32 argc, then bytes... */
  int ofd[3];                     /* [S_OUT], [S_ERR] read ends, -1 when closed */
  struct ring ring[3];
  int truncated;
  int ifd;                        /* stdin write end or -1 */
  struct buf ibuf;
  int iclose;                     /* close stdin once ibuf drained */
  int64_t rwin;                   /* stdin credit the daemon still has */
  int exited, status;
  int64_t deadline;               /* after exit: close pipes when idle past this */
  struct conn *conn;              /* attached channel, or NULL */
  uint32_t ch;
  int64_t credit[3];
  uint64_t fin_seq;               /* >0 once finished and unattached */
  int64_t ok_due;                 /* EXEC reply held until exit or this time (now_us); 0 = no reply pending */
  int dead;                       /* free at next sweep */
};

enum { CH_EXEC = 1, CH_READ, CH_WRITE, CH_LIST };

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
  DIR *dir;
  char *dpath;
  uint32_t limit, count;
  uint8_t *pend; size_t pend_len; /* LIST: encoded entry that did not fit */
};

struct conn {
  struct conn *next;
  int fd;
  struct buf in, out;
  size_t fs;                      /* start of the frame being built, relative to out.off */
  int hello;
  int dead;
  struct chan *chans;
  int nchans;
};

static struct conn *conns;
static int nconns;
static struct proc *procs;
static uint64_t fin_counter;
static int listen_fd = -1, sig_fd = -1;
static int is_pid1;
/* Signals not at their default in the agent (its own handlers and SIGPIPE, any it inherited ignored): a child
 * resets just these before exec. */
static int changed_sigs[NSIG];
static int n_changed_sigs;
/* Stdin of commands without a pipe; opened once (close-on-exec), dup2'ed into each child. */
static int devnull_fd = -1;
static unsigned tmp_counter;

/* ------------------------------------------------------------------ */
/* frame output                                                        */

static void put(struct conn *c, const void *d, size_t n) {
  if (c->dead) return;
  if (buf_reserve(&c->out, n)) { c->dead = 1; return; }
  memcpy(buf_tail(&c->out), d, n);
  c->out.len += n;
}
static void put_u8(struct conn *c, uint8_t v) { put(c, &v, 1); }
static void put_u32(struct conn *c, uint32_t v) { uint8_t b[4]; wr_u32(b, v); put(c, b, 4); }
static void put_bytes(struct conn *c, const void *d, size_t n) { put_u32(c, (uint32_t)n); put(c, d, n); }

static void fr_begin(struct conn *c, uint32_t ch, uint8_t type, uint8_t stream) {
  uint8_t h[HDR_LEN] = {0};
  wr_u32(h + 4, ch);
  h[8] = type;
  h[9] = stream;
  c->fs = c->out.len;
  put(c, h, HDR_LEN);
}
static void fr_end(struct conn *c) {
  if (c->dead) return;
  wr_u32(buf_head(&c->out) + c->fs, (uint32_t)(c->out.len - c->fs - HDR_LEN));
}
static void send_simple(struct conn *c, uint32_t ch, uint8_t type, uint8_t stream, const void *d, size_t n) {
  fr_begin(c, ch, type, stream);
  put(c, d, n);
  fr_end(c);
}
static void send_window(struct conn *c, uint32_t ch, uint8_t stream, uint32_t n) {
  uint8_t b[4];
  wr_u32(b, n);
  send_simple(c, ch, FT_WINDOW, stream, b, 4);
}
static void send_error(struct conn *c, uint32_t ch, int err, const char *fmt, ...) {
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

/* ------------------------------------------------------------------ */
/* channels                                                            */

static struct chan *chan_find(struct conn *c, uint32_t id) {
  for (struct chan *ch = c->chans; ch; ch = ch->next)
    if (ch->id == id) return ch;
  return NULL;
}

static struct chan *chan_new(struct conn *c, uint32_t id, int kind) {
  struct chan *ch = calloc(1, sizeof *ch);
  if (!ch) return NULL;
  ch->id = id;
  ch->kind = kind;
  ch->fd = -1;
  ch->next = c->chans;
  c->chans = ch;
  c->nchans++;
  return ch;
}

/* Unlink and release a channel. A process bound to it is detached, never stopped. */
static void chan_free(struct conn *c, struct chan *ch) {
  for (struct chan **pp = &c->chans; *pp; pp = &(*pp)->next)
    if (*pp == ch) { *pp = ch->next; break; }
  c->nchans--;
  if (ch->proc && ch->proc->conn == c && ch->proc->ch == ch->id) ch->proc->conn = NULL;
  if (ch->fd >= 0) close(ch->fd);
  if (ch->tmp) unlink(ch->tmp);
  if (ch->dir) closedir(ch->dir);
  free(ch->tmp);
  free(ch->dst);
  free(ch->dpath);
  free(ch->pend);
  free(ch);
}

/* ------------------------------------------------------------------ */
/* output rings                                                        */

static int ring_alloc(struct ring *r) {
  if (!r->p && !(r->p = malloc(RING_CAP))) return -1;
  return 0;
}
/* Append, dropping the oldest bytes when full. Returns 1 when something was dropped. */
static int ring_push(struct ring *r, const uint8_t *d, size_t n) {
  int dropped = 0;
  if (ring_alloc(r)) return 1;
  if (n >= RING_CAP) { d += n - RING_CAP; n = RING_CAP; r->head = 0; r->len = 0; dropped = 1; }
  if (r->len + n > RING_CAP) {
    size_t drop = r->len + n - RING_CAP;
    r->head = (r->head + drop) % RING_CAP;
    r->len -= drop;
    dropped = 1;
  }
  size_t tail = (r->head + r->len) % RING_CAP;
  size_t first = RING_CAP - tail < n ? RING_CAP - tail : n;
  memcpy(r->p + tail, d, first);
  memcpy(r->p, d + first, n - first);
  r->len += n;
  return dropped;
}

/* ------------------------------------------------------------------ */
/* processes                                                           */

static void proc_close_out(struct proc *p, int s) {
  if (p->ofd[s] >= 0) { close(p->ofd[s]); p->ofd[s] = -1; }
}
static void proc_close_in(struct proc *p) {
  if (p->ifd >= 0) { close(p->ifd); p->ifd = -1; }
  buf_free(&p->ibuf);
}

static void exit_code(int status, int *code, int *sig) {
  *sig = 0;
  if (WIFEXITED(status)) *code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status)) { *sig = WTERMSIG(status); *code = 128 + *sig; }
  else *code = 255;
}

/* Read what the pipe has. Attached: only into free ring space (flow control);
 * detached: always, overwriting the oldest output. */
static void proc_read(struct proc *p, int s) {
  uint8_t tmp[65536];
  struct ring *r = &p->ring[s];
  if (p->ofd[s] < 0) return;
  size_t want = sizeof tmp;
  if (p->conn) {
    want = RING_CAP - r->len;
    if (!want) return;
    if (want > sizeof tmp) want = sizeof tmp;
  }
  ssize_t n = read(p->ofd[s], tmp, want);
  if (n > 0) {
    if (ring_push(r, tmp, (size_t)n)) p->truncated = 1;
    if (p->exited) p->deadline = now_ms() + DRAIN_MS;
  } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
    proc_close_out(p, s);
  }
}

static int proc_finished(struct proc *p) {
  return p->exited && p->ofd[S_OUT] < 0 && p->ofd[S_ERR] < 0;
}

static void send_exec_ok(struct conn *c, uint32_t ch, pid_t pid) {
  uint8_t b[4];
  wr_u32(b, (uint32_t)pid);
  send_simple(c, ch, FT_OK, 0, b, 4);
}

/* Move buffered output to the attached channel while it has credit; send EXIT at the end. */
static void proc_progress(struct proc *p, int64_t now) {
  if (p->dead) return;
  struct conn *c = p->conn;
  if (c && c->dead) c = NULL;
  if (p->ok_due) {
    if (!c) {
      p->ok_due = 0; /* the channel went away: nobody to answer */
    } else {
      /* A short command's reply, output and EXIT leave in one write: one wake-up of the daemon instead of two.
       * A full ring means the output must flow now; the deadline bounds how late a long command's reply is. */
      int full = p->ring[S_OUT].len >= RING_CAP || p->ring[S_ERR].len >= RING_CAP;
      if (!proc_finished(p) && !full && now_us() < p->ok_due) return;
      send_exec_ok(c, p->ch, p->pid);
      p->ok_due = 0;
    }
  }
  if (c) {
    for (int s = S_OUT; s <= S_ERR; s++) {
      struct ring *r = &p->ring[s];
      while (r->len && p->credit[s] > 0 && c->out.len < OUT_HIGH && !c->dead) {
        size_t n = r->len;
        if (n > RING_CAP - r->head) n = RING_CAP - r->head;
        if (n > MAX_DATA) n = MAX_DATA;
        if ((int64_t)n > p->credit[s]) n = (size_t)p->credit[s];
        send_simple(c, p->ch, FT_DATA, (uint8_t)s, r->p + r->head, n);
        r->head = (r->head + n) % RING_CAP;
        r->len -= n;
        p->credit[s] -= (int64_t)n;
      }
    }
  }
  if (p->exited) {
    for (int s = S_OUT; s <= S_ERR; s++) {
      if (p->ofd[s] < 0) continue;
      /* Waiting on credit is not idleness: keep the pipe while the consumer is slow. */
      if (c && p->ring[s].len >= RING_CAP) p->deadline = now + DRAIN_MS;
      else if (now >= p->deadline) {
        proc_read(p, s); /* take what is there now, then give up on the holder */
        proc_close_out(p, s);
      }
    }
  }
  if (!proc_finished(p)) return;
  if (c) {
    if (p->ring[S_OUT].len || p->ring[S_ERR].len || c->dead) return;
    int code, sig;
    exit_code(p->status, &code, &sig);
    fr_begin(c, p->ch, FT_EXIT, 0);
    put_u32(c, (uint32_t)code);
    put_u8(c, (uint8_t)sig);
    put_u8(c, p->truncated ? 1 : 0);
    fr_end(c);
    struct chan *ch = chan_find(c, p->ch);
    if (ch) chan_free(c, ch);
    p->conn = NULL;
    p->dead = 1;
  } else if (!p->fin_seq) {
    p->fin_seq = ++fin_counter;
    proc_close_in(p);
  }
}

static void proc_free(struct proc *p) {
  proc_close_out(p, S_OUT);
  proc_close_out(p, S_ERR);
  proc_close_in(p);
  free(p->ring[S_OUT].p);
  free(p->ring[S_ERR].p);
  free(p->ps);
  free(p);
}

static void reap(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    for (struct proc *p = procs; p; p = p->next) {
      if (p->pid == pid && !p->exited) {
        p->exited = 1;
        p->status = status;
        p->deadline = now_ms() + DRAIN_MS;
        proc_close_in(p);
        break;
      }
    }
  }
}

/* Stdin: write queued bytes, grant the daemon credit for what went out. */
static void proc_write_stdin(struct proc *p) {
  size_t done = 0;
  while (p->ifd >= 0 && p->ibuf.len) {
    ssize_t n = write(p->ifd, buf_head(&p->ibuf), p->ibuf.len);
    if (n > 0) { buf_consume(&p->ibuf, (size_t)n); done += (size_t)n; continue; }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    /* EPIPE or other: the reader is gone; drop the data */
    done += p->ibuf.len;
    buf_consume(&p->ibuf, p->ibuf.len);
    close(p->ifd);
    p->ifd = -1;
  }
  if (p->ifd < 0 && p->ibuf.len) { done += p->ibuf.len; buf_consume(&p->ibuf, p->ibuf.len); }
  if (p->iclose && !p->ibuf.len && p->ifd >= 0) { close(p->ifd); p->ifd = -1; }
  if (done && p->conn && !p->conn->dead) {
    p->rwin += (int64_t)done;
    send_window(p->conn, p->ch, S_IN, (uint32_t)done);
  }
}

/* ------------------------------------------------------------------ */
/* users                                                               */

struct cred { uid_t uid; gid_t gid; gid_t groups[MAX_GROUPS]; int ngroups; };

static char *slurp(const char *path, size_t max) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return NULL;
  struct stat st;
  if (fstat(fd, &st) || !S_ISREG(st.st_mode)) { close(fd); return NULL; }
  char *s = malloc(max + 1);
  size_t len = 0;
  if (s) {
    while (len < max) {
      ssize_t n = read(fd, s + len, max - len);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      len += (size_t)n;
    }
    s[len] = 0;
  }
  close(fd);
  return s;
}

static int parse_id(const char *s, size_t n, uint32_t *out) {
  if (!n || n > 10) return -1;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  if (v > 0xfffffffeu) return -1;
  *out = (uint32_t)v;
  return 0;
}

/* Split one colon-separated line in place; returns the field count. */
static int split_fields(char *line, char **f, int max) {
  int n = 0;
  f[n++] = line;
  for (char *q = line; *q && n < max; q++)
    if (*q == ':') { *q = 0; f[n++] = q + 1; }
  return n;
}

/* Look up the user in /etc/passwd (name or uid); fills name/gid. */
static int passwd_lookup(const char *name, int by_uid, uint32_t uid, char *oname, size_t onsz, uint32_t *ouid, uint32_t *ogid) {
  char *data = slurp("/etc/passwd", 4u << 20);
  if (!data) return -1;
  int found = -1;
  for (char *line = data, *next; line && *line; line = next) {
    next = strchr(line, '\n');
    if (next) *next++ = 0;
    char *f[8];
    if (split_fields(line, f, 8) < 4) continue;
    uint32_t u, g;
    if (parse_id(f[2], strlen(f[2]), &u) || parse_id(f[3], strlen(f[3]), &g)) continue;
    if (by_uid ? u == uid : strcmp(f[0], name) == 0) {
      snprintf(oname, onsz, "%s", f[0]);
      *ouid = u;
      *ogid = g;
      found = 0;
      break;
    }
  }
  free(data);
  return found;
}

/* Resolve a group name to a gid, and collect supplementary groups of user. */
static int group_scan(const char *gname, uint32_t *ogid, const char *user, struct cred *cr) {
  char *data = slurp("/etc/group", 4u << 20);
  if (!data) return gname ? -1 : 0;
  int found = gname ? -1 : 0;
  for (char *line = data, *next; line && *line; line = next) {
    next = strchr(line, '\n');
    if (next) *next++ = 0;
    char *f[5];
    if (split_fields(line, f, 5) < 4) continue;
    uint32_t g;
    if (parse_id(f[2], strlen(f[2]), &g)) continue;
    if (gname && strcmp(f[0], gname) == 0 && found) { *ogid = g; found = 0; }
    if (user && *user && cr && cr->ngroups < MAX_GROUPS) {
      for (char *m = f[3], *mn; m; m = mn) {
        mn = strchr(m, ',');
        if (mn) *mn++ = 0;
        if (strcmp(m, user) == 0) {
          int dup = 0;
          for (int i = 0; i < cr->ngroups; i++) dup |= cr->groups[i] == g;
          if (!dup) cr->groups[cr->ngroups++] = g;
          break;
        }
      }
    }
  }
  free(data);
  return found;
}

/* spec: name | uid | name:group | uid:gid. Returns 0 or sets msg. */
static int resolve_user(const char *spec, struct cred *cr, char *msg, size_t msz) {
  char upart[256], gpart[256] = "";
  const char *colon = strchr(spec, ':');
  size_t ulen = colon ? (size_t)(colon - spec) : strlen(spec);
  if (ulen == 0 || ulen >= sizeof upart || (colon && strlen(colon + 1) >= sizeof gpart)) {
    snprintf(msg, msz, "invalid user \"%.200s\"", spec);
    return -1;
  }
  memcpy(upart, spec, ulen);
  upart[ulen] = 0;
  if (colon) snprintf(gpart, sizeof gpart, "%s", colon + 1);

  char name[256] = "";
  uint32_t uid, gid = 0, pu, pg;
  if (parse_id(upart, ulen, &uid) == 0) {
    if (passwd_lookup(NULL, 1, uid, name, sizeof name, &pu, &pg) == 0) gid = pg;
  } else {
    if (passwd_lookup(upart, 0, 0, name, sizeof name, &uid, &gid)) {
      snprintf(msg, msz, "unknown user \"%s\" (not in the sandbox's /etc/passwd)", upart);
      return -1;
    }
  }
  cr->uid = uid;
  cr->ngroups = 0;
  if (gpart[0]) {
    if (parse_id(gpart, strlen(gpart), &gid) && group_scan(gpart, &gid, NULL, NULL)) {
      snprintf(msg, msz, "unknown group \"%s\" (not in the sandbox's /etc/group)", gpart);
      return -1;
    }
  }
  cr->gid = gid;
  cr->groups[cr->ngroups++] = gid;
  group_scan(NULL, NULL, name, cr);
  return 0;
}

/* ------------------------------------------------------------------ */
/* exec                                                                */

/*
 * Commands start with clone(CLONE_VM | CLONE_VFORK): the child borrows our memory until it execs, and we
 * wait meanwhile. A fork copied the page tables, then paid for their teardown at exec, copy-on-write
 * faults in the agent and the TLB flushes between CPUs; that was most of the agent's kernel time per
 * command. Sharing memory has rules, kept by child_main: it touches only its own stack and `struct spawn`,
 * calls nothing that takes libc locks or changes libc state (raw syscalls where libc would), and ends in
 * execve or _exit. Its failure before exec is written into `struct spawn`, which we read once it is gone.
 */
enum { STAGE_CRED = 1, STAGE_CWD, STAGE_EXEC, STAGE_STDIO };

struct spawn {
  char **argv, **envp;
  const char *cwd;                /* "" = / */
  int infd, outfd, errfd;         /* become 0, 1, 2 */
  const struct cred *cr;          /* NULL: keep the agent's */
  volatile int32_t stage, err;    /* set by the child when it fails before exec */
  cpu_set_t cpus;                 /* the agent's own CPUs, for the child to take back before exec */
  int pinned;
};

/* The kernel's struct sigaction on x86_64 and aarch64; zeroed = SIG_DFL, no flags, empty mask. */
struct ksigaction { void *handler; unsigned long flags; void *restorer; uint64_t mask; };

/* One child is between clone and exec at a time (we wait for it), so one stack serves all. */
static uint8_t child_stack[64 * 1024] __attribute__((aligned(16)));

static void child_fail(struct spawn *s, int stage, int err) {
  s->stage = stage;
  s->err = err;
  _exit(127);
}

static void child_exec(struct spawn *s) {
  char **argv = s->argv, **envp = s->envp;
  const char *file = argv[0];
  if (strchr(file, '/')) {
    execve(file, argv, envp);
    child_fail(s, STAGE_EXEC, errno);
  }
  const char *path = NULL;
  for (char **e = envp; *e; e++)
    if (strncmp(*e, "PATH=", 5) == 0) path = *e + 5;
  if (!path) path = DEFAULT_PATH;
  int seen_eacces = 0;
  size_t flen = strlen(file);
  char full[PATH_MAX];
  for (const char *p = path;; ) {
    const char *end = strchr(p, ':');
    size_t dlen = end ? (size_t)(end - p) : strlen(p);
    if (dlen + 1 + flen < sizeof full) {
      if (dlen) { memcpy(full, p, dlen); full[dlen] = '/'; memcpy(full + dlen + 1, file, flen + 1); }
      else memcpy(full, file, flen + 1);
      execve(full, argv, envp);
      if (errno == EACCES) seen_eacces = 1;
      else if (errno != ENOENT && errno != ENOTDIR && errno != ELOOP && errno != ENAMETOOLONG)
        child_fail(s, STAGE_EXEC, errno);
    }
    if (!end) break;
    p = end + 1;
  }
  child_fail(s, STAGE_EXEC, seen_eacces ? EACCES : ENOENT);
}

static int child_main(void *arg) {
  struct spawn *s = arg;
  /* All signals are blocked (the parent did it before clone): reset the dispositions the agent changed,
   * then unblock. Only those: a loop over all 64 was 64 seccomp-filtered syscalls per command. */
  struct ksigaction dfl = {0};
  for (int i = 0; i < n_changed_sigs; i++) syscall(SYS_rt_sigaction, changed_sigs[i], &dfl, NULL, 8);
  uint64_t none = 0;
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, 8);
  syscall(SYS_setsid);
  if (s->pinned) syscall(SYS_sched_setaffinity, 0, sizeof s->cpus, &s->cpus);
  /* dup3 (dup2 is missing on aarch64); the sources are never 0-2, which the agent keeps open. */
  if (syscall(SYS_dup3, s->infd, 0, 0) < 0 || syscall(SYS_dup3, s->outfd, 1, 0) < 0 || syscall(SYS_dup3, s->errfd, 2, 0) < 0)
    child_fail(s, STAGE_STDIO, errno);
  /* setgroups/setgid/setuid through libc would synchronise threads under a lock; we have one thread. */
  if (s->cr && (syscall(SYS_setgroups, (size_t)s->cr->ngroups, s->cr->groups) || syscall(SYS_setgid, s->cr->gid) ||
                syscall(SYS_setuid, s->cr->uid)))
    child_fail(s, STAGE_CRED, errno);
  if (syscall(SYS_chdir, s->cwd[0] ? s->cwd : "/")) child_fail(s, STAGE_CWD, errno);
  child_exec(s);
  _exit(127);
}

/*
 * Starts the child; returns its pid (s->stage says whether it got as far as exec), or -1 with errno.
 *
 * The child is created on the CPU we run on: left to itself, the kernel places a new task on the idlest
 * CPU, and waking a CPU that sleeps costs far more than the work of a short command when the machine is a
 * VM (an interrupt to a halted virtual CPU), twice per command (its start, and its exit waking us there).
 * We are blocked until it execs anyway. It takes back our full CPU set before exec, so what runs is
 * scheduled as before; only where it starts changes.
 */
static pid_t spawn_child(struct spawn *s) {
  sigset_t all, old;
  sigfillset(&all);
  /* No handler of ours may run in the child, on memory it shares with us, before it reset them. */
  sigprocmask(SIG_BLOCK, &all, &old);
  int cpu = sched_getcpu();
  cpu_set_t here;
  CPU_ZERO(&here);
  if (cpu >= 0 && cpu < CPU_SETSIZE) CPU_SET(cpu, &here);
  s->pinned = cpu >= 0 && cpu < CPU_SETSIZE && sched_getaffinity(0, sizeof s->cpus, &s->cpus) == 0 &&
              sched_setaffinity(0, sizeof here, &here) == 0;
  pid_t pid = clone(child_main, child_stack + sizeof child_stack, CLONE_VM | CLONE_VFORK | SIGCHLD, s);
  int err = errno;
  if (s->pinned) sched_setaffinity(0, sizeof s->cpus, &s->cpus);
  sigprocmask(SIG_SETMASK, &old, NULL);
  errno = err;
  return pid;
}

/* The parent's ends of a command's pipes: pipe2 made them close-on-exec already, so one fcntl, not three. */
static int set_nonblock(int fd) {
  return fcntl(fd, F_SETFL, O_RDONLY | O_NONBLOCK);
}

static int set_nonblock_cloexec(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
  return fcntl(fd, F_SETFD, FD_CLOEXEC);
}

static int count_running(void) {
  int n = 0;
  for (struct proc *p = procs; p; p = p->next) n += !p->exited && !p->dead;
  return n;
}

static void handle_exec(struct conn *c, uint32_t id, struct rd *r) {
  uint8_t flags = rd_u8(r);
  char *cwd = rd_cstr(r, PATH_MAX - 1);
  char *user = rd_cstr(r, 511);
  uint32_t argc = rd_u32(r);
  char **argv = NULL, **envp = NULL;
  uint32_t envc = 0;
  char msg[512];
  int perr = 0, pout[2] = {-1, -1}, perr2[2] = {-1, -1}, pin[2] = {-1, -1};

  if (r->bad || argc == 0 || argc > MAX_ARGS) goto bad;
  argv = calloc(argc + 1, sizeof *argv);
  if (!argv) goto bad;
  for (uint32_t i = 0; i < argc; i++)
    if (!(argv[i] = rd_cstr(r, MAX_PAYLOAD))) goto bad;
  envc = rd_u32(r);
  if (r->bad || envc > MAX_ARGS) goto bad;
  envp = calloc(envc + 1, sizeof *envp);
  if (!envp) goto bad;
  for (uint32_t i = 0; i < envc; i++)
    if (!(envp[i] = rd_cstr(r, MAX_PAYLOAD))) goto bad;
  if (!argv[0][0]) { send_error(c, id, EINVAL, "empty command"); goto out; }
  if (cwd[0] && cwd[0] != '/') { send_error(c, id, EINVAL, "cwd must be an absolute path: %.200s", cwd); goto out; }
  if (count_running() >= MAX_RUNNING) { send_error(c, id, EAGAIN, "too many processes (%d running)", MAX_RUNNING); goto out; }

  struct cred cr;
  int have_cred = 0;
  if (user[0]) {
    if (resolve_user(user, &cr, msg, sizeof msg)) { send_error(c, id, EINVAL, "%s", msg); goto out; }
    have_cred = 1;
  }

  if (pipe2(pout, O_CLOEXEC) || pipe2(perr2, O_CLOEXEC) ||
      ((flags & EXEC_STDIN_PIPE) && pipe2(pin, O_CLOEXEC))) {
    perr = errno;
    send_error(c, id, perr, "pipe: %s", strerror(perr));
    goto out;
  }
  if (devnull_fd < 0) devnull_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int infd = (flags & EXEC_STDIN_PIPE) ? pin[0] : devnull_fd;
  if (infd < 0) {
    perr = errno ? errno : EBADF;
    send_error(c, id, perr, "cannot open /dev/null: %s", strerror(perr));
    goto out;
  }
  struct spawn sp = { .argv = argv, .envp = envp, .cwd = cwd, .infd = infd, .outfd = pout[1], .errfd = perr2[1],
                      .cr = have_cred ? &cr : NULL };
  pid_t pid = spawn_child(&sp);
  if (pid < 0) {
    perr = errno;
    send_error(c, id, perr, "clone: %s", strerror(perr));
    goto out;
  }
  close(pout[1]); pout[1] = -1;
  close(perr2[1]); perr2[1] = -1;
  if (pin[0] >= 0) { close(pin[0]); pin[0] = -1; }
  if (sp.stage) {
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    int stage = sp.stage, err = sp.err;
    const char *what = stage == STAGE_CRED ? "cannot switch to user" :
                       stage == STAGE_CWD ? "cannot enter working directory" :
                       stage == STAGE_STDIO ? "cannot set up stdio" : "cannot execute";
    const char *obj = stage == STAGE_CRED ? user : stage == STAGE_CWD ? (cwd[0] ? cwd : "/") : argv[0];
    send_error(c, id, err, "%s %.300s: %s", what, obj,
               stage == STAGE_EXEC && err == ENOENT ? "command not found" : strerror(err));
    goto out;
  }
  struct proc *p = calloc(1, sizeof *p);
  struct chan *ch = p ? chan_new(c, id, CH_EXEC) : NULL;
  if (!p || !ch) {
    free(p);
    kill(-pid, SIGKILL);
    send_error(c, id, ENOMEM, "out of memory");
    goto out; /* the child is reaped by the SIGCHLD loop */
  }
  p->pid = pid;
  p->ofd[S_IN] = -1;
  p->ofd[S_OUT] = pout[0]; pout[0] = -1;
  p->ofd[S_ERR] = perr2[0]; perr2[0] = -1;
  p->ifd = pin[1]; pin[1] = -1;
  set_nonblock(p->ofd[S_OUT]);
  set_nonblock(p->ofd[S_ERR]);
  if (p->ifd >= 0) fcntl(p->ifd, F_SETFL, O_WRONLY | O_NONBLOCK);
  p->rwin = INIT_WINDOW;
  p->credit[S_OUT] = p->credit[S_ERR] = INIT_WINDOW;
  p->conn = c;
  p->ch = id;
  /* remember a bounded copy of argv for PS */
  {
    size_t total = 4;
    uint32_t keep = 0;
    for (uint32_t i = 0; i < argc; i++) {
      size_t l = strlen(argv[i]);
      if (total + 4 + l > PS_ARGV_MAX) break;
      total += 4 + l;
      keep++;
    }
    p->ps = malloc(total);
    if (p->ps) {
      size_t o = 4;
      wr_u32(p->ps, keep);
      for (uint32_t i = 0; i < keep; i++) {
        size_t l = strlen(argv[i]);
        wr_u32(p->ps + o, (uint32_t)l);
        memcpy(p->ps + o + 4, argv[i], l);
        o += 4 + l;
      }
      p->ps_len = total;
    }
  }
  ch->proc = p;
  p->next = procs;
  procs = p;
  /* Without a stdin pipe the daemon has nothing to send before the exit, so it may ask us to hold the reply. */
  if ((flags & (EXEC_STDIN_PIPE | EXEC_HOLD_REPLY)) == EXEC_HOLD_REPLY) p->ok_due = now_us() + HOLD_US;
  else send_exec_ok(c, id, pid);
  goto out;

bad:
  c->dead = 1; /* malformed request */
out:
  for (int i = 0; i < 2; i++) {
    if (pout[i] >= 0) close(pout[i]);
    if (perr2[i] >= 0) close(perr2[i]);
    if (pin[i] >= 0) close(pin[i]);
  }
  if (argv) for (uint32_t i = 0; i < argc; i++) free(argv[i]);
  if (envp) for (uint32_t i = 0; i < envc; i++) free(envp[i]);
  free(argv);
  free(envp);
  free(cwd);
  free(user);
}

static void handle_attach(struct conn *c, uint32_t id, struct rd *r) {
  uint32_t pid = rd_u32(r);
  if (r->bad) { c->dead = 1; return; }
  struct proc *p;
  for (p = procs; p; p = p->next)
    if ((uint32_t)p->pid == pid && !p->dead) break;
  if (!p) { send_error(c, id, ESRCH, "no process %u started by the agent", pid); return; }
  struct chan *ch = chan_new(c, id, CH_EXEC);
  if (!ch) { send_error(c, id, ENOMEM, "out of memory"); return; }
  if (p->conn) {
    struct conn *oc = p->conn;
    struct chan *och = chan_find(oc, p->ch);
    if (!oc->dead) send_error(oc, p->ch, ECANCELED, "process %u was attached by another channel", pid);
    if (och) chan_free(oc, och);
    p->conn = NULL;
  }
  p->conn = c;
  p->ch = id;
  p->fin_seq = 0;
  p->ok_due = 0; /* the EXEC channel that waited for it got ECANCELED above */
  p->credit[S_OUT] = p->credit[S_ERR] = INIT_WINDOW;
  p->rwin = INIT_WINDOW;
  p->iclose = 0;
  buf_consume(&p->ibuf, p->ibuf.len); /* stdin queued by an earlier connection is dropped */
  ch->proc = p;
  fr_begin(c, id, FT_OK, 0);
  put_u32(c, (uint32_t)p->pid);
  put_u8(c, (uint8_t)((p->truncated ? 1 : 0) | (p->exited ? 2 : 0) | (p->ifd >= 0 ? 4 : 0)));
  fr_end(c);
}

static void handle_ps(struct conn *c, uint32_t id) {
  uint32_t count = 0;
  fr_begin(c, id, FT_OK, 0);
  size_t count_at = c->out.len;
  put_u32(c, 0);
  put_u8(c, 0);
  for (struct proc *p = procs; p; p = p->next) {
    if (p->dead) continue;
    if (c->out.len - c->fs + 64 + p->ps_len > MAX_PAYLOAD) {
      if (!c->dead) buf_head(&c->out)[count_at + 4] = 1; /* truncated */
      break;
    }
    int code = 0, sig = 0;
    if (p->exited) exit_code(p->status, &code, &sig);
    put_u32(c, (uint32_t)p->pid);
    put_u8(c, p->exited ? 1 : 0);
    put_u32(c, (uint32_t)code);
    if (p->ps) put(c, p->ps, p->ps_len);
    else put_u32(c, 0);
    count++;
  }
  if (!c->dead) wr_u32(buf_head(&c->out) + count_at, count);
  fr_end(c);
}

/* ------------------------------------------------------------------ */
/* files                                                               */

/* Read an absolute path field. Returns NULL and sends an error when invalid. */
static char *get_path(struct conn *c, uint32_t id, struct rd *r) {
  uint32_t n;
  const uint8_t *p = rd_bytes(r, &n);
  if (!p) { c->dead = 1; return NULL; }
  if (n == 0 || p[0] != '/') { send_error(c, id, EINVAL, "path must be absolute"); return NULL; }
  if (memchr(p, 0, n)) { send_error(c, id, EINVAL, "path contains a NUL byte"); return NULL; }
  if (n >= PATH_MAX) { send_error(c, id, ENAMETOOLONG, "path is too long"); return NULL; }
  char *s = malloc(n + 1);
  if (!s) { send_error(c, id, ENOMEM, "out of memory"); return NULL; }
  memcpy(s, p, n);
  s[n] = 0;
  return s;
}

static int is_root_path(const char *p) {
  for (; *p; p++) if (*p != '/') return 0;
  return 1;
}

static uint8_t mode_type(mode_t m) {
  if (S_ISREG(m)) return T_FILE;
  if (S_ISDIR(m)) return T_DIR;
  if (S_ISLNK(m)) return T_SYMLINK;
  if (S_ISFIFO(m)) return T_FIFO;
  if (S_ISSOCK(m)) return T_SOCKET;
  if (S_ISCHR(m)) return T_CHAR;
  if (S_ISBLK(m)) return T_BLOCK;
  return T_UNKNOWN;
}

/* Encode one entry (lstat semantics) into out; returns its length or 0 when it vanished. */
static size_t encode_entry(uint8_t *out, int dirfd, const char *name, const char *shown) {
  struct stat st;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW)) return 0;
  size_t nl = strlen(shown);
  if (nl > 512) nl = 512;
  uint8_t *o = out;
  *o++ = mode_type(st.st_mode);
  wr_u32(o, (uint32_t)st.st_mode); o += 4;
  wr_u64(o, (uint64_t)st.st_size); o += 8;
  int64_t ms = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
  wr_u64(o, (uint64_t)ms); o += 8;
  wr_u32(o, (uint32_t)nl); o += 4;
  memcpy(o, shown, nl); o += nl;
  ssize_t tl = 0;
  if (S_ISLNK(st.st_mode)) {
    tl = readlinkat(dirfd, name, (char *)o + 4, TARGET_MAX);
    if (tl < 0) tl = 0;
  }
  wr_u32(o, (uint32_t)tl); o += 4 + tl;
  return (size_t)(o - out);
}

static void handle_stat(struct conn *c, uint32_t id, struct rd *r) {
  char *path = get_path(c, id, r);
  if (!path) return;
  const char *base = strrchr(path, '/') + 1;
  uint8_t *e = malloc(ENTRY_MAX);
  if (!e) { send_error(c, id, ENOMEM, "out of memory"); free(path); return; }
  size_t n = encode_entry(e, AT_FDCWD, path, *base ? base : "/");
  if (!n) send_error(c, id, errno, "stat %.300s: %s", path, strerror(errno));
  else send_simple(c, id, FT_OK, 0, e, n);
  free(e);
  free(path);
}

static void handle_read(struct conn *c, uint32_t id, struct rd *r) {
  uint64_t max = rd_u64(r);
  char *path = get_path(c, id, r);
  if (!path) return;
  struct stat st;
  int fd = -1;
  if (stat(path, &st)) { send_error(c, id, errno, "%.300s: %s", path, strerror(errno)); goto out; }
  if (S_ISDIR(st.st_mode)) { send_error(c, id, EISDIR, "%.300s is a directory", path); goto out; }
  if (!S_ISREG(st.st_mode)) { send_error(c, id, EINVAL, "%.300s is not a regular file", path); goto out; }
  fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) { send_error(c, id, errno, "open %.300s: %s", path, strerror(errno)); goto out; }
  if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
    send_error(c, id, S_ISDIR(st.st_mode) ? EISDIR : EINVAL, "%.300s is not a regular file", path);
    goto out;
  }
  struct chan *ch = chan_new(c, id, CH_READ);
  if (!ch) { send_error(c, id, ENOMEM, "out of memory"); goto out; }
  ch->fd = fd;
  fd = -1;
  ch->credit = INIT_WINDOW;
  ch->remaining = max ? max : UINT64_MAX;
  uint8_t b[8];
  wr_u64(b, (uint64_t)st.st_size);
  send_simple(c, id, FT_OK, 0, b, 8);
out:
  if (fd >= 0) close(fd);
  free(path);
}

/* Produce read data while there is credit. Returns 1 if it could do more. */
static int pump_read(struct conn *c, struct chan *ch) {
  for (int i = 0; i < 8; i++) {
    if (ch->credit <= 0 || c->out.len >= OUT_HIGH || c->dead) return 0;
    size_t want = MAX_DATA;
    if ((int64_t)want > ch->credit) want = (size_t)ch->credit;
    if (want > ch->remaining) want = (size_t)ch->remaining;
    if (!want) { send_simple(c, ch->id, FT_END, 0, NULL, 0); chan_free(c, ch); return 0; }
    if (buf_reserve(&c->out, HDR_LEN + want)) { c->dead = 1; return 0; }
    fr_begin(c, ch->id, FT_DATA, S_OUT);
    ssize_t n = read(ch->fd, buf_tail(&c->out), want);
    if (n < 0 && errno == EINTR) { c->out.len -= HDR_LEN; continue; }
    if (n <= 0) {
      int e = errno;
      c->out.len -= HDR_LEN;
      if (n == 0) send_simple(c, ch->id, FT_END, 0, NULL, 0);
      else send_error(c, ch->id, e, "read: %s", strerror(e));
      chan_free(c, ch);
      return 0;
    }
    c->out.len += (size_t)n;
    fr_end(c);
    ch->credit -= n;
    ch->remaining -= (uint64_t)n;
  }
  return ch->credit > 0;
}

static int mkdir_p(char *path) {
  size_t len = strlen(path);
  for (size_t i = 1; i <= len; i++) {
    if (path[i] != '/' && path[i] != 0) continue;
    if (path[i - 1] == '/') continue;
    char save = path[i];
    path[i] = 0;
    int rc = mkdir(path, 0755);
    int e = errno;
    if (rc && e == EEXIST) {
      struct stat st;
      if (stat(path, &st) == 0 && !S_ISDIR(st.st_mode)) e = save ? ENOTDIR : EEXIST;
      else rc = 0;
    }
    path[i] = save;
    if (rc) { errno = e; return -1; }
  }
  return 0;
}

static void handle_mkdir(struct conn *c, uint32_t id, struct rd *r) {
  char *path = get_path(c, id, r);
  if (!path) return;
  if (mkdir_p(path)) send_error(c, id, errno, "mkdir %.300s: %s", path, strerror(errno));
  else send_simple(c, id, FT_OK, 0, NULL, 0);
  free(path);
}

static void handle_write(struct conn *c, uint32_t id, struct rd *r) {
  uint32_t mode = rd_u32(r) & 07777;
  char *path = get_path(c, id, r);
  if (!path) return;
  char *slash = strrchr(path, '/');
  struct stat st;
  char *tmp = NULL;
  if (!slash[1]) { send_error(c, id, EISDIR, "%.300s names a directory", path); goto out; }
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) { send_error(c, id, EISDIR, "%.300s is a directory", path); goto out; }
  if (slash != path) {
    *slash = 0;
    int rc = mkdir_p(path);
    int e = errno;
    *slash = '/';
    if (rc) { send_error(c, id, e, "cannot create parent directory of %.300s: %s", path, strerror(e)); goto out; }
  }
  size_t dl = (size_t)(slash - path);
  tmp = malloc(dl + 64);
  if (!tmp) { send_error(c, id, ENOMEM, "out of memory"); goto out; }
  memcpy(tmp, path, dl);
  snprintf(tmp + dl, 64, "/.capsule-write-%d-%u", (int)getpid(), ++tmp_counter);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) { send_error(c, id, errno, "create %.300s: %s", path, strerror(errno)); goto out; }
  fchmod(fd, mode);
  struct chan *ch = chan_new(c, id, CH_WRITE);
  if (!ch) { close(fd); unlink(tmp); send_error(c, id, ENOMEM, "out of memory"); goto out; }
  ch->fd = fd;
  ch->tmp = tmp;
  ch->dst = path;
  ch->rwin = INIT_WINDOW;
  send_simple(c, id, FT_OK, 0, NULL, 0);
  return;
out:
  free(tmp);
  free(path);
}

static void write_data(struct conn *c, struct chan *ch, const uint8_t *d, size_t n) {
  size_t off = 0;
  while (off < n) {
    ssize_t w = write(ch->fd, d + off, n - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int e = w < 0 ? errno : EIO;
      send_error(c, ch->id, e, "write %.300s: %s", ch->dst, strerror(e));
      chan_free(c, ch);
      return;
    }
    off += (size_t)w;
  }
  ch->written += n;
  ch->rwin += (int64_t)n;
  send_window(c, ch->id, S_IN, (uint32_t)n);
}

static void write_finish(struct conn *c, struct chan *ch) {
  int fd = ch->fd;
  ch->fd = -1;
  if (close(fd)) { send_error(c, ch->id, errno, "write %.300s: %s", ch->dst, strerror(errno)); chan_free(c, ch); return; }
  if (rename(ch->tmp, ch->dst)) {
    send_error(c, ch->id, errno, "rename onto %.300s: %s", ch->dst, strerror(errno));
    chan_free(c, ch);
    return;
  }
  free(ch->tmp);
  ch->tmp = NULL;
  uint8_t b[8];
  wr_u64(b, ch->written);
  send_simple(c, ch->id, FT_END, 0, b, 8);
  chan_free(c, ch);
}

static void handle_list(struct conn *c, uint32_t id, struct rd *r) {
  uint32_t limit = rd_u32(r);
  char *path = get_path(c, id, r);
  if (!path) return;
  if (limit == 0 || limit > MAX_LIST) limit = MAX_LIST;
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) { send_error(c, id, errno, "%.300s: %s", path, strerror(errno)); free(path); return; }
  DIR *d = fdopendir(fd);
  struct chan *ch = d ? chan_new(c, id, CH_LIST) : NULL;
  uint8_t *pend = ch ? malloc(ENTRY_MAX) : NULL;
  if (!pend) {
    if (ch) chan_free(c, ch);
    if (d) closedir(d); else close(fd);
    send_error(c, id, ENOMEM, "out of memory");
    free(path);
    return;
  }
  ch->dir = d;
  ch->dpath = path;
  ch->limit = limit;
  ch->credit = INIT_WINDOW;
  ch->pend = pend;
  send_simple(c, id, FT_OK, 0, NULL, 0);
}

/* Fill ENTRIES frames from the directory while there is credit. */
static int pump_list(struct conn *c, struct chan *ch) {
  for (int round = 0; round < 4; round++) {
    if (ch->credit <= 0 || c->out.len >= OUT_HIGH || c->dead) return 0;
    size_t budget = MAX_DATA;
    if ((int64_t)budget > ch->credit) budget = (size_t)ch->credit;
    fr_begin(c, ch->id, FT_ENTRIES, S_OUT);
    size_t count_at = c->out.len;
    put_u32(c, 0);
    uint32_t n = 0;
    int done = 0, truncated = 0;
    for (;;) {
      if (!ch->pend_len) {
        if (ch->count >= ch->limit) {
          /* limit reached: is there anything left? */
          for (;;) {
            errno = 0;
            struct dirent *de = readdir(ch->dir);
            if (!de) break;
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) { truncated = 1; break; }
          }
          done = 1;
          break;
        }
        errno = 0;
        struct dirent *de = readdir(ch->dir);
        if (!de) { done = 1; break; }
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        ch->pend_len = encode_entry(ch->pend, dirfd(ch->dir), de->d_name, de->d_name);
        if (!ch->pend_len) continue;
      }
      if (c->out.len - count_at + ch->pend_len > budget) break;
      put(c, ch->pend, ch->pend_len);
      ch->pend_len = 0;
      ch->count++;
      n++;
    }
    if (c->dead) return 0;
    if (n) {
      wr_u32(buf_head(&c->out) + count_at, n);
      fr_end(c);
      ch->credit -= (int64_t)(c->out.len - count_at);
    } else {
      c->out.len = c->fs; /* nothing fit: drop the empty frame */
    }
    if (done) {
      uint8_t t = (uint8_t)truncated;
      send_simple(c, ch->id, FT_END, 0, &t, 1);
      chan_free(c, ch);
      return 0;
    }
    if (!n) return 0;
  }
  return ch->credit > 0;
}

static int rm_tree(int dfd, int depth) {
  if (depth > RM_DEPTH) { close(dfd); errno = ENAMETOOLONG; return -1; }
  DIR *d = fdopendir(dfd);
  if (!d) { int e = errno; close(dfd); errno = e; return -1; }
  int err = 0;
  for (int pass = 0; pass < 8; pass++) {
    int removed = 0;
    struct dirent *de;
    rewinddir(d);
    while ((de = readdir(d))) {
      if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
      struct stat st;
      if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW)) continue;
      if (S_ISDIR(st.st_mode)) {
        int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0) { err = errno; continue; }
        if (rm_tree(sub, depth + 1)) { err = errno; continue; }
        if (unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR)) { err = errno; continue; }
      } else if (unlinkat(dirfd(d), de->d_name, 0)) {
        err = errno;
        continue;
      }
      removed++;
    }
    if (!removed) break;
  }
  closedir(d);
  if (err) { errno = err; return -1; }
  return 0;
}

static void handle_remove(struct conn *c, uint32_t id, struct rd *r) {
  uint8_t flags = rd_u8(r);
  char *path = get_path(c, id, r);
  if (!path) return;
  struct stat st;
  if (is_root_path(path)) { send_error(c, id, EINVAL, "refusing to remove /"); goto out; }
  if (lstat(path, &st)) { send_error(c, id, errno, "%.300s: %s", path, strerror(errno)); goto out; }
  if (S_ISDIR(st.st_mode)) {
    if (flags & 1) {
      int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0 || rm_tree(fd, 0)) { send_error(c, id, errno, "remove %.300s: %s", path, strerror(errno)); goto out; }
    }
    if (rmdir(path)) { send_error(c, id, errno, "remove %.300s: %s", path, strerror(errno)); goto out; }
  } else if (unlink(path)) {
    send_error(c, id, errno, "remove %.300s: %s", path, strerror(errno));
    goto out;
  }
  send_simple(c, id, FT_OK, 0, NULL, 0);
out:
  free(path);
}

static void handle_rename(struct conn *c, uint32_t id, struct rd *r) {
  char *from = get_path(c, id, r);
  if (!from) return;
  char *to = get_path(c, id, r);
  if (to) {
    if (rename(from, to)) send_error(c, id, errno, "rename %.300s -> %.300s: %s", from, to, strerror(errno));
    else send_simple(c, id, FT_OK, 0, NULL, 0);
  }
  free(from);
  free(to);
}

/* ------------------------------------------------------------------ */
/* frame dispatch                                                      */

static void handle_frame(struct conn *c, uint32_t id, uint8_t type, uint8_t stream, const uint8_t *p, uint32_t len) {
  struct rd r = { p, len, 0, 0 };
  if (!c->hello) {
    if (type != FT_HELLO || id != 0) { c->dead = 1; return; }
    uint32_t ver = rd_u32(&r);
    if (r.bad) { c->dead = 1; return; }
    c->hello = 1;
    fr_begin(c, 0, FT_HELLO, 0);
    put_u32(c, PROTO_VERSION);
    put_bytes(c, AGENT_VERSION, strlen(AGENT_VERSION));
    put_u32(c, MAX_PAYLOAD);
    put_u32(c, INIT_WINDOW);
    fr_end(c);
    if (ver != PROTO_VERSION) c->dead = 1; /* the daemon sees our version, then EOF */
    return;
  }
  if (id == 0) { c->dead = 1; return; }
  struct chan *ch = chan_find(c, id);
  if (type < FT_OK) {
    /* opens a channel */
    if (ch) { c->dead = 1; return; }
    if (c->nchans >= MAX_CHANS) { send_error(c, id, EMFILE, "too many open channels"); return; }
    switch (type) {
      case FT_PING: send_simple(c, id, FT_OK, 0, AGENT_VERSION, strlen(AGENT_VERSION)); break;
      case FT_EXEC: handle_exec(c, id, &r); break;
      case FT_ATTACH: handle_attach(c, id, &r); break;
      case FT_PS: handle_ps(c, id); break;
      case FT_READ: handle_read(c, id, &r); break;
      case FT_WRITE: handle_write(c, id, &r); break;
      case FT_LIST: handle_list(c, id, &r); break;
      case FT_STAT: handle_stat(c, id, &r); break;
      case FT_MKDIR: handle_mkdir(c, id, &r); break;
      case FT_REMOVE: handle_remove(c, id, &r); break;
      case FT_RENAME: handle_rename(c, id, &r); break;
      default: send_error(c, id, ENOSYS, "request type 0x%02x not supported by %s", type, AGENT_VERSION); break;
    }
    return;
  }
  if (!ch) return; /* late frame for a finished channel */
  struct proc *pr = ch->kind == CH_EXEC ? ch->proc : NULL;
  switch (type) {
    case FT_WINDOW: {
      uint32_t n = rd_u32(&r);
      if (r.bad) { c->dead = 1; return; }
      int64_t *cr = NULL;
      if (pr && (stream == S_OUT || stream == S_ERR)) cr = &pr->credit[stream];
      else if ((ch->kind == CH_READ || ch->kind == CH_LIST) && stream == S_OUT) cr = &ch->credit;
      if (!cr) return;
      *cr += n;
      if (*cr > (int64_t)MAX_WINDOW) c->dead = 1;
      return;
    }
    case FT_DATA:
      if (stream != S_IN) { c->dead = 1; return; }
      if (ch->kind == CH_WRITE) {
        if ((int64_t)len > ch->rwin) { c->dead = 1; return; }
        ch->rwin -= len;
        write_data(c, ch, p, len);
      } else if (pr) {
        if ((int64_t)len > pr->rwin) { c->dead = 1; return; }
        pr->rwin -= len;
        if (pr->ifd < 0 || pr->iclose) { pr->rwin += len; send_window(c, id, S_IN, len); return; }
        if (buf_reserve(&pr->ibuf, len)) { c->dead = 1; return; }
        memcpy(buf_tail(&pr->ibuf), p, len);
        pr->ibuf.len += len;
        proc_write_stdin(pr);
      }
      return;
    case FT_EOF:
      if (ch->kind == CH_WRITE) write_finish(c, ch);
      else if (pr) { pr->iclose = 1; proc_write_stdin(pr); }
      return;
    case FT_SIGNAL: {
      uint32_t sig = rd_u32(&r);
      if (r.bad || sig < 1 || sig >= NSIG) return;
      if (pr && (!pr->exited || !proc_finished(pr))) {
        if (kill(-pr->pid, (int)sig) && !pr->exited) kill(pr->pid, (int)sig);
      }
      return;
    }
    case FT_CLOSE:
      chan_free(c, ch); /* processes keep running; temp files are removed */
      return;
    default:
      return; /* unknown frame types on a channel are ignored */
  }
}

static void conn_read(struct conn *c) {
  size_t want = 65536;
  if (c->in.len >= HDR_LEN) {
    size_t need = HDR_LEN + rd32(buf_head(&c->in));
    if (need > c->in.len && need - c->in.len > want) want = need - c->in.len;
  }
  if (buf_reserve(&c->in, want)) { c->dead = 1; return; }
  ssize_t n = recv(c->fd, buf_tail(&c->in), want, 0);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { c->dead = 1; return; }
  if (n < 0) return;
  c->in.len += (size_t)n;
  while (!c->dead && c->in.len >= HDR_LEN) {
    uint8_t *h = buf_head(&c->in);
    uint32_t len = rd32(h);
    if (len > MAX_PAYLOAD) { c->dead = 1; return; }
    if (c->in.len < HDR_LEN + len) break;
    handle_frame(c, rd32(h + 4), h[8], h[9], h + HDR_LEN, len);
    buf_consume(&c->in, HDR_LEN + len);
  }
}

static void conn_flush(struct conn *c) {
  while (!c->dead && c->out.len) {
    ssize_t n = send(c->fd, buf_head(&c->out), c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) { buf_consume(&c->out, (size_t)n); continue; }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    c->dead = 1;
  }
}

static void conn_free(struct conn *c) {
  while (c->chans) chan_free(c, c->chans);
  for (struct proc *p = procs; p; p = p->next)
    if (p->conn == c) p->conn = NULL;
  close(c->fd);
  buf_free(&c->in);
  buf_free(&c->out);
  free(c);
}

static void do_accept(void) {
  for (;;) {
    int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    struct conn *c = nconns < MAX_CONNS ? calloc(1, sizeof *c) : NULL;
    if (!c) { close(fd); continue; }
    c->fd = fd;
    c->next = conns;
    conns = c;
    nconns++;
  }
}

/* ------------------------------------------------------------------ */
/* main loop                                                           */

static void on_term(int s) { (void)s; }

static void shutdown_all(void) {
  for (struct proc *p = procs; p; p = p->next)
    if (!p->exited) kill(-p->pid, SIGTERM);
  exit(0);
}

static void handle_signals(void) {
  struct signalfd_siginfo si;
  while (read(sig_fd, &si, sizeof si) == (ssize_t)sizeof si) {
    if (si.ssi_signo == SIGCHLD) reap();
    else if (!is_pid1 || si.ssi_pid == 0) shutdown_all(); /* from outside the sandbox */
  }
  reap();
}

static void sweep(void) {
  for (struct conn **pp = &conns; *pp;) {
    struct conn *c = *pp;
    if (c->dead) { *pp = c->next; nconns--; conn_free(c); }
    else pp = &c->next;
  }
  int finished = 0;
  uint64_t oldest = UINT64_MAX;
  for (struct proc *p = procs; p; p = p->next)
    if (!p->dead && p->fin_seq && !p->conn) { finished++; if (p->fin_seq < oldest) oldest = p->fin_seq; }
  for (struct proc **pp = &procs; *pp;) {
    struct proc *p = *pp;
    if (finished > MAX_FINISHED && p->fin_seq == oldest && !p->conn) { p->dead = 1; finished = 0; }
    if (p->dead) { *pp = p->next; proc_free(p); }
    else pp = &p->next;
  }
}

enum { R_LISTEN, R_SIG, R_CONN, R_POUT, R_PIN };
struct ref { int kind; void *ptr; int s; };

static void usage(void) {
  fprintf(stderr, "usage: capsule-agent --listen-fd N | --listen PATH\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *lpath = NULL;
  int lfd = -1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--listen-fd") && i + 1 < argc) lfd = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--listen") && i + 1 < argc) lpath = argv[++i];
    else if (!strcmp(argv[i], "--version")) { puts(AGENT_VERSION); return 0; }
    else usage();
  }
  if ((lfd < 0) == !lpath) usage();
  is_pid1 = getpid() == 1;

  /* fds 0-2 must exist so pipes never land on them */
  for (int fd = 0; fd < 3; fd++)
    if (fcntl(fd, F_GETFD) < 0) {
      int n = open("/dev/null", O_RDWR);
      if (n >= 0 && n != fd) { dup2(n, fd); close(n); }
    }

  if (lpath) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(lpath) >= sizeof sa.sun_path) { fprintf(stderr, "capsule-agent: socket path too long\n"); return 1; }
    strcpy(sa.sun_path, lpath);
    unlink(lpath);
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) || listen(lfd, 64)) {
      fprintf(stderr, "capsule-agent: listen %s: %s\n", lpath, strerror(errno));
      return 1;
    }
  }
  if (set_nonblock_cloexec(lfd)) { fprintf(stderr, "capsule-agent: bad listen fd %d: %s\n", lfd, strerror(errno)); return 1; }
  listen_fd = lfd;

  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = { .sa_handler = on_term };
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  for (int s = 1; s < NSIG; s++) {
    struct sigaction old;
    if (sigaction(s, NULL, &old) == 0 && old.sa_handler != SIG_DFL) changed_sigs[n_changed_sigs++] = s;
  }
  devnull_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigprocmask(SIG_BLOCK, &set, NULL);
  sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (sig_fd < 0) { fprintf(stderr, "capsule-agent: signalfd: %s\n", strerror(errno)); return 1; }
  if (!is_pid1) prctl(PR_SET_CHILD_SUBREAPER, 1);

  struct pollfd *pfd = NULL;
  struct ref *refs = NULL;
  size_t cap = 0;
  for (;;) {
    int64_t now = now_ms();
    int busy = 0;
    for (struct conn *c = conns; c; c = c->next) {
      for (struct chan *ch = c->chans, *next; ch; ch = next) {
        next = ch->next;
        if (ch->kind == CH_READ) busy |= pump_read(c, ch);
        else if (ch->kind == CH_LIST) busy |= pump_list(c, ch);
      }
    }
    int64_t timeout = -1; /* µs */
    int64_t held_now = 0;
    for (struct proc *p = procs; p; p = p->next) {
      proc_progress(p, now);
      if (!p->dead && p->exited && (p->ofd[S_OUT] >= 0 || p->ofd[S_ERR] >= 0)) {
        int64_t t = (p->deadline - now) * 1000;
        if (t < 0) t = 0;
        if (timeout < 0 || t < timeout) timeout = t;
      }
      if (!p->dead && p->ok_due) {
        if (!held_now) held_now = now_us();
        int64_t t = p->ok_due - held_now;
        if (t < 0) t = 0;
        if (timeout < 0 || t < timeout) timeout = t;
      }
    }
    for (struct conn *c = conns; c; c = c->next) conn_flush(c);
    sweep();
    if (busy) timeout = 0;

    size_t need = 2 + (size_t)nconns;
    for (struct proc *p = procs; p; p = p->next) need += 3;
    if (need > cap) {
      size_t nc = need * 2;
      struct pollfd *np = realloc(pfd, nc * sizeof *pfd);
      if (np) pfd = np;
      struct ref *nr = realloc(refs, nc * sizeof *refs);
      if (nr) refs = nr;
      if (!np || !nr) { sleep(1); continue; }
      cap = nc;
    }
    size_t n = 0;
#define ADD(fd_, ev_, k_, p_, s_) do { pfd[n].fd = (fd_); pfd[n].events = (ev_); pfd[n].revents = 0; \
      refs[n].kind = (k_); refs[n].ptr = (p_); refs[n].s = (s_); n++; } while (0)
    ADD(listen_fd, POLLIN, R_LISTEN, NULL, 0);
    ADD(sig_fd, POLLIN, R_SIG, NULL, 0);
    for (struct conn *c = conns; c; c = c->next) {
      short ev = 0;
      if (c->out.len < OUT_HIGH) ev |= POLLIN;
      if (c->out.len) ev |= POLLOUT;
      ADD(c->fd, ev, R_CONN, c, 0);
    }
    for (struct proc *p = procs; p; p = p->next) {
      for (int s = S_OUT; s <= S_ERR; s++)
        if (p->ofd[s] >= 0 && (!p->conn || p->ring[s].len < RING_CAP)) ADD(p->ofd[s], POLLIN, R_POUT, p, s);
      if (p->ifd >= 0 && p->ibuf.len) ADD(p->ifd, POLLOUT, R_PIN, p, 0);
    }
#undef ADD
    /* ppoll: a held EXEC reply needs a finer timeout than poll's milliseconds. */
    if (timeout > 1000000000) timeout = 1000000000;
    struct timespec ts = { (time_t)(timeout / 1000000), (long)(timeout % 1000000) * 1000 };
    int rc = ppoll(pfd, n, timeout < 0 ? NULL : &ts, NULL);
    if (rc < 0) {
      if (errno == EINTR) continue;
      sleep(1);
      continue;
    }
    for (size_t i = 0; i < n; i++) {
      if (!pfd[i].revents) continue;
      struct ref *rf = &refs[i];
      switch (rf->kind) {
        case R_LISTEN: do_accept(); break;
        case R_SIG: handle_signals(); break;
        case R_CONN: {
          struct conn *c = rf->ptr;
          if (c->dead) break;
          if (pfd[i].revents & POLLOUT) conn_flush(c);
          if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) conn_read(c);
          break;
        }
        case R_POUT: {
          struct proc *p = rf->ptr;
          if (!p->dead && p->ofd[rf->s] == pfd[i].fd) proc_read(p, rf->s);
          break;
        }
        case R_PIN: {
          struct proc *p = rf->ptr;
          if (!p->dead && p->ifd == pfd[i].fd) proc_write_stdin(p);
          break;
        }
      }
    }
  }
}
