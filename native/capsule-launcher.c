/*
 * capsule-launcher: runs the OCI runtime and the other host tools for the
 * daemon, and reaps what they leave behind.
 *
 * Why a separate process: Node's spawn() forks the whole daemon (~100 MiB of
 * page tables) on its one thread for every `crun run`, `crun delete` and
 * mount call — 5–30 ms of a blocked event loop each, growing with the
 * daemon's memory. This process is a few hundred KiB, so its fork is cheap,
 * and it runs many jobs at once from one poll loop.
 *
 * Why a subreaper: a container's init is re-parented when `crun run -d`
 * exits. Without a subreaper it goes to the host's pid 1, which on some
 * hosts never reaps, so every ended sandbox stayed a zombie. Here the
 * launcher inherits them and reaps them.
 *
 * Protocol on stdin/stdout (little-endian u32/i32; the daemon is the only peer):
 *   request:  u32 len | u32 type | u32 job | payload (len counts type+job+payload)
 *     type 1 RUN:  u32 flags | NUL-terminated strings: listen_path, argv[0], argv[1], ...
 *                  flags bit0: capture stdout (else /dev/null)
 *                  flags bit1: stderr to a private temp file read at exit, instead of a pipe
 *                              (for `run -d`, whose container keeps its stdio open forever)
 *                  listen_path: when not empty, a unix socket listening there becomes fd 3
 *     type 2 KILL: i32 signal                  (to the job's process, if still running)
 *     type 3 SNDBUF: i32 fd | i32 bytes        set SO_SNDBUF of the daemon's unix socket `fd`; answered at once
 *                  (exit_code 0, or -1 with spawn_errno). Node has no setsockopt for stream
 *                  sockets, and the kernel's default send buffer (~208 KiB) makes a 1 GB/s upload to
 *                  an agent stall for the reader every ~0.2 ms. The launcher takes a copy of the
 *                  daemon's descriptor with pidfd_getfd (its parent only, unix sockets only) and
 *                  sets the option on the shared socket.
 *   response: u32 len | u32 job | i32 exit_code (-1 when signalled or not started)
 *             | i32 signal | i32 spawn_errno | u32 stdout_len | stdout | stderr
 * Output kept per stream is capped at CAP bytes; the rest is read and dropped.
 * EOF on stdin: the daemon is gone; exit (children keep running).
 *
 * capsule-build: static=yes
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
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_JOBS 512
#define CAP (1u << 20)
#define MAX_REQUEST (1u << 20)

enum { T_RUN = 1, T_KILL = 2, T_SNDBUF = 3 };
enum { F_STDOUT = 1, F_STDERR_FILE = 2 };

struct buf {
  char *data;
  uint32_t len;
  uint32_t cap;
};

struct job {
  int used;
  uint32_t id;
  pid_t pid;
  int exited;
  int status;
  int out_fd; /* -1 when closed or not captured */
  int err_fd; /* pipe, -1 when closed */
  int err_file; /* temp file for F_STDERR_FILE, -1 otherwise */
  struct buf out, err;
};

static struct job jobs[MAX_JOBS];
static struct buf inbuf;

static void die(const char *what) {
  fprintf(stderr, "capsule-launcher: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void buf_add(struct buf *b, const char *p, size_t n, uint32_t cap) {
  if (b->len >= cap) return;
  if (n > cap - b->len) n = cap - b->len;
  if (b->len + n > b->cap) {
    uint32_t nc = b->cap ? b->cap : 4096;
    while (nc < b->len + n) nc *= 2;
    char *d = realloc(b->data, nc);
    if (!d) die("realloc");
    b->data = d;
    b->cap = nc;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

static void write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        poll(&pf, 1, -1);
        continue;
      }
      exit(0); /* the daemon went away */
    }
    c += w;
    n -= (size_t)w;
  }
}

