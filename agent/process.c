/*
 * Commands: EXEC, ATTACH and PS, the output rings of each process, its
 * stdin, and reaping. A process outlives the channel that started it; its
 * output is kept (bounded) until someone attaches or it is evicted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "process.h"
#include "pty.h"
#include "spawn.h"
#include "users.h"

#define MAX_RUNNING 1024
#define DRAIN_MS 50
/* EXEC with EXEC_HOLD_REPLY: how long the OK may wait for the exit (see proc_progress). */
#define HOLD_US 2000
#define MAX_ARGS 65536
#define PS_ARGV_MAX 4096         /* argv bytes remembered per process for PS */
#define MAX_FINISHED 256

struct proc *procs;
static uint64_t fin_counter;
/* /dev/null for fds without a stream: read-only for stdin as always, read-write for the others
 * (a stream of kind SK_NULL on an output fd). Opened once (close-on-exec), dup'ed into each child. */
static int devnull_fd = -1, devnull_rw_fd = -1;

void proc_init(void) {
  if (devnull_fd < 0) devnull_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull_rw_fd < 0) devnull_rw_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
}

/* The parent's ends of a command's pipes: pipe2 made them close-on-exec already, so one fcntl, not three. */
static int set_nonblock(int fd, int mode) {
  return fcntl(fd, F_SETFL, mode | O_NONBLOCK);
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

static struct pstream *proc_stream(struct proc *p, uint8_t id) {
  for (int i = 0; i < p->nstreams; i++)
    if (p->st[i].id == id) return &p->st[i];
  return NULL;
}

static void stream_close(struct pstream *st) {
  if (st->fd >= 0) { close(st->fd); st->fd = -1; }
}
/* Output streams: pipes from the process, and terminals (whose master carries input too). */
static int is_output(const struct pstream *st) {
  return st->kind == SK_PIPE_OUT || st->kind == SK_PTY;
}

/* All input: the process exited or is finished, nobody will read it. A terminal's master stays open for
 * the output still in it; only its queued keystrokes go. */
static void proc_close_in(struct proc *p) {
  for (int i = 0; i < p->nstreams; i++) {
    struct pstream *st = &p->st[i];
    if (st->kind == SK_PTY) { buf_free(&st->ibuf); continue; }
    if (st->kind != SK_PIPE_IN) continue;
    stream_close(st);
    buf_free(&st->ibuf);
  }
}

static void exit_code(int status, int *code, int *sig) {
  *sig = 0;
  if (WIFEXITED(status)) *code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status)) { *sig = WTERMSIG(status); *code = 128 + *sig; }
  else *code = 255;
}

/* Read what output pipe i has. Attached: only into free ring space (flow control);
 * detached: always, overwriting the oldest output. */
void proc_read(struct proc *p, int i) {
  uint8_t tmp[65536];
  struct pstream *st = &p->st[i];
  struct ring *r = &st->ring;
  if (st->fd < 0) return;
  size_t want = sizeof tmp;
  if (p->conn) {
    want = RING_CAP - r->len;
    if (!want) return;
    if (want > sizeof tmp) want = sizeof tmp;
  }
  ssize_t n = read(st->fd, tmp, want);
  if (n > 0) {
    if (ring_push(r, tmp, (size_t)n)) p->truncated = 1;
    if (p->exited) p->deadline = now_ms() + DRAIN_MS;
  } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
    stream_close(st);
  }
}

int proc_open_outputs(struct proc *p) {
  int n = 0;
  for (int i = 0; i < p->nstreams; i++) n += is_output(&p->st[i]) && p->st[i].fd >= 0;
  return n;
}

int proc_finished(struct proc *p) {
  return p->exited && !proc_open_outputs(p);
}

static void send_exec_ok(struct conn *c, uint32_t ch, pid_t pid) {
  uint8_t b[4];
  wr_u32(b, (uint32_t)pid);
  send_simple(c, ch, FT_OK, 0, b, 4);
}

