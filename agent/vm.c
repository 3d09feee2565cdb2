/*
 * The microVM side of the agent: guest init and the virtio-serial stream
 * multiplexer (see vm.h). The host is trusted; still, whatever the port
 * carries is checked (frame size, stream count, windows), and a violation
 * drops every stream and waits for the host's next SYNC.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "vm.h"
#include "wire.h"

/* ------------------------------------------------------------------ */
/* guest init                                                          */

static void die(const char *what) {
  fprintf(stderr, "capsule-vm-init: %s: %s\n", what, strerror(errno));
  sync();
  reboot(RB_POWER_OFF); /* -no-reboot: QEMU exits, and the daemon sees the boot fail */
  _exit(1);
}

static void sleep_ms(long ms) {
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
  nanosleep(&ts, NULL);
}

/* Modules listed in /modules/order (the daemon writes them in dependency order); built-in ones are simply absent. */
static void load_modules(void) {
  FILE *f = fopen("/modules/order", "r");
  if (!f) return;
  char line[256], p[300];
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    if (!line[0] || strchr(line, '/')) continue;
    snprintf(p, sizeof p, "/modules/%s", line);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST) fprintf(stderr, "capsule-vm-init: module %s: %s\n", line, strerror(errno));
    close(fd);
  }
  fclose(f);
}

/* The entry of sysfs dir `dir` (names starting with `prefix`, or any but dot entries) whose attribute file
 * `attr` reads `want`, as /dev/<entry>; 0 when found. */
static int find_sysfs(const char *dir, const char *prefix, const char *attr, const char *want, char *out, size_t outlen) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  struct dirent *e;
  int found = -1;
  while ((e = readdir(d))) {
    if (prefix ? strncmp(e->d_name, prefix, strlen(prefix)) != 0 : e->d_name[0] == '.') continue;
    char p[300], buf[64] = "";
    snprintf(p, sizeof p, "%s/%s/%s", dir, e->d_name, attr);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) continue;
    buf[n] = 0;
    buf[strcspn(buf, "\n")] = 0;
    if (!strcmp(buf, want)) { snprintf(out, outlen, "/dev/%s", e->d_name); found = 0; break; }
  }
  closedir(d);
  return found;
}

/* The block device whose virtio serial is `serial` (the daemon names its disks), as /dev/vdX. */
static int find_disk(const char *serial, char *out, size_t outlen) {
  return find_sysfs("/sys/block", "vd", "serial", serial, out, outlen);
}

/* The virtio-serial port named `name`, as /dev/vportNpM. */
static int find_port(const char *name, char *out, size_t outlen) {
  return find_sysfs("/sys/class/virtio-ports", NULL, "name", name, out, outlen);
}

/* The value of `key` (e.g. "capsule.id=") on the kernel command line, into out; 0 when found. */
static int cmdline_param(const char *key, char *out, size_t outlen) {
  char buf[4096];
  int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  char *p = strstr(buf, key);
  if (!p) return -1;
  p += strlen(key);
  size_t len = strcspn(p, " \n");
  if (len == 0 || len >= outlen) return -1;
  memcpy(out, p, len);
  out[len] = 0;
  return 0;
}

/* capsule.id=ID: the sandbox id, as the hostname. */
static void set_hostname(void) {
  char id[64];
  if (cmdline_param("capsule.id=", id, sizeof id) == 0) sethostname(id, strlen(id));
}

static int write_file(const char *p, const char *v) {
  int fd = open(p, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = write(fd, v, strlen(v));
  close(fd);
  return n == (ssize_t)strlen(v) ? 0 : -1;
}

/* capsule.pids=N: the sandbox's process limit, as a cgroup v2 pids.max around the agent (and so every
 * command). Inside the guest only: the VM's own size is what bounds the host. */
static void limit_pids(void) {
  char pids[24];
  if (cmdline_param("capsule.pids=", pids, sizeof pids)) return;
  if (mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL)) {
    fprintf(stderr, "capsule-vm-init: cgroup2: %s (no pids limit)\n", strerror(errno));
    return;
  }
  mkdir("/sys/fs/cgroup/sandbox", 0755);
  if (write_file("/sys/fs/cgroup/cgroup.subtree_control", "+pids") || write_file("/sys/fs/cgroup/sandbox/pids.max", pids) ||
      write_file("/sys/fs/cgroup/sandbox/cgroup.procs", "1"))
    fprintf(stderr, "capsule-vm-init: pids limit: %s\n", strerror(errno));
}

