/*
 * Process spawning: clone/exec of a command with its stdio, working
 * directory and credentials, in the child, before exec.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "spawn.h"

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* Signals not at their default in the agent (its own handlers and SIGPIPE, any it inherited ignored): a child
 * resets just these before exec. */
static int changed_sigs[NSIG];
static int n_changed_sigs;

void spawn_init(void) {
  for (int s = 1; s < NSIG; s++) {
    struct sigaction old;
    if (sigaction(s, NULL, &old) == 0 && old.sa_handler != SIG_DFL) changed_sigs[n_changed_sigs++] = s;
  }
}

/*
 * Commands start with clone(CLONE_VM | CLONE_VFORK): the child borrows our memory until it execs, and we
 * wait meanwhile. A fork copied the page tables, then paid for their teardown at exec, copy-on-write
 * faults in the agent and the TLB flushes between CPUs; that was most of the agent's kernel time per
 * command. Sharing memory has rules, kept by child_main: it touches only its own stack and `struct spawn`,
 * calls nothing that takes libc locks or changes libc state (raw syscalls where libc would), and ends in
 * execve or _exit. Its failure before exec is written into `struct spawn`, which we read once it is gone.
 */
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
  /* dup3 (dup2 is missing on aarch64). Each dst is at most MAX_CHILD_FD; when a source sits on a dst fd that
   * an earlier mapping would overwrite, all sources first move above MAX_CHILD_FD (close-on-exec copies). The
   * classic layout never needs that: its sources are never 0-2, which the agent keeps open. */
  int src[MAX_CHILD_FD + 1];
  int clash = 0;
  for (int i = 0; i < s->nmap; i++) {
    src[i] = s->map[i].src;
    for (int j = 0; j < s->nmap; j++) clash |= s->map[i].src == s->map[j].dst;
  }
  if (clash)
    for (int i = 0; i < s->nmap; i++)
      if ((src[i] = (int)syscall(SYS_fcntl, s->map[i].src, F_DUPFD_CLOEXEC, MAX_CHILD_FD + 1)) < 0) child_fail(s, STAGE_STDIO, errno);
  for (int i = 0; i < s->nmap; i++)
    if (syscall(SYS_dup3, src[i], s->map[i].dst, 0) < 0) child_fail(s, STAGE_STDIO, errno);
  /* A terminal becomes the new session's controlling terminal: ^C then signals the foreground job. */
  if (s->ctty >= 0 && syscall(SYS_ioctl, s->ctty, TIOCSCTTY, 0) < 0) child_fail(s, STAGE_STDIO, errno);
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
pid_t spawn_child(struct spawn *s) {
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
  /* The child's setuid ran on our memory map (CLONE_VM) and made it non-dumpable. Harmless after our own execve
   * (the map belongs to the sandbox's user namespace), but after a CRIU restore the map belongs to the host's, and
   * a non-dumpable agent can then not be checkpointed again (hibernate after a resume). Exec left us dumpable. */
  if (prctl(PR_GET_DUMPABLE) == 0) prctl(PR_SET_DUMPABLE, 1);
  if (s->pinned) sched_setaffinity(0, sizeof s->cpus, &s->cpus);
  sigprocmask(SIG_SETMASK, &old, NULL);
  errno = err;
  return pid;
}