static void put32(char *p, uint32_t v) { memcpy(p, &v, 4); }
static uint32_t get32(const char *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

static void respond(uint32_t id, int32_t code, int32_t sig, int32_t err, const struct buf *out, const struct buf *errb) {
  uint32_t outl = out ? out->len : 0, errl = errb ? errb->len : 0;
  char h[24];
  put32(h, 20 + outl + errl);
  put32(h + 4, id);
  put32(h + 8, (uint32_t)code);
  put32(h + 12, (uint32_t)sig);
  put32(h + 16, (uint32_t)err);
  put32(h + 20, outl);
  write_all(1, h, sizeof h);
  if (outl) write_all(1, out->data, outl);
  if (errl) write_all(1, errb->data, errl);
}

static struct job *find_job(uint32_t id) {
  for (int i = 0; i < MAX_JOBS; i++)
    if (jobs[i].used && jobs[i].id == id) return &jobs[i];
  return NULL;
}

static void drain(int *fd, struct buf *b) {
  char tmp[65536];
  for (;;) {
    ssize_t r = read(*fd, tmp, sizeof tmp);
    if (r > 0) {
      buf_add(b, tmp, (size_t)r, CAP);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EAGAIN) return;
    close(*fd); /* EOF or a real error */
    *fd = -1;
    return;
  }
}

/* A job is done when its process was reaped and its pipes are closed. */
static void maybe_finish(struct job *j) {
  if (!j->exited || j->out_fd >= 0 || j->err_fd >= 0) return;
  if (j->err_file >= 0) {
    char tmp[65536];
    ssize_t r;
    off_t off = 0;
    while ((r = pread(j->err_file, tmp, sizeof tmp, off)) > 0) {
      buf_add(&j->err, tmp, (size_t)r, CAP);
      off += r;
    }
    close(j->err_file);
    j->err_file = -1;
  }
  int code = WIFEXITED(j->status) ? WEXITSTATUS(j->status) : -1;
  int sig = WIFSIGNALED(j->status) ? WTERMSIG(j->status) : 0;
  respond(j->id, code, sig, 0, &j->out, &j->err);
  free(j->out.data);
  free(j->err.data);
  memset(j, 0, sizeof *j);
}

static int listen_unix(const char *path) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  strcpy(sa.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  unlink(path);
  /* Owner-only from the first moment: the directory is root-only too. */
  mode_t old = umask(0177);
  int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
  umask(old);
  if (rc < 0 || listen(fd, 128) < 0) {
    int e = errno;
    close(fd);
    unlink(path);
    errno = e;
    return -1;
  }
  return fd;
}

static void start_job(uint32_t id, const char *payload, uint32_t n) {
  if (n < 4 || payload[n - 1] != '\0') {
    respond(id, -1, 0, EINVAL, NULL, NULL);
    return;
  }
  uint32_t flags = get32(payload);
  const char *p = payload + 4, *end = payload + n;
  const char *listen_path = p;
  p += strlen(p) + 1;
  char *argv[256];
  int argc = 0;
  while (p < end && argc < 255) {
    argv[argc++] = (char *)p;
    p += strlen(p) + 1;
  }
  argv[argc] = NULL;
  struct job *j = NULL;
  for (int i = 0; i < MAX_JOBS; i++)
    if (!jobs[i].used) {
      j = &jobs[i];
      break;
    }
  if (argc == 0 || !j || find_job(id)) {
    respond(id, -1, 0, argc == 0 ? EINVAL : EBUSY, NULL, NULL);
    return;
  }

  int out[2] = {-1, -1}, err[2] = {-1, -1}, exec_err[2] = {-1, -1};
  int err_file = -1, lfd = -1;
  if (listen_path[0] && (lfd = listen_unix(listen_path)) < 0) goto fail;
  if ((flags & F_STDOUT) && pipe2(out, O_CLOEXEC) < 0) goto fail;
  if (flags & F_STDERR_FILE) {
    err_file = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (err_file < 0) goto fail;
  } else if (pipe2(err, O_CLOEXEC) < 0) {
    goto fail;
  }
  /* The child reports a failed exec through this CLOEXEC pipe. */
  if (pipe2(exec_err, O_CLOEXEC) < 0) goto fail;

  pid_t pid = fork();
  if (pid < 0) goto fail;
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    dup2((flags & F_STDOUT) ? out[1] : devnull, 1);
    dup2((flags & F_STDERR_FILE) ? err_file : err[1], 2);
    int next = 3;
    if (lfd >= 0) {
      dup2(lfd, 3); /* dup2 clears CLOEXEC on the copy */
      if (lfd == 3) fcntl(3, F_SETFD, 0);
      next = 4;
    }
    /* Close everything else but the exec-error pipe (CLOEXEC closes it on success). */
    for (int fd = next; fd < 1024; fd++)
      if (fd != exec_err[1]) close(fd);
    execvp(argv[0], argv);
    int e = errno;
    if (write(exec_err[1], &e, sizeof e) < 0) _exit(127);
    _exit(127);
  }
  close(exec_err[1]);
  int e = 0;
  ssize_t r;
  while ((r = read(exec_err[0], &e, sizeof e)) < 0 && errno == EINTR) {
  }
  close(exec_err[0]);
  if (lfd >= 0) close(lfd); /* the runtime (and the container) hold their copies */
  if (out[1] >= 0) close(out[1]);
  if (err[1] >= 0) close(err[1]);

  memset(j, 0, sizeof *j);
  j->used = 1;
  j->id = id;
  j->pid = pid;
  j->out_fd = out[0];
  j->err_fd = err[0];
  j->err_file = err_file;
  if (j->out_fd >= 0) fcntl(j->out_fd, F_SETFL, O_NONBLOCK);
  if (j->err_fd >= 0) fcntl(j->err_fd, F_SETFL, O_NONBLOCK);
  if (r == sizeof e) {
    /* exec failed: the child exits 127 and is reaped by the SIGCHLD loop; answer now. */
    j->pid = -pid; /* still reaped, but no longer matches a live job */
    if (j->out_fd >= 0) close(j->out_fd);
    if (j->err_fd >= 0) close(j->err_fd);
    if (j->err_file >= 0) close(j->err_file);
    if (listen_path[0]) unlink(listen_path);
    memset(j, 0, sizeof *j);
    respond(id, -1, 0, e, NULL, NULL);
  }
  return;

fail:
  e = errno;
  int fds[] = {out[0], out[1], err[0], err[1], exec_err[0], exec_err[1], err_file, lfd};
  for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
    if (fds[i] >= 0) close(fds[i]);
  if (lfd >= 0) unlink(listen_path);
  respond(id, -1, 0, e ? e : EIO, NULL, NULL);
}

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