/* Every process the agent starts inherits no_new_privs from it, as in a container: a setuid file (one a command
 * or the files API made) does not make the sandbox's user guest root. capsule.setuid=1 (a template that asks for
 * setuid programs, e.g. sudo) leaves it off. PID 1 itself never execs, so the flag costs it nothing. */
static void no_new_privs(void) {
  char v[8];
  if (cmdline_param("capsule.setuid=", v, sizeof v) == 0 && !strcmp(v, "1")) return;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("no_new_privs");
}

static void loopback_up(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strcpy(ifr.ifr_name, "lo");
  if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags |= IFF_UP;
    ioctl(s, SIOCSIFFLAGS, &ifr);
  }
  close(s);
}

/*
 * capsule.net=GUEST_IP (gateway mode; absent: the VM has no network device): eth0 gets GUEST_IP/30 and a
 * default route to the other usable address of that /30, the host's end of the tap. What leaves eth0 is
 * decided on the host (its namespace and relay), so a guest root that changes any of this gains nothing.
 */
static void network_up(void) {
  char ip[32];
  if (cmdline_param("capsule.net=", ip, sizeof ip)) return;
  struct in_addr g;
  if (inet_pton(AF_INET, ip, &g) != 1) {
    fprintf(stderr, "capsule-vm-init: bad capsule.net=%s\n", ip);
    return;
  }
  uint32_t h = ntohl(g.s_addr);
  struct in_addr gw = { htonl((h & 3) == 1 ? h + 1 : h - 1) };
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return;
  struct ifreq ifr;
  int found = 0;
  for (int i = 0; i < 500 && !found; i++) { /* the driver binds as its module loads; wait up to 5 s anyway */
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "eth0");
    found = ioctl(s, SIOCGIFFLAGS, &ifr) == 0;
    if (!found) sleep_ms(10);
  }
  if (!found) {
    fprintf(stderr, "capsule-vm-init: no eth0: %s\n", strerror(errno));
    close(s);
    return;
  }
  struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
  memset(&ifr.ifr_addr, 0, sizeof ifr.ifr_addr);
  sin->sin_family = AF_INET;
  sin->sin_addr = g;
  if (ioctl(s, SIOCSIFADDR, &ifr)) fprintf(stderr, "capsule-vm-init: eth0 address: %s\n", strerror(errno));
  memset(&ifr.ifr_addr, 0, sizeof ifr.ifr_addr);
  sin->sin_family = AF_INET;
  sin->sin_addr.s_addr = htonl(0xfffffffcu);
  if (ioctl(s, SIOCSIFNETMASK, &ifr)) fprintf(stderr, "capsule-vm-init: eth0 netmask: %s\n", strerror(errno));
  if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr)) fprintf(stderr, "capsule-vm-init: eth0 up: %s\n", strerror(errno));
  }
  struct rtentry rt;
  memset(&rt, 0, sizeof rt);
  ((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
  ((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
  ((struct sockaddr_in *)&rt.rt_gateway)->sin_family = AF_INET;
  ((struct sockaddr_in *)&rt.rt_gateway)->sin_addr = gw;
  rt.rt_flags = RTF_UP | RTF_GATEWAY;
  if (ioctl(s, SIOCADDRT, &rt)) fprintf(stderr, "capsule-vm-init: default route: %s\n", strerror(errno));
  close(s);
}

static void wait_for(int (*find)(const char *, char *, size_t), const char *name, char *out, size_t outlen) {
  for (int i = 0; i < 1000; i++) { /* 10 s */
    if (find(name, out, outlen) == 0) return;
    sleep_ms(10);
  }
  errno = ENODEV;
  die(name);
}

int vm_init(void) {
  umask(022);
  mkdir("/proc", 0555);
  mkdir("/sys", 0555);
  mkdir("/dev", 0755);
  if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL)) die("mount /proc");
  if (mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL)) die("mount /sys");
  if (mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755")) die("mount /dev");
  load_modules();

  char lower[300], rw[300], port[300];
  wait_for(find_disk, "capsule-lower", lower, sizeof lower);
  wait_for(find_disk, "capsule-rw", rw, sizeof rw);
  mkdir("/mnt", 0755);
  mkdir("/mnt/lower", 0755);
  mkdir("/mnt/rw", 0755);
  mkdir("/newroot", 0755);
  if (mount(lower, "/mnt/lower", "ext4", MS_RDONLY | MS_NODEV, "noload")) die("mount the template image");
  /* discard: blocks the guest frees go back to the host (QEMU's discard=unmap punches holes in disk.img). */
  if (mount(rw, "/mnt/rw", "ext4", MS_NODEV, "discard")) die("mount the sandbox disk");
  mkdir("/mnt/rw/upper", 0755);
  mkdir("/mnt/rw/work", 0700);
  if (mount("overlay", "/newroot", "overlay", 0, "lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work")) die("mount the root overlay");

  static const char *const moved[] = { "proc", "sys", "dev" };
  for (size_t i = 0; i < sizeof moved / sizeof *moved; i++) {
    char src[32], dst[64];
    snprintf(src, sizeof src, "/%s", moved[i]);
    snprintf(dst, sizeof dst, "/newroot/%s", moved[i]);
    mkdir(dst, 0755);
    if (mount(src, dst, NULL, MS_MOVE, NULL)) die(dst);
  }
  mkdir("/newroot/dev/pts", 0755);
  mkdir("/newroot/dev/shm", 01777);
  if (mount("devpts", "/newroot/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")) die("mount /dev/pts");
  unlink("/newroot/dev/ptmx");
  if (symlink("pts/ptmx", "/newroot/dev/ptmx")) die("/dev/ptmx");
  if (mount("shm", "/newroot/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")) die("mount /dev/shm");
  mkdir("/newroot/tmp", 01777);

  /* switch_root: the initramfs stays underneath (nothing of the host is in it). */
  if (chdir("/newroot")) die("chdir /newroot");
  if (mount(".", "/", NULL, MS_MOVE, NULL)) die("move the root");
  if (chroot(".")) die("chroot");
  if (chdir("/")) die("chdir /");
  set_hostname();
  limit_pids();
  loopback_up();
  network_up();
  no_new_privs();

  wait_for(find_port, "capsule-agent", port, sizeof port);
  int fd = open(port, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) die(port);
  return fd;
}

/* ------------------------------------------------------------------ */
/* stream multiplexer                                                  */

struct stream {
  int used;
  uint32_t id;
  int fd;           /* our end of the socketpair; the agent holds the other */
  struct buf out;   /* from the host, not yet written to fd (<= MUX_WINDOW) */
  uint32_t credit;  /* bytes we may still send the host on this stream */
  uint32_t written; /* written to fd since the last CREDIT */
  int closing;      /* the host closed it: flush out, then free */
};

static struct stream streams[MUX_MAX_STREAMS];
static int port = -1;
static int synced;          /* a SYNC has been seen since the last violation or disconnect */
static int host_here = 1;   /* 0: the host side is closed; look again at retry_at */
static int64_t retry_at;
static struct buf pin, pout;

static void out_frame(uint8_t type, uint32_t sid, const void *p, size_t len) {
  if (buf_reserve(&pout, MUX_HDR + len)) return; /* out of memory: the host will time out */
  uint8_t *h = buf_tail(&pout);
  h[0] = type;
  h[1] = 0;
  h[2] = (uint8_t)(len >> 8);
  h[3] = (uint8_t)len;
  wr_u32(h + 4, sid);
  if (len) memcpy(h + MUX_HDR, p, len);
  pout.len += MUX_HDR + len;
}

static struct stream *stream_find(uint32_t id) {
  for (int i = 0; i < MUX_MAX_STREAMS; i++)
    if (streams[i].used && streams[i].id == id) return &streams[i];
  return NULL;
}

static void stream_free(struct stream *s) {
  if (s->fd >= 0) close(s->fd); /* the agent's connection sees EOF and ends */
  buf_free(&s->out);
  memset(s, 0, sizeof *s);
  s->fd = -1;
}

static void drop_all(void) {
  for (int i = 0; i < MUX_MAX_STREAMS; i++)
    if (streams[i].used) stream_free(&streams[i]);
}

static void violation(void) {
  drop_all();
  synced = 0;
  pout.off = pout.len = 0;
}

static void host_gone(int64_t now) {
  drop_all();
  synced = 0;
  host_here = 0;
  retry_at = now + 100;
  pin.off = pin.len = 0;
  pout.off = pout.len = 0;
}

static void send_credit(struct stream *s) {
  uint8_t b[4];
  wr_u32(b, s->written);
  out_frame(MT_CREDIT, s->id, b, 4);
  s->written = 0;
}

static void on_frame(uint8_t type, uint32_t sid, const uint8_t *p, uint32_t len) {
  if (type == MT_SYNC) {
    if (len != 12 || memcmp(p, MUX_MAGIC, 12)) { violation(); return; }
    drop_all();
    pout.off = pout.len = 0;
    out_frame(MT_SYNC, sid, MUX_MAGIC, 12); /* the same nonce back: the host knows which SYNC this answers */
    synced = 1;
    return;
  }
  struct stream *s = stream_find(sid);
  switch (type) {
    case MT_OPEN: {
      if (s || len) { violation(); return; }
      for (int i = 0; i < MUX_MAX_STREAMS; i++)
        if (!streams[i].used) { s = &streams[i]; break; }
      int sv[2];
      if (!s || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv)) {
        out_frame(MT_CLOSE, sid, NULL, 0);
        return;
      }
      if (conn_adopt(sv[0])) { close(sv[1]); out_frame(MT_CLOSE, sid, NULL, 0); return; }
      memset(s, 0, sizeof *s);
      s->used = 1;
      s->id = sid;
      s->fd = sv[1];
      s->credit = MUX_WINDOW;
      return;
    }
    case MT_DATA:
      if (!s || s->closing) return; /* late data for a stream we closed */
      if (s->out.len + len > MUX_WINDOW || buf_reserve(&s->out, len)) { violation(); return; }
      memcpy(buf_tail(&s->out), p, len);
      s->out.len += len;
      return;
    case MT_CLOSE:
      if (len) { violation(); return; }
      if (!s) return;
      if (s->out.len == 0) stream_free(s);
      else s->closing = 1;
      return;
    case MT_CREDIT: {
      if (len != 4) { violation(); return; }
      if (!s) return;
      uint64_t c = (uint64_t)s->credit + rd32(p);
      if (c > MUX_WINDOW) { violation(); return; }
      s->credit = (uint32_t)c;
      return;
    }
    default:
      violation();
  }
}

