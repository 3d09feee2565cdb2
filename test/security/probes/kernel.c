/*
 * kernel: one syscall per invocation, the kind a container escape needs.
 * Usage: kernel <action> [args]; prints OK or the errno name.
 */
#include "probe.h"
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

static int ns_flag(const char *n) {
  if (!strcmp(n, "user")) return CLONE_NEWUSER;
  if (!strcmp(n, "mount")) return CLONE_NEWNS;
  if (!strcmp(n, "net")) return CLONE_NEWNET;
  if (!strcmp(n, "pid")) return CLONE_NEWPID;
  if (!strcmp(n, "uts")) return CLONE_NEWUTS;
  if (!strcmp(n, "ipc")) return CLONE_NEWIPC;
  if (!strcmp(n, "cgroup")) return CLONE_NEWCGROUP;
  if (!strcmp(n, "time")) return CLONE_NEWTIME;
  fprintf(stderr, "unknown namespace %s\n", n);
  exit(2);
}

/* clone(flags|SIGCHLD) as fork does; the child exits at once. */
static long clone_ns(int flags) {
  long pid = syscall(SYS_clone, (unsigned long)flags | SIGCHLD, 0, 0, 0, 0);
  if (pid == 0) _exit(0);
  if (pid > 0) waitpid((pid_t)pid, NULL, 0);
  return pid;
}

struct clone_args_v0 {
  uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};

