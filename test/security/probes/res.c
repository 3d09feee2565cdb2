/*
 * res: resource exhaustion attempts that must stop at the sandbox's limits.
 * Usage: res <action> [args].
 */
#include "probe.h"
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int open_until_fail(int max) {
  int n = 0;
  while (n < max && open("/dev/null", O_RDONLY) >= 0) n++;
  return n;
}

int main(int argc, char **argv) {
  const char *a = ARG(1);
  if (!strcmp(a, "nofile")) {
    /* Open files until refused, raise the soft limit to the hard one, try again, then try to raise the hard limit. */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    int first = open_until_fail(1 << 20);
    const char *e1 = errname(errno);
    printf("soft=%lu hard=%lu opened=%d err=%s\n", (unsigned long)rl.rlim_cur, (unsigned long)rl.rlim_max, first, e1);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    int second = open_until_fail(1 << 20);
    printf("raised opened=%d err=%s\n", first + second, errname(errno));
    struct rlimit big = {1 << 20, 1 << 20};
    printf("raise-hard=");
    report(setrlimit(RLIMIT_NOFILE, &big));
    return 0;
  }
  if (!strcmp(a, "forkbomb")) {
    /*
     * Fork until refused; every child waits for the parent's pipe to close.
     * Prints the number of processes made and the error that stopped it.
     */
    int p[2];
    if (pipe(p) < 0) return report(-1) < 0;
    int n = 0, err = 0;
    for (int i = 0; i < 100000; i++) {
      pid_t c = fork();
      if (c == 0) {
        char b;
        close(p[1]);
        (void)read(p[0], &b, 1);
        _exit(0);
      }
      if (c < 0) { err = errno; break; }
      n++;
    }
    printf("forked=%d err=%s\n", n, errname(err));
    fflush(stdout);
    close(p[1]);
    while (wait(NULL) > 0) {}
    return 0;
  }
  if (!strcmp(a, "memhog")) {
    /* Allocate and touch MiB after MiB up to the argument; the memcg must kill us first. */
    long max = atol(ARG(2));
    for (long i = 0; i < max; i++) {
      char *m = malloc(1 << 20);
      if (!m) { printf("malloc failed at %ld MiB\n", i); return 1; }
      memset(m, (int)i, 1 << 20);
      if (i % 16 == 0) { printf("%ld\n", i); fflush(stdout); }
    }
    printf("allocated %ld MiB without being stopped\n", max);
    return 0;
  }
  if (!strcmp(a, "fill-files")) {
    /* Create empty files in a dir until refused (or max); prints count and error. */
    long max = atol(ARG(3));
    long n = 0;
    int err = 0;
    char path[4096];
    for (; n < max; n++) {
      snprintf(path, sizeof path, "%s/f%ld", ARG(2), n);
      int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
      if (fd < 0) { err = errno; break; }
      close(fd);
    }
    printf("files=%ld err=%s\n", n, errname(err));
    return 0;
  }
  if (!strcmp(a, "fill-bytes")) {
    /* Write MiB after MiB into a file until refused (or max MiB). */
    long max = atol(ARG(3));
    int fd = open(ARG(2), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return report(-1) < 0;
    static char buf[1 << 20];
    memset(buf, 'x', sizeof buf);
    long mb = 0;
    int err = 0;
    for (; mb < max; mb++) {
      ssize_t w = write(fd, buf, sizeof buf);
      if (w != (ssize_t)sizeof buf) { err = w < 0 ? errno : ENOSPC; break; }
    }
    printf("mib=%ld err=%s\n", mb, errname(err));
    return 0;
  }
  if (!strcmp(a, "spin")) {
    /* Burn CPU in N processes for S seconds of wall time. */
    int procs = atoi(ARG(2));
    double secs = atof(ARG(3));
    for (int i = 0; i < procs; i++) {
      if (fork() == 0) {
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        volatile unsigned long x = 0;
        do {
          for (int k = 0; k < 100000; k++) x++;
          clock_gettime(CLOCK_MONOTONIC, &t);
        } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < secs);
        _exit(0);
      }
    }
    while (wait(NULL) > 0) {}
    printf("OK\n");
    return 0;
  }
  fprintf(stderr, "res: unknown action %s\n", a);
  return 2;
}