/* Not synced: skip to the next SYNC frame (header + magic), keeping a tail that may be its start. */
static int find_sync(void) {
  const size_t flen = MUX_HDR + 12;
  uint8_t *h = buf_head(&pin);
  for (size_t i = 0; i + flen <= pin.len; i++) {
    if (h[i] == MT_SYNC && h[i + 1] == 0 && h[i + 2] == 0 && h[i + 3] == 12 && !memcmp(h + i + MUX_HDR, MUX_MAGIC, 12)) {
      buf_consume(&pin, i);
      return 1;
    }
  }
  if (pin.len >= flen) buf_consume(&pin, pin.len - (flen - 1));
  return 0;
}

static void parse(void) {
  for (;;) {
    if (!synced && !find_sync()) return;
    if (pin.len < MUX_HDR) return;
    uint8_t *h = buf_head(&pin);
    uint32_t len = ((uint32_t)h[2] << 8) | h[3];
    if (h[1] != 0 || len > MUX_MAX_DATA) {
      violation();
      buf_consume(&pin, 1);
      continue;
    }
    if (pin.len < MUX_HDR + len) return;
    /* Only a SYNC is read while not synced (find_sync stopped at one). */
    on_frame(h[0], rd32(h + 4), h + MUX_HDR, len);
    buf_consume(&pin, MUX_HDR + len);
  }
}

