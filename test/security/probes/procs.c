/*
 * procs: processes, credentials and IPC.
 * Usage: procs <action> [args]; prints OK or the errno name.
 */
#include "probe.h"
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/ipc.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static void print_status_line(const char *key) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  if (!f) return;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, key, strlen(key))) fputs(line, stdout);
  fclose(f);
}

int main(int argc, char **argv) {
  const char *a = ARG(1);
  if (!strcmp(a, "ptrace-attach")) {
    pid_t pid = (pid_t)atoi(ARG(2));
    if (report(ptrace(PTRACE_ATTACH, pid, 0, 0)) < 0) return 1;
    waitpid(pid, NULL, __WALL);
    ptrace(PTRACE_DETACH, pid, 0, 0);
    return 0;
  }
  if (!strcmp(a, "ptrace-child")) {
    /* Trace our own child: the ordinary debugger case. */
    pid_t c = fork();
    if (c == 0) {
      if (ptrace(PTRACE_TRACEME, 0, 0, 0) < 0) _exit(1);
      raise(SIGSTOP);
      _exit(0);
    }
    int st;
    waitpid(c, &st, 0);
    if (!WIFSTOPPED(st)) { printf("TRACEME failed\n"); return 1; }
    long r = ptrace(PTRACE_PEEKUSER, c, 0, 0);
    (void)r;
    report(errno == 0 || r != -1 ? 0 : -1);
    ptrace(PTRACE_CONT, c, 0, 0);
    waitpid(c, &st, 0);
    return 0;
  }
  if (!strcmp(a, "kill")) return report(kill((pid_t)atoi(ARG(2)), atoi(ARG(3)))) < 0;
  if (!strcmp(a, "pidfd-open")) return report(syscall(SYS_pidfd_open, atoi(ARG(2)), 0)) < 0;
  if (!strcmp(a, "vm-read")) {
    /* process_vm_readv of another process's memory (needs ptrace rights). */
    char buf[16];
    struct iovec local = {buf, sizeof buf}, remote = {(void *)0x400000, sizeof buf};
    return report(process_vm_readv((pid_t)atoi(ARG(2)), &local, 1, &remote, 1, 0)) < 0;
  }
  if (!strcmp(a, "creds")) {
    /* What this process really holds: used to show a setuid bit grants nothing. */
    printf("uid=%d euid=%d\n", (int)getuid(), (int)geteuid());
    print_status_line("CapEff");
    print_status_line("NoNewPrivs");
    print_status_line("Seccomp:");
    printf("setuid0=");
    report(setuid(0));
    return 0;
  }
  if (!strcmp(a, "open-fds")) {
    /* The fds this process inherited, without opening anything: "0,1,2" expected. */
    int first = 1;
    for (int fd = 0; fd < 65536; fd++) {
      if (fcntl(fd, F_GETFD) >= 0) {
        printf("%s%d", first ? "" : ",", fd);
        first = 0;
      }
    }
    printf("\n");
    return 0;
  }
  if (!strcmp(a, "setrlimit-nofile")) {
    struct rlimit rl = {(rlim_t)atol(ARG(2)), (rlim_t)atol(ARG(2))};
    return report(setrlimit(RLIMIT_NOFILE, &rl)) < 0;
  }
  if (!strcmp(a, "shm-create")) {
    int id = shmget((key_t)strtol(ARG(2), NULL, 0), 4096, IPC_CREAT | 0666);
    if (report(id) < 0) return 1;
    char *p = shmat(id, NULL, 0);
    if (p != (void *)-1) strcpy(p, ARG(3));
    return 0;
  }
  if (!strcmp(a, "shm-read")) {
    int id = shmget((key_t)strtol(ARG(2), NULL, 0), 0, 0);
    if (id < 0) return report(-1) < 0;
    char *p = shmat(id, NULL, SHM_RDONLY);
    if (p == (void *)-1) return report(-1) < 0;
    printf("OK %s\n", p);
    return 0;
  }
  fprintf(stderr, "procs: unknown action %s\n", a);
  return 2;
}
