/*
 * capsule-agent: init process of a Capsule sandbox.
 *
 * Serves the daemon over a unix stream socket (multiplexed channels, credit
 * based flow control, see docs/agent-protocol.md), runs commands and touches
 * files with the sandbox's own view of the system, and reaps every child.
 *
 * Single threaded: one poll() loop. No dependencies beyond libc; built static.
 * This file: connections, channels, frame dispatch and the event loop. The
 * requests themselves live in process.c (commands, with pty.c for
 * terminals), files.c (files) and watch.c (file watches).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "files.h"
#include "hosts.h"
#include "process.h"
#include "spawn.h"
#include "vm.h"
#include "watch.h"

static struct conn *conns;
static int nconns;
static int listen_fd = -1, sig_fd = -1;
static int is_pid1;

/* ------------------------------------------------------------------ */
/* channels                                                            */

struct chan *chan_find(struct conn *c, uint32_t id) {
  for (struct chan *ch = c->chans; ch; ch = ch->next)
    if (ch->id == id) return ch;
  return NULL;
}

struct chan *chan_new(struct conn *c, uint32_t id, int kind) {
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
void chan_free(struct conn *c, struct chan *ch) {
  for (struct chan **pp = &c->chans; *pp; pp = &(*pp)->next)
    if (*pp == ch) { *pp = ch->next; break; }
  c->nchans--;
  if (ch->proc && ch->proc->conn == c && ch->proc->ch == ch->id) ch->proc->conn = NULL;
  if (ch->fd >= 0) close(ch->fd);
  if (ch->tmp) unlink(ch->tmp);
  if (ch->dir) closedir(ch->dir);
  watch_free(ch->watch);
  free(ch->tmp);
  free(ch->dst);
  free(ch->dpath);
  free(ch->pend);
  free(ch->xprefix);
  free(ch);
}

static int set_nonblock_cloexec(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
  return fcntl(fd, F_SETFD, FD_CLOEXEC);
}

/* ------------------------------------------------------------------ */
/* frame dispatch                                                      */

static void conn_flush(struct conn *c);

/*
 * HELLO from the daemon: u32 major, then (optional, as 1.0 daemons may stop after the major) bytes clientName,
 * and from 1.1 on u32 minor, u64 features. We answer u32 major, bytes agentVersion, u32 maxPayload,
 * u32 initialWindow, and from 1.1 on u32 minor, u64 features in effect (ours that the daemon also has).
 * A 1.0 daemon offers no features, so it gets exactly the 1.0 behaviour.
 */
static void handle_hello(struct conn *c, struct rd *r) {
  uint32_t major = rd_u32(r);
  if (r->bad) { c->dead = 1; return; }
  uint64_t offered = 0;
  if (r->len - r->pos >= 4) {
    uint32_t n;
    struct rd ext = *r;
    rd_bytes(&ext, &n);
    if (!ext.bad && ext.len - ext.pos >= 12) {
      rd_u32(&ext); /* the daemon's minor: the feature bits say all we act on */
      offered = rd_u64(&ext);
    }
  }
  c->hello = 1;
  c->features = AGENT_FEATURES & offered;
  c->max_data = (c->features & F_LARGE_DATA) ? MAX_PAYLOAD : MAX_DATA;
  fr_begin(c, 0, FT_HELLO, 0);
  put_u32(c, PROTO_VERSION);
  put_bytes(c, AGENT_VERSION, strlen(AGENT_VERSION));
  put_u32(c, MAX_PAYLOAD);
  put_u32(c, INIT_WINDOW);
#if PROTO_MINOR > 0
  uint8_t b[8];
  put_u32(c, PROTO_MINOR);
  wr_u64(b, c->features);
  put(c, b, 8);
#endif
  fr_end(c);
  if (major != PROTO_VERSION) {
    /* The daemon sees our version, then EOF. Sent now: a dead connection is never flushed, and at the
     * handshake the socket's buffer is empty, so this one small frame goes at once. */
    conn_flush(c);
    c->dead = 1;
  }
}

static void handle_frame(struct conn *c, uint32_t id, uint8_t type, uint8_t stream, const uint8_t *p, uint32_t len) {
  struct rd r = { p, len, 0, 0 };
  if (!c->hello) {
    if (type != FT_HELLO || id != 0) { c->dead = 1; return; }
    handle_hello(c, &r);
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
      case FT_WATCH: handle_watch(c, id, &r); break;
      default: send_error(c, id, ENOSYS, "request type 0x%02x not supported by %s", type, AGENT_VERSION); break;
    }
    return;
  }
  if (!ch) return; /* late frame for a finished channel */
  if (type == FT_CLOSE) {
    chan_free(c, ch); /* processes keep running; temp files are removed */
    return;
  }
  if (ch->kind == CH_EXEC) proc_frame(c, ch, type, stream, p, len);
  else if (ch->kind == CH_WATCH) watch_frame(c, ch, type, stream, p, len);
  else file_frame(c, ch, type, stream, p, len);
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

int conn_adopt(int fd) {
  /* Cheap unless the hostname changed: a fork with memory is renamed after its restore, then connected to. */
  hosts_sync();
  struct conn *c = nconns < MAX_CONNS ? calloc(1, sizeof *c) : NULL;
  if (!c) { close(fd); return -1; }
  c->fd = fd;
  c->next = conns;
  conns = c;
  nconns++;
  return 0;
}

static void do_accept(void) {
  for (;;) {
    int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    /* A CRIU restore (hibernate, then resume) can leave this process non-dumpable, with a memory map that
     * belongs to the host's user namespace: CRIU then cannot dump it a second time. The daemon connects right
     * after every restore: put the flag back as exec left it (spawn.c does the same after every clone). */
    if (prctl(PR_GET_DUMPABLE) == 0) prctl(PR_SET_DUMPABLE, 1);
    conn_adopt(fd);
  }
}

/* ------------------------------------------------------------------ */
/* main loop                                                           */

static void on_term(int s) { (void)s; }

static void shutdown_all(void) {
  proc_terminate_all();
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
  proc_sweep();
}

enum { R_LISTEN, R_SIG, R_CONN, R_POUT, R_PIN, R_PTY, R_WATCH, R_VM };
/* What a pollfd belongs to. R_WATCH: ptr is the connection, s the channel id (channels are freed at once,
 * connections only in sweep, so the channel is looked up again). */
struct ref { int kind; void *ptr; int s; };

static void usage(void) {
  fprintf(stderr, "usage: capsule-agent --listen-fd N | --listen PATH [--null-stdio] | --vm-init\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *lpath = NULL;
  int lfd = -1, vm = 0, null_stdio = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--listen-fd") && i + 1 < argc) lfd = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--vm-init")) vm = 1;
    else if (!strcmp(argv[i], "--listen") && i + 1 < argc) lpath = argv[++i];
    else if (!strcmp(argv[i], "--null-stdio")) null_stdio = 1;
    else if (!strcmp(argv[i], "--version")) { puts(AGENT_VERSION); return 0; }
    else if (getpid() == 1) continue; /* a VM's init also gets the boot parameters the kernel did not know */
    else usage();
  }
  if (vm ? (lfd >= 0 || lpath) : (lfd < 0) == !lpath) usage();
  is_pid1 = getpid() == 1;
  /* A microVM's init (src/runtime/microvm): make the guest's root, then serve the daemon over the port. */
  int port_fd = -1;
  if (vm) {
    if (!is_pid1) { fprintf(stderr, "capsule-agent: --vm-init runs only as a VM's init\n"); return 2; }
    port_fd = vm_init();
  }

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
  if (vm) vm_mux_start(port_fd);
  else if (set_nonblock_cloexec(lfd)) { fprintf(stderr, "capsule-agent: bad listen fd %d: %s\n", lfd, strerror(errno)); return 1; }
  listen_fd = lfd;
  /* --null-stdio: once listening, let go of the stdio the runtime handed over (host files: runc's /dev/null and
   * the launcher's unlinked stderr file) for this container's own /dev/null, so that CRIU can dump the agent
   * (it cannot dump a file outside the container's mounts). Errors from here on go nowhere; the daemon sees them
   * as a failed connection. */
  if (null_stdio) {
    int n = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (n < 0) { fprintf(stderr, "capsule-agent: /dev/null: %s\n", strerror(errno)); return 1; }
    for (int fd = 0; fd < 3; fd++) dup2(n, fd);
    close(n);
  }

  /* Listening already: the daemon's connect waits in the backlog meanwhile. */
  hosts_sync();
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = { .sa_handler = on_term };
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  spawn_init();
  proc_init();
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
  int *vmtags = NULL;
  if (vm && !(vmtags = calloc(vm_nfds(), sizeof *vmtags))) return 1;
  for (;;) {
    int64_t now = now_ms();
    int busy = 0;
    vm_tick(now);
    for (struct conn *c = conns; c; c = c->next) {
      for (struct chan *ch = c->chans, *next; ch; ch = next) {
        next = ch->next;
        if (ch->kind == CH_READ) busy |= pump_read(c, ch);
        else if (ch->kind == CH_LIST) busy |= pump_list(c, ch);
        else if (ch->kind == CH_WATCH) busy |= pump_watch(c, ch);
      }
    }
    int64_t timeout = -1; /* µs */
    int64_t held_now = 0;
    for (struct proc *p = procs; p; p = p->next) {
      proc_progress(p, now);
      if (!p->dead && p->exited && proc_open_outputs(p)) {
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
    int64_t vt = vm_timeout_ms(now);
    if (vt >= 0 && (timeout < 0 || vt * 1000 < timeout)) timeout = vt * 1000;

    size_t need = 2 + (size_t)nconns + vm_nfds();
    for (struct proc *p = procs; p; p = p->next) need += (size_t)p->nstreams;
    for (struct conn *c = conns; c; c = c->next) need += (size_t)c->nchans;
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
    if (listen_fd >= 0) ADD(listen_fd, POLLIN, R_LISTEN, NULL, 0);
    ADD(sig_fd, POLLIN, R_SIG, NULL, 0);
    if (vm) {
      size_t k = vm_fill(pfd + n, vmtags);
      for (size_t j = 0; j < k; j++) { refs[n + j].kind = R_VM; refs[n + j].ptr = NULL; refs[n + j].s = vmtags[j]; pfd[n + j].revents = 0; }
      n += k;
    }
    for (struct conn *c = conns; c; c = c->next) {
      short ev = 0;
      if (c->out.len < OUT_HIGH) ev |= POLLIN;
      if (c->out.len) ev |= POLLOUT;
      ADD(c->fd, ev, R_CONN, c, 0);
      for (struct chan *ch = c->chans; ch; ch = ch->next)
        if (ch->kind == CH_WATCH) ADD(watch_fd(ch->watch), POLLIN, R_WATCH, c, (int)ch->id);
    }
    for (struct proc *p = procs; p; p = p->next) {
      for (int s = 0; s < p->nstreams; s++) {
        struct pstream *st = &p->st[s];
        if (st->fd < 0) continue;
        if (st->kind == SK_PIPE_OUT && (!p->conn || st->ring.len < RING_CAP)) ADD(st->fd, POLLIN, R_POUT, p, s);
        else if (st->kind == SK_PIPE_IN && st->ibuf.len) ADD(st->fd, POLLOUT, R_PIN, p, s);
        else if (st->kind == SK_PTY) {
          /* One descriptor, both directions: output while there is room for it, keystrokes while queued. */
          short ev = (short)(((!p->conn || st->ring.len < RING_CAP) ? POLLIN : 0) | (st->ibuf.len ? POLLOUT : 0));
          if (ev) ADD(st->fd, ev, R_PTY, p, s);
        }
      }
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
        case R_VM: vm_event(rf->s, pfd[i].revents); break;
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
          if (!p->dead && p->st[rf->s].fd == pfd[i].fd) proc_read(p, rf->s);
          break;
        }
        case R_PIN: {
          struct proc *p = rf->ptr;
          if (!p->dead && p->st[rf->s].fd == pfd[i].fd) proc_write_in(p, rf->s);
          break;
        }
        case R_PTY: {
          struct proc *p = rf->ptr;
          if (!p->dead && p->st[rf->s].fd == pfd[i].fd && (pfd[i].revents & POLLOUT)) proc_write_in(p, rf->s);
          /* POLLHUP: the last holder of the terminal closed it; the read then sees EIO and closes the master. */
          if (!p->dead && p->st[rf->s].fd == pfd[i].fd && (pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) &&
              (pfd[i].events & POLLIN))
            proc_read(p, rf->s);
          break;
        }
        case R_WATCH: {
          struct conn *c = rf->ptr;
          struct chan *ch = c->dead ? NULL : chan_find(c, (uint32_t)rf->s);
          if (ch && ch->kind == CH_WATCH && watch_fd(ch->watch) == pfd[i].fd) watch_read(c, ch);
          break;
        }
      }
    }
  }
}