static void port_read(void) {
  if (buf_reserve(&pin, 65536)) { violation(); pin.off = pin.len = 0; return; }
  ssize_t n = read(port, buf_tail(&pin), 65536);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { host_gone(now_ms()); return; }
  if (n < 0) return;
  pin.len += (size_t)n;
  parse();
}

static void port_flush(void) {
  while (pout.len) {
    ssize_t n = write(port, buf_head(&pout), pout.len);
    if (n > 0) { buf_consume(&pout, (size_t)n); continue; }
    if (n < 0 && errno == EINTR) continue;
    return; /* EAGAIN, or the host left (its POLLHUP says so) */
  }
}

/* The agent wrote on a stream's socketpair: send it on, as far as the host's window and our queue allow. */
static void stream_read(struct stream *s) {
  uint8_t b[MUX_MAX_DATA];
  size_t want = s->credit < sizeof b ? s->credit : sizeof b;
  if (!want) return;
  ssize_t n = read(s->fd, b, want);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) { /* the agent closed the connection */
    out_frame(MT_CLOSE, s->id, NULL, 0);
    stream_free(s);
    return;
  }
  s->credit -= (uint32_t)n;
  out_frame(MT_DATA, s->id, b, (size_t)n);
}

static void stream_write(struct stream *s) {
  while (s->out.len) {
    ssize_t n = write(s->fd, buf_head(&s->out), s->out.len);
    if (n > 0) { buf_consume(&s->out, (size_t)n); s->written += (uint32_t)n; continue; }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    out_frame(MT_CLOSE, s->id, NULL, 0); /* the agent is gone */
    stream_free(s);
    return;
  }
  if (s->closing && !s->out.len) { stream_free(s); return; }
  if (s->written && (s->out.len == 0 || s->written >= MUX_WINDOW / 4)) send_credit(s);
}