/* Move buffered output to the attached channel while it has credit; send EXIT at the end. */
void proc_progress(struct proc *p, int64_t now) {
  if (p->dead) return;
  struct conn *c = p->conn;
  if (c && c->dead) c = NULL;
  if (p->ok_due) {
    if (!c) {
      p->ok_due = 0; /* the channel went away: nobody to answer */
    } else {
      /* A short command's reply, output and EXIT leave in one write: one wake-up of the daemon instead of two.
       * A full ring means the output must flow now; the deadline bounds how late a long command's reply is. */
      int full = 0;
      for (int i = 0; i < p->nstreams; i++) full |= p->st[i].ring.len >= RING_CAP;
      if (!proc_finished(p) && !full && now_us() < p->ok_due) return;
      send_exec_ok(c, p->ch, p->pid);
      p->ok_due = 0;
    }
  }
  int pending = 0;
  for (int i = 0; i < p->nstreams; i++) {
    struct pstream *st = &p->st[i];
    if (!is_output(st)) continue;
    struct ring *r = &st->ring;
    /* Output frames stay at MAX_DATA: the ring they come from holds no more. */
    while (c && r->len && st->credit > 0 && c->out.len < OUT_HIGH && !c->dead) {
      size_t n = r->len;
      if (n > RING_CAP - r->head) n = RING_CAP - r->head;
      if (n > MAX_DATA) n = MAX_DATA;
      if ((int64_t)n > st->credit) n = (size_t)st->credit;
      send_simple(c, p->ch, FT_DATA, st->id, r->p + r->head, n);
      r->head = (r->head + n) % RING_CAP;
      r->len -= n;
      st->credit -= (int64_t)n;
    }
    if (p->exited && st->fd >= 0) {
      /* Waiting on credit is not idleness: keep the pipe while the consumer is slow. */
      if (c && r->len >= RING_CAP) p->deadline = now + DRAIN_MS;
      else if (now >= p->deadline) {
        proc_read(p, i); /* take what is there now, then give up on the holder */
        stream_close(st);
      }
    }
    pending |= r->len != 0;
  }
  if (!proc_finished(p)) return;
  if (c) {
    if (pending || c->dead) return;
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
  for (int i = 0; i < p->nstreams; i++) {
    stream_close(&p->st[i]);
    buf_free(&p->st[i].ibuf);
    free(p->st[i].ring.p);
  }
  free(p->ps);
  free(p);
}

void reap(void) {
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

/* Input pipe i: write queued bytes, grant the daemon credit for what went out. */
void proc_write_in(struct proc *p, int i) {
  struct pstream *st = &p->st[i];
  size_t done = 0;
  while (st->fd >= 0 && st->ibuf.len) {
    ssize_t n = write(st->fd, buf_head(&st->ibuf), st->ibuf.len);
    if (n > 0) { buf_consume(&st->ibuf, (size_t)n); done += (size_t)n; continue; }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    /* EPIPE or other: the reader is gone; drop the data. A terminal's master still holds output: keep it. */
    done += st->ibuf.len;
    buf_consume(&st->ibuf, st->ibuf.len);
    if (st->kind != SK_PTY) stream_close(st);
    else break;
  }
  if (st->fd < 0 && st->ibuf.len) { done += st->ibuf.len; buf_consume(&st->ibuf, st->ibuf.len); }
  if (st->iclose && !st->ibuf.len) stream_close(st);
  if (done && p->conn && !p->conn->dead) {
    st->rwin += (int64_t)done;
    send_window(p->conn, p->ch, st->id, (uint32_t)done);
  }
}

/* Frames on an EXEC/ATTACH channel after the reply: input, credit, signals, control. */
void proc_frame(struct conn *c, struct chan *ch, uint8_t type, uint8_t stream, const uint8_t *d, uint32_t len) {
  struct proc *pr = ch->proc;
  struct rd r = { d, len, 0, 0 };
  if (!pr) return;
  struct pstream *st = proc_stream(pr, stream);
  switch (type) {
    case FT_WINDOW: {
      uint32_t n = rd_u32(&r);
      if (r.bad) { c->dead = 1; return; }
      if (!st || st->kind != SK_PIPE_OUT) return;
      st->credit += n;
      if (st->credit > (int64_t)MAX_WINDOW) c->dead = 1;
      return;
    }
    case FT_DATA:
      /* Only into an input stream or a terminal (or stdin that is /dev/null, whose bytes are dropped as 1.0 did). */
      if (!st || st->kind == SK_PIPE_OUT) { c->dead = 1; return; }
      if ((int64_t)len > st->rwin) { c->dead = 1; return; }
      st->rwin -= len;
      if (st->fd < 0 || st->iclose || (st->kind == SK_PTY && pr->exited)) { st->rwin += len; send_window(c, ch->id, stream, len); return; }
      if (buf_reserve(&st->ibuf, len)) { c->dead = 1; return; }
      memcpy(buf_tail(&st->ibuf), d, len);
      st->ibuf.len += len;
      proc_write_in(pr, (int)(st - pr->st));
      return;
    case FT_EOF:
      if (!st || st->kind != SK_PIPE_IN) return;
      st->iclose = 1;
      proc_write_in(pr, (int)(st - pr->st));
      return;
    case FT_SIGNAL: {
      uint32_t sig = rd_u32(&r);
      if (r.bad || sig < 1 || sig >= NSIG) return;
      if (!pr->exited || !proc_finished(pr)) {
        if (kill(-pr->pid, (int)sig) && !pr->exited) kill(pr->pid, (int)sig);
      }
      return;
    }
    case FT_CONTROL: {
      /* Unknown kinds, and a resize of anything but an open terminal, are ignored. */
      uint8_t kind = rd_u8(&r);
      if (r.bad || kind != CTL_RESIZE || !st || st->kind != SK_PTY || st->fd < 0) return;
      if (!rd_need(&r, 4)) return;
      uint16_t rows = (uint16_t)((r.p[r.pos] << 8) | r.p[r.pos + 1]);
      uint16_t cols = (uint16_t)((r.p[r.pos + 2] << 8) | r.p[r.pos + 3]);
      pty_resize(st->fd, rows, cols);
      return;
    }
    default:
      return; /* unknown frame types on a channel are ignored */
  }
}

static int count_running(void) {
  int n = 0;
  for (struct proc *p = procs; p; p = p->next) n += !p->exited && !p->dead;
  return n;
}

/* A stream of an EXEC request, before its pipe exists; rows and cols for a terminal. */
struct sspec { uint8_t id, kind, nfds; uint8_t fds[MAX_CHILD_FD + 1]; uint16_t rows, cols; };

/*
 * The stream table of an EXEC with EXEC_STREAMS: u8 count, count x (u8 id, u8 kind, u8 nfds, nfds x u8 fd).
 * Returns the count; -1 when malformed (the connection dies), -2 with msg/err when refused.
 */
static int read_streams(struct rd *r, uint64_t features, struct sspec *ss, int *err, char *msg, size_t msz) {
  uint8_t n = rd_u8(r);
  int ptys = 0;
  if (r->bad) return -1;
  if (n == 0 || n > MAX_STREAMS) { *err = EINVAL; snprintf(msg, msz, "a process has 1 to %d streams, not %u", MAX_STREAMS, n); return -2; }
  uint32_t used_fds = 0;
  for (int i = 0; i < n; i++) {
    ss[i].id = rd_u8(r);
    ss[i].kind = rd_u8(r);
    ss[i].nfds = rd_u8(r);
    if (r->bad) return -1;
    if (ss[i].nfds > MAX_CHILD_FD + 1 || !rd_need(r, ss[i].nfds)) return -1;
    for (int j = 0; j < ss[i].nfds; j++) ss[i].fds[j] = rd_u8(r);
    ss[i].rows = ss[i].cols = 0;
    if (ss[i].kind == SK_PTY && (features & F_PTY)) {
      /* F_PTY: a terminal's entry ends with its window size, so the process sees it from its first instruction. */
      if (!rd_need(r, 4)) return -1;
      ss[i].rows = (uint16_t)((r->p[r->pos] << 8) | r->p[r->pos + 1]);
      ss[i].cols = (uint16_t)((r->p[r->pos + 2] << 8) | r->p[r->pos + 3]);
      r->pos += 4;
      if (++ptys > 1) { *err = EINVAL; snprintf(msg, msz, "a process has at most one terminal"); return -2; }
    }
    for (int j = 0; j < i; j++)
      if (ss[j].id == ss[i].id) { *err = EINVAL; snprintf(msg, msz, "stream id %u is used twice", ss[i].id); return -2; }
    if (ss[i].id == 255) { *err = EINVAL; snprintf(msg, msz, "stream id 255 is reserved"); return -2; }
    if (ss[i].kind == SK_PTY && !(features & F_PTY)) { *err = ENOTSUP; snprintf(msg, msz, "terminal (pty) streams are not supported by %s", AGENT_VERSION); return -2; }
    if (ss[i].kind > SK_PTY) { *err = EINVAL; snprintf(msg, msz, "unknown stream kind %u", ss[i].kind); return -2; }
    if (!ss[i].nfds) { *err = EINVAL; snprintf(msg, msz, "stream %u is bound to no file descriptor", ss[i].id); return -2; }
    for (int j = 0; j < ss[i].nfds; j++) {
      uint8_t fd = ss[i].fds[j];
      if (fd > MAX_CHILD_FD) { *err = EINVAL; snprintf(msg, msz, "fd %u is beyond %d", fd, MAX_CHILD_FD); return -2; }
      if (used_fds & (1u << fd)) { *err = EINVAL; snprintf(msg, msz, "fd %u is bound to two streams", fd); return -2; }
      used_fds |= 1u << fd;
    }
  }
  return n;
}

/* stdin (a pipe or /dev/null), stdout, stderr: what an EXEC without a stream table gets. */
static int classic_streams(struct sspec *ss, int stdin_pipe) {
  ss[0] = (struct sspec){ .id = S_IN, .kind = (uint8_t)(stdin_pipe ? SK_PIPE_IN : SK_NULL), .nfds = 1, .fds = {0} };
  ss[1] = (struct sspec){ .id = S_OUT, .kind = SK_PIPE_OUT, .nfds = 1, .fds = {1} };
  ss[2] = (struct sspec){ .id = S_ERR, .kind = SK_PIPE_OUT, .nfds = 1, .fds = {2} };
  return 3;
}

/* A bounded copy of argv for PS: u32 count, then bytes each; as many as fit in PS_ARGV_MAX. */
static void remember_argv(struct proc *p, char **argv, uint32_t argc) {
  size_t total = 4;
  uint32_t keep = 0;
  for (uint32_t i = 0; i < argc; i++) {
    size_t l = strlen(argv[i]);
    if (total + 4 + l > PS_ARGV_MAX) break;
    total += 4 + l;
    keep++;
  }
  p->ps = malloc(total);
  if (!p->ps) return;
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

void handle_exec(struct conn *c, uint32_t id, struct rd *r) {
  uint8_t flags = rd_u8(r);
  char *cwd = rd_cstr(r, PATH_MAX - 1);
  char *user = rd_cstr(r, 511);
  uint32_t argc = rd_u32(r);
  char **argv = NULL, **envp = NULL;
  uint32_t envc = 0;
  char msg[512];
  int perr = 0;
  struct sspec ss[MAX_STREAMS];
  int pipes[MAX_STREAMS][2];
  int nss = 0, has_input = 0;
  for (int i = 0; i < MAX_STREAMS; i++) pipes[i][0] = pipes[i][1] = -1;

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
  /* A 1.0 agent ignored unknown flags and trailing bytes; without the feature we still do. */
  if ((flags & EXEC_STREAMS) && (c->features & F_EXEC_STREAMS)) {
    nss = read_streams(r, c->features, ss, &perr, msg, sizeof msg);
    if (nss == -1) goto bad;
    if (nss == -2) { send_error(c, id, perr, "%s", msg); goto out; }
  } else {
    nss = classic_streams(ss, flags & EXEC_STDIN_PIPE);
  }
  for (int i = 0; i < nss; i++) has_input |= ss[i].kind == SK_PIPE_IN || ss[i].kind == SK_PTY;
  if (!argv[0][0]) { send_error(c, id, EINVAL, "empty command"); goto out; }
  if (cwd[0] && cwd[0] != '/') { send_error(c, id, EINVAL, "cwd must be an absolute path: %.200s", cwd); goto out; }
  if (count_running() >= MAX_RUNNING) { send_error(c, id, EAGAIN, "too many processes (%d running)", MAX_RUNNING); goto out; }

  struct cred cr;
  int have_cred = 0;
  if (user[0]) {
    if (resolve_user(user, &cr, msg, sizeof msg)) { send_error(c, id, EINVAL, "%s", msg); goto out; }
    have_cred = 1;
  }

  /* The child's fds: each stream's end, /dev/null for 0-2 when no stream names them. */
  proc_init(); /* in case /dev/null could not be opened at start */
  struct spawn sp = { .argv = argv, .envp = envp, .cwd = cwd, .cr = have_cred ? &cr : NULL, .ctty = -1 };
  uint32_t bound = 0;
  for (int i = 0; i < nss; i++) {
    int child_end = -1;
    if (ss[i].kind == SK_PIPE_IN || ss[i].kind == SK_PIPE_OUT) {
      if (pipe2(pipes[i], O_CLOEXEC)) {
        perr = errno;
        send_error(c, id, perr, "pipe: %s", strerror(perr));
        goto out;
      }
      child_end = ss[i].kind == SK_PIPE_IN ? pipes[i][0] : pipes[i][1];
    } else if (ss[i].kind == SK_PTY) {
      /* [0] the master (ours), [1] the slave (the child's), as for an output pipe. */
      perr = pty_open(&pipes[i][0], &pipes[i][1], ss[i].rows, ss[i].cols);
      if (perr) {
        send_error(c, id, perr, "cannot open a terminal: %s", strerror(perr));
        goto out;
      }
      child_end = pipes[i][1];
      sp.ctty = ss[i].fds[0];
    }
    for (int j = 0; j < ss[i].nfds; j++) {
      int dst = ss[i].fds[j];
      int src = child_end >= 0 ? child_end : dst == 0 ? devnull_fd : devnull_rw_fd;
      if (src < 0) {
        perr = EBADF;
        send_error(c, id, perr, "cannot open /dev/null");
        goto out;
      }
      sp.map[sp.nmap].src = src;
      sp.map[sp.nmap].dst = dst;
      sp.nmap++;
      bound |= 1u << dst;
    }
  }
  for (int fd = 0; fd <= 2; fd++) {
    if (bound & (1u << fd)) continue;
    int src = fd == 0 ? devnull_fd : devnull_rw_fd;
    if (src < 0) { send_error(c, id, EBADF, "cannot open /dev/null"); goto out; }
    sp.map[sp.nmap].src = src;
    sp.map[sp.nmap].dst = fd;
    sp.nmap++;
  }
  pid_t pid = spawn_child(&sp);
  if (pid < 0) {
    perr = errno;
    send_error(c, id, perr, "clone: %s", strerror(perr));
    goto out;
  }
  /* The child's ends are its own now. */
  for (int i = 0; i < nss; i++) {
    int child_side = ss[i].kind == SK_PIPE_IN ? 0 : 1;
    if (pipes[i][child_side] >= 0) { close(pipes[i][child_side]); pipes[i][child_side] = -1; }
  }
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
  p->nstreams = nss;
  for (int i = 0; i < nss; i++) {
    struct pstream *st = &p->st[i];
    st->id = ss[i].id;
    st->kind = ss[i].kind;
    st->fd = -1;
    st->rwin = INIT_WINDOW;
    st->credit = INIT_WINDOW;
    if (ss[i].kind == SK_PIPE_OUT || ss[i].kind == SK_PTY) {
      st->fd = pipes[i][0];
      pipes[i][0] = -1;
      set_nonblock(st->fd, ss[i].kind == SK_PTY ? O_RDWR : O_RDONLY);
    } else if (ss[i].kind == SK_PIPE_IN) {
      st->fd = pipes[i][1];
      pipes[i][1] = -1;
      set_nonblock(st->fd, O_WRONLY);
    }
  }
  p->conn = c;
  p->ch = id;
  remember_argv(p, argv, argc);
  ch->proc = p;
  p->next = procs;
  procs = p;
  /* Without an input pipe the daemon has nothing to send before the exit, so it may ask us to hold the reply. */
  if ((flags & EXEC_HOLD_REPLY) && !has_input) p->ok_due = now_us() + HOLD_US;
  else send_exec_ok(c, id, pid);
  goto out;

bad:
  c->dead = 1; /* malformed request */
out:
  for (int i = 0; i < MAX_STREAMS; i++)
    for (int j = 0; j < 2; j++)
      if (pipes[i][j] >= 0) close(pipes[i][j]);
  if (argv) for (uint32_t i = 0; i < argc; i++) free(argv[i]);
  if (envp) for (uint32_t i = 0; i < envc; i++) free(envp[i]);
  free(argv);
  free(envp);
  free(cwd);
  free(user);
}

void handle_attach(struct conn *c, uint32_t id, struct rd *r) {
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
  int stdin_open = 0;
  for (int i = 0; i < p->nstreams; i++) {
    struct pstream *st = &p->st[i];
    st->credit = INIT_WINDOW;
    st->rwin = INIT_WINDOW;
    st->iclose = 0;
    buf_consume(&st->ibuf, st->ibuf.len); /* input queued by an earlier connection is dropped */
    if (st->id == S_IN && st->kind == SK_PIPE_IN && st->fd >= 0) stdin_open = 1;
  }
  ch->proc = p;
  fr_begin(c, id, FT_OK, 0);
  put_u32(c, (uint32_t)p->pid);
  put_u8(c, (uint8_t)((p->truncated ? 1 : 0) | (p->exited ? 2 : 0) | (stdin_open ? 4 : 0)));
  if (c->features & F_EXEC_STREAMS) {
    /* 1.1: which streams the process has, so a daemon that did not start it knows what to expect. */
    put_u8(c, (uint8_t)p->nstreams);
    for (int i = 0; i < p->nstreams; i++) {
      put_u8(c, p->st[i].id);
      put_u8(c, p->st[i].kind);
      put_u8(c, p->st[i].fd >= 0 ? 1 : 0);
    }
  }
  fr_end(c);
}

void handle_ps(struct conn *c, uint32_t id) {
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

/* Free dead processes; evict the oldest finished one nobody attached once more than MAX_FINISHED are kept. */
void proc_sweep(void) {
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

void proc_terminate_all(void) {
  for (struct proc *p = procs; p; p = p->next)
    if (!p->exited) kill(-p->pid, SIGTERM);
}