/* See T_SNDBUF above. Returns 0 or an errno. */
static int set_parent_sndbuf(int32_t target, int32_t bytes) {
  if (target < 0 || bytes <= 0) return EINVAL;
  int pidfd = (int)syscall(SYS_pidfd_open, getppid(), 0);
  if (pidfd < 0) return errno;
  int fd = (int)syscall(SYS_pidfd_getfd, pidfd, target, 0);
  int e = fd < 0 ? errno : 0;
  close(pidfd);
  if (fd < 0) return e;
  int domain = 0;
  socklen_t len = sizeof domain;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0) e = errno;
  else if (domain != AF_UNIX) e = ENOTSOCK;
  else if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes) < 0) e = errno;
  close(fd);
  return e;
}

static void handle_request(const char *msg, uint32_t n) {
  if (n < 8) return;
  uint32_t type = get32(msg), id = get32(msg + 4);
  if (type == T_RUN) {
    start_job(id, msg + 8, n - 8);
  } else if (type == T_SNDBUF && n >= 16) {
    int e = set_parent_sndbuf((int32_t)get32(msg + 8), (int32_t)get32(msg + 12));
    respond(id, e ? -1 : 0, 0, e, NULL, NULL);
  } else if (type == T_KILL && n >= 12) {
    struct job *j = find_job(id);
    if (!j) return;
    if (!j->exited && j->pid > 0) {
      kill(j->pid, (int)get32(msg + 8));
    } else if (j->exited) {
      /* Exited, but something it started still holds its pipes open: stop waiting for them. */
      if (j->out_fd >= 0) close(j->out_fd), j->out_fd = -1;
      if (j->err_fd >= 0) close(j->err_fd), j->err_fd = -1;
      maybe_finish(j);
    }
  }
}