void vm_mux_start(int fd) {
  port = fd;
  for (int i = 0; i < MUX_MAX_STREAMS; i++) streams[i].fd = -1;
}

size_t vm_nfds(void) { return port >= 0 ? 1 + MUX_MAX_STREAMS : 0; }

/* tags: -1 the port, else a stream's index. */
size_t vm_fill(struct pollfd *pfd, int *tags) {
  size_t n = 0;
  if (port < 0 || !host_here) return 0;
  pfd[n].fd = port;
  pfd[n].events = (short)(POLLIN | (pout.len ? POLLOUT : 0));
  tags[n++] = -1;
  for (int i = 0; i < MUX_MAX_STREAMS; i++) {
    struct stream *s = &streams[i];
    if (!s->used) continue;
    short ev = 0;
    if (!s->closing && s->credit && pout.len < MUX_OUT_HIGH) ev |= POLLIN;
    if (s->out.len) ev |= POLLOUT;
    if (!ev) continue;
    pfd[n].fd = s->fd;
    pfd[n].events = ev;
    tags[n++] = i;
  }
  return n;
}

void vm_event(int tag, short revents) {
  if (tag < 0) {
    if (revents & POLLOUT) port_flush();
    if (revents & POLLIN) port_read();
    else if (revents & (POLLHUP | POLLERR)) host_gone(now_ms());
    port_flush();
    return;
  }
  if (tag >= MUX_MAX_STREAMS) return;
  struct stream *s = &streams[tag];
  if (!s->used) return;
  if (revents & POLLOUT) stream_write(s);
  if (s->used && (revents & (POLLIN | POLLHUP | POLLERR))) stream_read(s);
  port_flush();
}

int64_t vm_timeout_ms(int64_t now) {
  if (port < 0 || host_here) return -1;
  return retry_at > now ? retry_at - now : 0;
}

/* While the host is away the port reports POLLHUP at once: look again now and then instead of spinning. */
void vm_tick(int64_t now) {
  if (port < 0 || host_here || now < retry_at) return;
  struct pollfd p = { .fd = port, .events = POLLIN };
  if (poll(&p, 1, 0) >= 0 && (p.revents & POLLHUP) && !(p.revents & POLLIN)) { retry_at = now + 100; return; }
  host_here = 1;
}