int main(int argc, char **argv) {
  const char *a = ARG(1);
  if (!strcmp(a, "mount-tmpfs")) return report(mount("none", ARG(2), "tmpfs", 0, NULL)) < 0;
  if (!strcmp(a, "mount-proc")) return report(mount("proc", ARG(2), "proc", 0, NULL)) < 0;
  if (!strcmp(a, "mount-bind")) return report(mount(ARG(2), ARG(3), NULL, MS_BIND | MS_REC, NULL)) < 0;
  if (!strcmp(a, "remount-rw")) return report(mount(NULL, ARG(2), NULL, MS_REMOUNT | MS_BIND, NULL)) < 0;
  if (!strcmp(a, "umount")) return report(umount2(ARG(2), MNT_DETACH)) < 0;
  if (!strcmp(a, "pivot-root")) return report(syscall(SYS_pivot_root, ARG(2), ARG(3))) < 0;
  if (!strcmp(a, "fsopen")) return report(syscall(SYS_fsopen, ARG(2), 0)) < 0;
  if (!strcmp(a, "open-tree")) return report(syscall(SYS_open_tree, AT_FDCWD, ARG(2), 1 /* OPEN_TREE_CLONE */)) < 0;
  if (!strcmp(a, "unshare")) return report(unshare(ns_flag(ARG(2)))) < 0;
  if (!strcmp(a, "clone")) return report(clone_ns(ns_flag(ARG(2)))) < 0;
  if (!strcmp(a, "clone3")) {
    struct clone_args_v0 ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = argc > 2 ? (uint64_t)ns_flag(ARG(2)) : 0;
    ca.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &ca, sizeof ca);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid((pid_t)pid, NULL, 0);
    return report(pid) < 0;
  }
  if (!strcmp(a, "fork")) {
    pid_t p = fork();
    if (p == 0) _exit(0);
    if (p > 0) waitpid(p, NULL, 0);
    return report(p) < 0;
  }
  if (!strcmp(a, "setns")) {
    int fd = open(ARG(2), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return report(-1) < 0;
    return report(setns(fd, 0)) < 0;
  }
  if (!strcmp(a, "init-module")) {
    static char img[4096] = "\177ELF";
    return report(syscall(SYS_init_module, img, sizeof img, "")) < 0;
  }
  if (!strcmp(a, "finit-module")) {
    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    return report(syscall(SYS_finit_module, fd, "", 0)) < 0;
  }
  if (!strcmp(a, "delete-module")) return report(syscall(SYS_delete_module, ARG(2), O_NONBLOCK)) < 0;
  if (!strcmp(a, "kexec-load")) return report(syscall(SYS_kexec_load, 0UL, 0UL, NULL, 0UL)) < 0;
  if (!strcmp(a, "kexec-file-load")) {
    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    return report(syscall(SYS_kexec_file_load, fd, -1, 1UL, "", 4UL /* KEXEC_FILE_NO_INITRAMFS */)) < 0;
  }
  if (!strcmp(a, "reboot")) return report(syscall(SYS_reboot, 0xfee1dead, 672274793, 0 /* CAD_OFF */, NULL)) < 0;
  if (!strcmp(a, "keyctl")) return report(syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* session */, 0)) < 0;
  if (!strcmp(a, "add-key")) return report(syscall(SYS_add_key, "user", "capsule", "data", 4, -3)) < 0;
  if (!strcmp(a, "request-key")) return report(syscall(SYS_request_key, "user", "capsule", NULL, 0)) < 0;
  if (!strcmp(a, "bpf")) {
    /* BPF_MAP_CREATE of an array map: valid for a privileged caller. */
    uint32_t attr[32];
    memset(attr, 0, sizeof attr);
    attr[0] = 2; /* BPF_MAP_TYPE_ARRAY */
    attr[1] = 4; attr[2] = 4; attr[3] = 1;
    return report(syscall(SYS_bpf, 0 /* BPF_MAP_CREATE */, attr, sizeof attr)) < 0;
  }
  if (!strcmp(a, "perf-event-open")) {
    uint32_t attr[32];
    memset(attr, 0, sizeof attr);
    attr[0] = 1;          /* PERF_TYPE_SOFTWARE */
    attr[1] = 128;        /* size (PERF_ATTR_SIZE_VER7) */
    /* config (u64 at byte 8) = 0: PERF_COUNT_SW_CPU_CLOCK */
    return report(syscall(SYS_perf_event_open, attr, 0, -1, -1, 0)) < 0;
  }
  if (!strcmp(a, "userfaultfd")) return report(syscall(SYS_userfaultfd, O_CLOEXEC)) < 0;
  if (!strcmp(a, "io-uring-setup")) {
    uint32_t params[30];
    memset(params, 0, sizeof params);
    return report(syscall(SYS_io_uring_setup, 8, params)) < 0;
  }
  if (!strcmp(a, "open-by-handle-at")) {
    unsigned char h[8 + 128];
    memset(h, 0, sizeof h);
    ((uint32_t *)h)[0] = 8; /* handle_bytes */
    ((int32_t *)h)[1] = 1;  /* handle_type: FILEID_INO32_GEN, root inode 2 */
    ((uint32_t *)h)[2] = 2;
    return report(syscall(SYS_open_by_handle_at, AT_FDCWD, h, O_RDONLY)) < 0;
  }
  if (!strcmp(a, "settimeofday")) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    tv.tv_sec += 86400 * 365;
    return report(settimeofday(&tv, NULL)) < 0;
  }
  if (!strcmp(a, "clock-settime")) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 86400 * 365;
    return report(clock_settime(CLOCK_REALTIME, &ts)) < 0;
  }
  if (!strcmp(a, "adjtimex")) {
    /* clock_adjtime(CLOCK_REALTIME) with ADJ_SETOFFSET: a step of +1 day. */
    long tx[26];
    memset(tx, 0, sizeof tx);
    tx[0] = 0x0100; /* modes = ADJ_SETOFFSET */
    tx[9] = 86400;  /* time.tv_sec (struct timex: 9th long field) */
    return report(syscall(SYS_clock_adjtime, CLOCK_REALTIME, tx)) < 0;
  }
  if (!strcmp(a, "sethostname")) return report(sethostname(ARG(2), strlen(ARG(2)))) < 0;
  if (!strcmp(a, "setdomainname")) return report(setdomainname(ARG(2), strlen(ARG(2)))) < 0;
  if (!strcmp(a, "mknod")) {
    mode_t type = !strcmp(ARG(3), "b") ? S_IFBLK : S_IFCHR;
    return report(mknod(ARG(2), type | 0600, makedev(atoi(ARG(4)), atoi(ARG(5))))) < 0;
  }
  if (!strcmp(a, "ioperm")) return report(syscall(SYS_ioperm, 0x80UL, 1UL, 1)) < 0;
  if (!strcmp(a, "iopl")) return report(syscall(SYS_iopl, 3)) < 0;
  if (!strcmp(a, "syslog")) {
    static char buf[4096];
    return report(syscall(SYS_syslog, 3 /* READ_ALL */, buf, (int)sizeof buf)) < 0;
  }
  if (!strcmp(a, "swapoff")) return report(syscall(SYS_swapoff, ARG(2))) < 0;
  if (!strcmp(a, "acct")) return report(syscall(SYS_acct, ARG(2))) < 0;
  if (!strcmp(a, "write")) {
    int fd = open(ARG(2), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return report(-1) < 0;
    return report(write(fd, ARG(3), strlen(ARG(3)))) < 0;
  }
  if (!strcmp(a, "read")) {
    /* Prints "OK <bytes read>" (up to 1 MiB) or the errno name. */
    int fd = open(ARG(2), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return report(-1) < 0;
    static char buf[1 << 20];
    long total = 0, n;
    while (total < (long)sizeof buf && (n = read(fd, buf, sizeof buf - total)) > 0) total += n;
    if (n < 0 && total == 0) return report(-1) < 0;
    printf("OK %ld\n", total);
    return 0;
  }
  if (!strcmp(a, "chroot-escape")) {
    /*
     * The classic double chroot (CAP_SYS_CHROOT is granted): chroot into a
     * subdir, climb out with "..", chroot("."). It can only reach the top of
     * the sandbox's own mount namespace. Prints that root's /etc/hostname.
     */
    mkdir("/tmp/jail", 0755);
    if (report(chroot("/tmp/jail")) < 0) return 1;
    for (int i = 0; i < 64; i++) (void)chdir("..");
    if (report(chroot(".")) < 0) return 1;
    char buf[256] = "";
    FILE *f = fopen(ARG(2), "r");
    if (!f) { printf("open %s: %s\n", ARG(2), errname(errno)); return 0; }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    printf("read %s: %s", ARG(2), buf);
    return 0;
  }
  fprintf(stderr, "kernel: unknown action %s\n", a);
  return 2;
}