static void read_requests(void) {
  char tmp[65536];
  ssize_t r = read(0, tmp, sizeof tmp);
  if (r == 0) exit(0); /* the daemon is gone */
  if (r < 0) {
    if (errno == EINTR || errno == EAGAIN) return;
    exit(0);
  }
  buf_add(&inbuf, tmp, (size_t)r, MAX_REQUEST + 4 + sizeof tmp);
  uint32_t off = 0;
  while (inbuf.len - off >= 4) {
    uint32_t n = get32(inbuf.data + off);
    if (n > MAX_REQUEST) {
      fprintf(stderr, "capsule-launcher: oversized request (%u bytes)\n", n);
      exit(1);
    }
    if (inbuf.len - off - 4 < n) break;
    handle_request(inbuf.data + off + 4, n);
    off += 4 + n;
  }
  memmove(inbuf.data, inbuf.data + off, inbuf.len - off);
  inbuf.len -= off;
}

static void reap(int sfd) {
  struct signalfd_siginfo si;
  while (read(sfd, &si, sizeof si) == sizeof si) {
  }
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    for (int i = 0; i < MAX_JOBS; i++) {
      if (jobs[i].used && jobs[i].pid == pid) {
        jobs[i].exited = 1;
        jobs[i].status = status;
        /* Whatever the process wrote before exiting is in the pipes: take it now. */
        if (jobs[i].out_fd >= 0) drain(&jobs[i].out_fd, &jobs[i].out);
        if (jobs[i].err_fd >= 0) drain(&jobs[i].err_fd, &jobs[i].err);
        break;
      }
    }
    /* Not a job: a re-parented container init (or an exec failure's child). Reaped, nothing to say. */
  }
}

int main(void) {
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) die("PR_SET_CHILD_SUBREAPER");
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() == 1) return 0; /* the daemon died before we got here */
  signal(SIGPIPE, SIG_IGN);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) die("sigprocmask");
  int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (sfd < 0) die("signalfd");
  fcntl(0, F_SETFD, FD_CLOEXEC);
  fcntl(1, F_SETFD, FD_CLOEXEC);
  write_all(1, "\0\0\0\0", 4); /* ready: an empty frame */

  struct pollfd pf[2 + 2 * MAX_JOBS];
  struct job *owner[2 + 2 * MAX_JOBS];
  for (;;) {
    int n = 0;
    pf[n++] = (struct pollfd){.fd = 0, .events = POLLIN};
    pf[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
    for (int i = 0; i < MAX_JOBS; i++) {
      if (!jobs[i].used) continue;
      if (jobs[i].out_fd >= 0) owner[n] = &jobs[i], pf[n++] = (struct pollfd){.fd = jobs[i].out_fd, .events = POLLIN};
      if (jobs[i].err_fd >= 0) owner[n] = &jobs[i], pf[n++] = (struct pollfd){.fd = jobs[i].err_fd, .events = POLLIN};
    }
    if (poll(pf, (nfds_t)n, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (pf[1].revents) reap(sfd);
    for (int i = 2; i < n; i++) {
      if (!pf[i].revents) continue;
      struct job *j = owner[i];
      if (!j->used) continue;
      if (pf[i].fd == j->out_fd) drain(&j->out_fd, &j->out);
      else if (pf[i].fd == j->err_fd) drain(&j->err_fd, &j->err);
    }
    for (int i = 0; i < MAX_JOBS; i++)
      if (jobs[i].used) maybe_finish(&jobs[i]);
    if (pf[0].revents) read_requests();
  }
}
