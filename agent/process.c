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
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "process.h"
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
/* Stdin of commands without a pipe; opened once (close-on-exec), dup2'ed into each child. */
static int devnull_fd = -1;

void proc_init(void) {
  devnull_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
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
void proc_read(struct proc *p, int s) {
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

int proc_finished(struct proc *p) {
  return p->exited && p->ofd[S_OUT] < 0 && p->ofd[S_ERR] < 0;
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

/* Stdin: write queued bytes, grant the daemon credit for what went out. */
void proc_write_stdin(struct proc *p) {
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

/* The parent's ends of a command's pipes: pipe2 made them close-on-exec already, so one fcntl, not three. */
static int set_nonblock(int fd) {
  return fcntl(fd, F_SETFL, O_RDONLY | O_NONBLOCK);
}

static int count_running(void) {
  int n = 0;
  for (struct proc *p = procs; p; p = p->next) n += !p->exited && !p->dead;
  return n;
}

void handle_exec(struct conn *c, uint32_t id, struct rd *r) {
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
