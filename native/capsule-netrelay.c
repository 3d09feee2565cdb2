/*
 * capsule-netrelay: a sandbox's only way to the network, and the daemon's
 * only way into it. One small process per sandbox with networking, started
 * by the daemon (through capsule-launcher) once the sandbox runs.
 *
 * Why it exists: the sandbox keeps its own network namespace with nothing in
 * it but loopback, so no packet it makes can leave it. This process sits in
 * that namespace (setns) while staying in the host's pid and mount
 * namespaces, where the sandbox cannot see, signal or trace it:
 *
 *  - every IPv4 and IPv6 address becomes local inside the namespace
 *    (`local default dev lo` routes), and an nftables table there redirects
 *    every TCP connection that is not to the sandbox's own loopback to this
 *    process and drops everything else except DNS to the resolver address
 *    (UDP elsewhere, ICMP). The sandbox has no CAP_NET_ADMIN, so it cannot
 *    change the routes or the table; and with no interface but lo, even a
 *    missing rule could only deliver a packet back into the sandbox;
 *  - each redirected connection is handed to the daemon's gateway socket (a
 *    unix socket on the host) with one header line naming the original
 *    destination (SO_ORIGINAL_DST) and, when it can be found, the process
 *    that made it. The daemon decides (policy, SNI/Host) and dials out itself;
 *  - DNS datagrams to the resolver address are framed to the daemon too,
 *    which answers them from the sandbox's policy;
 *  - the daemon connects to the control socket to reach a port inside the
 *    sandbox (port exposure): "PORT <n>\n", then one status byte (0, or the
 *    connect errno) and the stream.
 * It copies bytes and parses nothing the sandbox sends beyond framing.
 *
 * MicroVMs (--tap IFNAME --guest IPV4): the namespace is not the sandbox's
 * own but a host-side one made for its QEMU, holding only lo and the VM's tap.
 * The guest's kernel is not trusted to route: every address stays non-local
 * here, the tap gets TAP_ADDR/30 with the guest at --guest, and the resolver
 * address is local (on lo). The same table then also redirects every TCP
 * connection arriving from the tap to this process (prerouting), accepts from
 * the tap only those, DNS to the resolver and replies to what this process
 * opened, forwards nothing, and "PORT <n>" connects to the guest's address.
 *
 * Usage: capsule-netrelay --id ID --pid INIT_PID --gateway SOCK --control SOCK
 *          --resolver IPV4 --procs CGROUP_PROCS_FILE [--pidfile F] [--nft PATH]
 *          [--tap IFNAME --guest IPV4]
 * Prints "ready <tcp4-port> <tcp6-port>\n" once set up, then goes to the
 * background (the caller's process exits 0). Serves under a seccomp allowlist
 * (confine()). Exits when the sandbox's init exits, or on SIGTERM. Exit codes:
 * 2 usage, 3 sandbox gone, 4 namespace, 5 routes, 6 sockets, 7 nftables,
 * 8 (in the background) the seccomp filter could not be installed.
 *
 * Gateway wire format (relay -> daemon, one connection per flow):
 *   "FLOW 1 <id> <dst-ip> <dst-port> <src-ip> <src-port> <pid|0> <comm|->\n" then the raw stream.
 * DNS channel (one long-lived connection): "DNS 1 <id>\n", then frames both ways:
 *   u16 length (big-endian, of what follows) | u8 family (4 or 6) | u16 port | 16 address bytes | message
 *
 * capsule-build: cc=gcc static=yes (musl has no linux/ uapi headers here)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80 /* linux/netfilter_ipv4.h, absent from musl */
#endif
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include <stddef.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

#define MAX_PAIRS 1024
#define BUF_SIZE (256 * 1024)
#define MAX_DNS 4096
#define LINE_MAX_LEN 512

static const char *opt_id, *opt_gateway, *opt_control, *opt_resolver, *opt_procs, *opt_pidfile, *opt_tap, *opt_guest;
/* Tap mode: the host end of the VM's point-to-point /30 (the guest's address + or - 1, see main). */
static struct in_addr tap_addr, guest_addr;
static const char *opt_nft = "/usr/sbin/nft";
static int opt_pid;

static void fail(int code, const char *what) {
  fprintf(stderr, "capsule-netrelay: %s: %s\n", what, strerror(errno));
  exit(code);
}

/* ------------------------------------------------------------ routes (rtnetlink) */

struct nlreq {
  struct nlmsghdr nh;
  union {
    struct rtmsg rt;
    struct ifinfomsg ifi;
    struct ifaddrmsg ifa;
  } u;
  char attrs[128];
};

static void nl_attr(struct nlreq *r, unsigned short type, const void *data, unsigned short len) {
  struct rtattr *a = (struct rtattr *)((char *)r + NLMSG_ALIGN(r->nh.nlmsg_len));
  a->rta_type = type;
  a->rta_len = (unsigned short)RTA_LENGTH(len);
  memcpy(RTA_DATA(a), data, len);
  r->nh.nlmsg_len = NLMSG_ALIGN(r->nh.nlmsg_len) + RTA_ALIGN(a->rta_len);
}

/* Send one request and wait for its ack; returns 0 or -errno. EEXIST counts as done. */
static int nl_talk(int fd, struct nlreq *r) {
  static uint32_t seq;
  r->nh.nlmsg_seq = ++seq;
  r->nh.nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
  if (send(fd, r, r->nh.nlmsg_len, 0) < 0) return -errno;
  char buf[4096];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_seq != r->nh.nlmsg_seq) continue;
      if (h->nlmsg_type == NLMSG_ERROR) {
        int e = ((struct nlmsgerr *)NLMSG_DATA(h))->error;
        return e == -EEXIST ? 0 : e;
      }
    }
  }
}

static int link_up(int fd, int ifindex) {
  struct nlreq r;
  memset(&r, 0, sizeof r);
  r.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
  r.nh.nlmsg_type = RTM_NEWLINK;
  r.u.ifi.ifi_family = AF_UNSPEC;
  r.u.ifi.ifi_index = ifindex;
  r.u.ifi.ifi_flags = IFF_UP;
  r.u.ifi.ifi_change = IFF_UP;
  return nl_talk(fd, &r);
}

/* "local <dst>/<dst_len> dev lo table local": that destination is this namespace's own (dst NULL: default). */
static int local_route(int fd, int lo, int family, const void *dst, int dst_len) {
  struct nlreq r;
  memset(&r, 0, sizeof r);
  r.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
  r.nh.nlmsg_type = RTM_NEWROUTE;
  r.nh.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
  r.u.rt.rtm_family = (unsigned char)family;
  r.u.rt.rtm_dst_len = (unsigned char)dst_len;
  r.u.rt.rtm_table = RT_TABLE_LOCAL;
  r.u.rt.rtm_protocol = RTPROT_STATIC;
  r.u.rt.rtm_scope = RT_SCOPE_HOST;
  r.u.rt.rtm_type = RTN_LOCAL;
  if (dst) nl_attr(&r, RTA_DST, dst, family == AF_INET ? 4 : 16);
  uint32_t oif = (uint32_t)lo;
  nl_attr(&r, RTA_OIF, &oif, sizeof oif);
  return nl_talk(fd, &r);
}

/* Tap mode: TAP_ADDR/30 on the tap, the tap up, and the resolver address local (on lo); no other route. */
static int setup_tap(int fd, int lo) {
  int tap = (int)if_nametoindex(opt_tap);
  if (tap <= 0) return -ENODEV;
  struct nlreq a;
  memset(&a, 0, sizeof a);
  a.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifaddrmsg));
  a.nh.nlmsg_type = RTM_NEWADDR;
  a.nh.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
  a.u.ifa.ifa_family = AF_INET;
  a.u.ifa.ifa_prefixlen = 30;
  a.u.ifa.ifa_scope = RT_SCOPE_UNIVERSE;
  a.u.ifa.ifa_index = (unsigned)tap;
  nl_attr(&a, IFA_LOCAL, &tap_addr, 4);
  nl_attr(&a, IFA_ADDRESS, &tap_addr, 4);
  int e = nl_talk(fd, &a);
  if (e < 0) return e;
  e = link_up(fd, tap);
  if (e < 0) return e;
  struct in_addr res;
  if (inet_pton(AF_INET, opt_resolver, &res) != 1) return -EINVAL;
  return local_route(fd, lo, AF_INET, &res, 32);
}

/* lo up, and "local default dev lo table local" for both families: every address is this namespace's own.
 * Tap mode: lo up and setup_tap instead. */
static int setup_routes(int *have_v6) {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) return -errno;
  int lo = (int)if_nametoindex("lo");
  if (lo <= 0) return -ENODEV;
  int e = link_up(fd, lo);
  if (e < 0) return e;
  *have_v6 = 0;
  if (opt_tap) {
    e = setup_tap(fd, lo);
    close(fd);
    return e;
  }
  for (int fam = 0; fam < 2; fam++) {
    e = local_route(fd, lo, fam == 0 ? AF_INET : AF_INET6, NULL, 0);
    if (fam == 0 && e < 0) return e;
    if (fam == 1) *have_v6 = e == 0; /* IPv6 off in this kernel or namespace: IPv6 is simply unreachable */
  }
  close(fd);
  return 0;
}

/* ------------------------------------------------------------ nftables */

static int load_rules(int port4, int port6, int have_v6) {
  char rules[4096];
  char v6nat[128] = "";
  if (have_v6) snprintf(v6nat, sizeof v6nat, "    meta nfproto ipv6 meta l4proto tcp redirect to :%d\n", port6);
  /* Tap mode: the guest's TCP arrives on the tap (prerouting); in from the tap only what the relay
   * serves; this process's own connections to the guest (PORT) go out as they are; no forwarding. */
  char guest_out[128] = "", guest_ok[128] = "", tap_chains[1024] = "";
  if (opt_tap) {
    char g[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &guest_addr, g, sizeof g);
    snprintf(guest_out, sizeof guest_out, "    ip daddr %s meta l4proto tcp return\n", g);
    snprintf(guest_ok, sizeof guest_ok, "    ip daddr %s meta l4proto tcp accept\n", g);
    snprintf(tap_chains, sizeof tap_chains,
             "  chain nat_pre {\n"
             "    type nat hook prerouting priority -100; policy accept;\n"
             "    iifname \"%s\" meta nfproto ipv4 meta l4proto tcp redirect to :%d\n"
             "  }\n"
             "  chain filter_in {\n"
             "    type filter hook input priority 0; policy drop;\n"
             "    iifname \"lo\" accept\n"
             "    ct status dnat accept\n"
             "    ip daddr %s udp dport 53 accept\n"
             "    ip saddr %s meta l4proto tcp ct state established accept\n"
             "  }\n"
             "  chain filter_fwd {\n"
             "    type filter hook forward priority 0; policy drop;\n"
             "  }\n",
             opt_tap, port4, opt_resolver, g);
  }
  /* Redirected flows (ct status dnat) carry the sandbox's TCP to this process, both ways; everything
   * else that is not the sandbox's own loopback or DNS to the resolver is dropped. */
  snprintf(rules, sizeof rules,
           /* Declare then delete: a relay started again for the same sandbox replaces the old table. */
           "table inet capsule\n"
           "delete table inet capsule\n"
           "table inet capsule {\n"
           "  chain nat_out {\n"
           "    type nat hook output priority -100; policy accept;\n"
           "    ip daddr 127.0.0.0/8 return\n"
           "    ip6 daddr ::1 return\n"
           "%s"
           "    meta nfproto ipv4 meta l4proto tcp redirect to :%d\n"
           "%s"
           "  }\n"
           "  chain filter_out {\n"
           "    type filter hook output priority 0; policy drop;\n"
           "    ip daddr 127.0.0.0/8 accept\n"
           "    ip6 daddr ::1 accept\n"
           "    ct status dnat accept\n"
           "    ip daddr %s udp dport 53 accept\n"
           "    ip saddr %s udp sport 53 accept\n"
           "%s"
           "  }\n"
           "%s"
           "}\n",
           guest_out, port4, v6nat, opt_resolver, opt_resolver, guest_ok, tap_chains);
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(p[0], 0);
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) dup2(devnull, 1);
    execl(opt_nft, "nft", "-f", "-", (char *)NULL);
    _exit(127);
  }
  close(p[0]);
  size_t len = strlen(rules), off = 0;
  while (off < len) {
    ssize_t w = write(p[1], rules + off, len - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      break;
    }
    off += (size_t)w;
  }
  close(p[1]);
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    errno = WIFEXITED(st) && WEXITSTATUS(st) == 127 ? ENOENT : EINVAL;
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------ sockets */

static int listen_tcp(int fam, int *port) {
  int fd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  socklen_t len;
  if (fam == AF_INET) {
    struct sockaddr_in *s = (struct sockaddr_in *)&ss;
    s->sin_family = AF_INET;
    /* Tap mode: flows redirected in prerouting arrive addressed to the tap's own address. */
    s->sin_addr.s_addr = htonl(opt_tap ? INADDR_ANY : INADDR_LOOPBACK);
    len = sizeof *s;
  } else {
    int one = 1;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
    s->sin6_family = AF_INET6;
    s->sin6_addr = in6addr_loopback;
    len = sizeof *s;
  }
  if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 128) < 0) {
    close(fd);
    return -1;
  }
  getsockname(fd, (struct sockaddr *)&ss, &len);
  *port = ntohs(fam == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port : ((struct sockaddr_in6 *)&ss)->sin6_port);
  return fd;
}

static int bind_dns(void) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof one);
  struct sockaddr_in s;
  memset(&s, 0, sizeof s);
  s.sin_family = AF_INET;
  s.sin_port = htons(53);
  if (inet_pton(AF_INET, opt_resolver, &s.sin_addr) != 1) {
    errno = EINVAL;
    return -1;
  }
  if (bind(fd, (struct sockaddr *)&s, sizeof s) < 0) return -1;
  return fd;
}

static int listen_unix(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_un u;
  memset(&u, 0, sizeof u);
  u.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof u.sun_path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  strcpy(u.sun_path, path);
  unlink(path);
  mode_t old = umask(077);
  int r = bind(fd, (struct sockaddr *)&u, sizeof u);
  umask(old);
  if (r < 0 || listen(fd, 64) < 0) return -1;
  return fd;
}

/* A unix connection to the daemon's gateway, or -1. Blocking connect: local and immediate. */
static int connect_gateway(void) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_un u;
  memset(&u, 0, sizeof u);
  u.sun_family = AF_UNIX;
  strncpy(u.sun_path, opt_gateway, sizeof u.sun_path - 1);
  if (connect(fd, (struct sockaddr *)&u, sizeof u) < 0) {
    close(fd);
    return -1;
  }
  fcntl(fd, F_SETFL, O_NONBLOCK);
  /* The default unix buffers (~208 KiB) make bulk transfers wait on the daemon every fraction of a ms. */
  int big = 1 << 20;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  return fd;
}

static void addr_text(const struct sockaddr_storage *ss, char *ip, size_t iplen, int *port) {
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &s->sin6_addr, ip, (socklen_t)iplen);
    *port = ntohs(s->sin6_port);
  } else {
    const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &s->sin_addr, ip, (socklen_t)iplen);
    *port = ntohs(s->sin_port);
  }
}

/* ------------------------------------------------------------ which process made a connection */

/* "0100007F:1F90" style field of /proc/net/tcp{,6} -> bytes as the kernel prints them. */
static int proc_addr_matches(const char *field, const struct sockaddr_storage *ss) {
  char want[64];
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
    snprintf(want, sizeof want, "%08X:%04X", s->sin_addr.s_addr, ntohs(s->sin_port));
  } else {
    const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
    const uint32_t *w = (const uint32_t *)&s->sin6_addr;
    snprintf(want, sizeof want, "%08X%08X%08X%08X:%04X", w[0], w[1], w[2], w[3], ntohs(s->sin6_port));
  }
  return strcasecmp(field, want) == 0;
}

/* Inode of the sandbox-side socket whose local end is `src` and remote end `dst`, or 0. */
static unsigned long socket_inode(const struct sockaddr_storage *src, const struct sockaddr_storage *dst) {
  FILE *f = fopen(src->ss_family == AF_INET6 ? "/proc/self/net/tcp6" : "/proc/self/net/tcp", "re");
  if (!f) return 0;
  char line[512];
  unsigned long inode = 0;
  if (!fgets(line, sizeof line, f)) {
    fclose(f);
    return 0;
  }
  while (fgets(line, sizeof line, f)) {
    char local[64], rem[64];
    unsigned long ino;
    if (sscanf(line, "%*s %63s %63s %*s %*s %*s %*s %*s %*s %lu", local, rem, &ino) != 3) continue;
    if (proc_addr_matches(local, src) && proc_addr_matches(rem, dst)) {
      inode = ino;
      break;
    }
  }
  fclose(f);
  return inode;
}

/* The sandbox-side pid (NSpid's last field) and name of the process holding socket `inode`. Bounded work. */
static int find_process(unsigned long inode, int *nspid, char *comm, size_t commlen) {
  if (!inode || !opt_procs) return -1;
  FILE *f = fopen(opt_procs, "re");
  if (!f) return -1;
  char want[64];
  snprintf(want, sizeof want, "socket:[%lu]", inode);
  int pid, found = 0, procs = 0, fds = 0;
  while (!found && procs < 512 && fscanf(f, "%d", &pid) == 1) {
    procs++;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR *d = opendir(path);
    if (!d) continue;
    struct dirent *e;
    while ((e = readdir(d)) && fds < 8192) {
      if (e->d_name[0] == '.') continue;
      fds++;
      char lp[320], target[64];
      snprintf(lp, sizeof lp, "/proc/%d/fd/%s", pid, e->d_name);
      ssize_t n = readlink(lp, target, sizeof target - 1);
      if (n <= 0) continue;
      target[n] = 0;
      if (strcmp(target, want) == 0) {
        found = pid;
        break;
      }
    }
    closedir(d);
  }
  fclose(f);
  if (!found) return -1;
  char path[64], line[256];
  *nspid = 0;
  snprintf(path, sizeof path, "/proc/%d/status", found);
  FILE *s = fopen(path, "re");
  if (s) {
    while (fgets(line, sizeof line, s)) {
      if (strncmp(line, "NSpid:", 6) == 0) {
        char *last = strrchr(line, '\t');
        if (!last) last = strrchr(line, ' ');
        if (last) *nspid = atoi(last + 1);
      }
    }
    fclose(s);
  }
  snprintf(path, sizeof path, "/proc/%d/comm", found);
  FILE *c = fopen(path, "re");
  comm[0] = 0;
  if (c) {
    if (fgets(comm, (int)commlen, c)) {
      /* The sandbox chooses its process names: keep them to one safe token. */
      for (char *p = comm; *p; p++) {
        if (*p == '\n') {
          *p = 0;
          break;
        }
        if (!isgraph((unsigned char)*p)) *p = '_';
      }
    }
    fclose(c);
  }
  if (!comm[0]) snprintf(comm, commlen, "-");
  return 0;
}

/* ------------------------------------------------------------ byte pumps */

struct half {
  char *buf;
  size_t len, off;
  int eof; /* the reading side ended: shut down writes once drained */
};

struct pair {
  int used;
  int fd[2];
  struct half h[2]; /* h[0]: fd[0] -> fd[1]; h[1]: fd[1] -> fd[0] */
  int shut[2];      /* write side of fd[i] shut down */
  /* control connections: reading the request line, then connecting inside the namespace */
  int stage;        /* 0 pumping, 1 reading control request, 2 connecting to a port */
  char line[64];
  size_t linelen;
};

static struct pair pairs[MAX_PAIRS];

static struct pair *new_pair(int a, int b, int stage) {
  for (int i = 0; i < MAX_PAIRS; i++) {
    struct pair *p = &pairs[i];
    if (p->used) continue;
    memset(p, 0, sizeof *p);
    p->used = 1;
    p->fd[0] = a;
    p->fd[1] = b;
    p->stage = stage;
    return p;
  }
  return NULL;
}

static void drop_pair(struct pair *p) {
  for (int i = 0; i < 2; i++) {
    if (p->fd[i] >= 0) close(p->fd[i]);
    free(p->h[i].buf);
  }
  memset(p, 0, sizeof *p);
}

/* Move bytes for one direction; returns -1 when the pair should close. */
static int pump(struct pair *p, int dir) {
  struct half *h = &p->h[dir];
  int from = p->fd[dir], to = p->fd[1 - dir];
  if (!h->buf) {
    h->buf = malloc(BUF_SIZE);
    if (!h->buf) return -1;
  }
  if (h->len == 0 && !h->eof) {
    ssize_t n = read(from, h->buf, BUF_SIZE);
    if (n > 0) {
      h->len = (size_t)n;
      h->off = 0;
    } else if (n == 0) {
      h->eof = 1;
    } else if (errno != EAGAIN && errno != EINTR) {
      return -1;
    }
  }
  while (h->len > 0) {
    ssize_t w = send(to, h->buf + h->off, h->len, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      return -1;
    }
    h->off += (size_t)w;
    h->len -= (size_t)w;
  }
  if (h->eof && h->len == 0 && !p->shut[1 - dir]) {
    shutdown(to, SHUT_WR);
    p->shut[1 - dir] = 1;
  }
  return 0;
}

/* ------------------------------------------------------------ DNS channel */

static int dns_udp = -1, dns_ch = -1;
static char dns_in[2 + MAX_DNS + 19];
static size_t dns_in_len;

static void dns_channel_open(void) {
  if (dns_ch >= 0) return;
  dns_ch = connect_gateway();
  if (dns_ch < 0) return;
  char hello[128];
  int n = snprintf(hello, sizeof hello, "DNS 1 %s\n", opt_id);
  if (send(dns_ch, hello, (size_t)n, MSG_NOSIGNAL) != n) {
    close(dns_ch);
    dns_ch = -1;
  }
  dns_in_len = 0;
}

static void dns_from_sandbox(void) {
  unsigned char msg[MAX_DNS];
  struct sockaddr_in from;
  socklen_t fl = sizeof from;
  ssize_t n = recvfrom(dns_udp, msg, sizeof msg, 0, (struct sockaddr *)&from, &fl);
  if (n <= 0) return;
  dns_channel_open();
  if (dns_ch < 0) return; /* the daemon is away: the client retries or gives up */
  unsigned char frame[2 + 19 + MAX_DNS];
  size_t body = 19 + (size_t)n;
  frame[0] = (unsigned char)(body >> 8);
  frame[1] = (unsigned char)body;
  frame[2] = 4;
  memcpy(frame + 3, &from.sin_port, 2);
  memset(frame + 5, 0, 16);
  memcpy(frame + 5, &from.sin_addr, 4);
  memcpy(frame + 21, msg, (size_t)n);
  /* Best effort: a full channel drops the query like a lossy network would. */
  if (send(dns_ch, frame, 2 + body, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)(2 + body) && errno != EAGAIN) {
    close(dns_ch);
    dns_ch = -1;
  }
}

static void dns_from_daemon(void) {
  ssize_t n = read(dns_ch, dns_in + dns_in_len, sizeof dns_in - dns_in_len);
  if (n <= 0) {
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    close(dns_ch);
    dns_ch = -1;
    return;
  }
  dns_in_len += (size_t)n;
  for (;;) {
    if (dns_in_len < 2) return;
    size_t body = ((size_t)(unsigned char)dns_in[0] << 8) | (unsigned char)dns_in[1];
    if (body < 19 || body > 19 + MAX_DNS) {
      close(dns_ch);
      dns_ch = -1;
      return;
    }
    if (dns_in_len < 2 + body) return;
    struct sockaddr_in to;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    memcpy(&to.sin_port, dns_in + 3, 2);
    memcpy(&to.sin_addr, dns_in + 5, 4);
    sendto(dns_udp, dns_in + 21, body - 19, MSG_DONTWAIT, (struct sockaddr *)&to, sizeof to);
    memmove(dns_in, dns_in + 2 + body, dns_in_len - 2 - body);
    dns_in_len -= 2 + body;
  }
}

/* ------------------------------------------------------------ accepting */

static void accept_flow(int lfd) {
  struct sockaddr_storage peer;
  socklen_t pl = sizeof peer;
  int c = accept4(lfd, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (c < 0) return;
  struct sockaddr_storage dst;
  socklen_t dl = sizeof dst;
  memset(&dst, 0, sizeof dst);
  int r = peer.ss_family == AF_INET6 ? getsockopt(c, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &dst, &dl)
                                     : getsockopt(c, SOL_IP, SO_ORIGINAL_DST, &dst, &dl);
  if (r < 0) {
    /* Not redirected: someone inside connected to this port directly. Say so with our own address. */
    dl = sizeof dst;
    getsockname(c, (struct sockaddr *)&dst, &dl);
  }
  char dip[INET6_ADDRSTRLEN], sip[INET6_ADDRSTRLEN], comm[32] = "-";
  int dport, sport, nspid = 0;
  addr_text(&dst, dip, sizeof dip, &dport);
  addr_text(&peer, sip, sizeof sip, &sport);
  find_process(socket_inode(&peer, &dst), &nspid, comm, sizeof comm);
  int g = connect_gateway();
  if (g < 0) {
    close(c); /* the daemon is away: fail closed */
    return;
  }
  char head[LINE_MAX_LEN];
  int n = snprintf(head, sizeof head, "FLOW 1 %s %s %d %s %d %d %s\n", opt_id, dip, dport, sip, sport, nspid, comm);
  if (n <= 0 || n >= (int)sizeof head || send(g, head, (size_t)n, MSG_NOSIGNAL) != n || !new_pair(c, g, 0)) {
    close(c);
    close(g);
  }
}

static void accept_control(int lfd) {
  int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (c < 0) return;
  int big = 1 << 20; /* exposed ports: bulk responses flow to the daemon through this socket */
  setsockopt(c, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(c, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  if (!new_pair(c, -1, 1)) close(c);
}

/* Control connection: read "PORT <n>\n" or "PING\n". Returns -1 to close. */
static int control_read(struct pair *p) {
  ssize_t n = read(p->fd[0], p->line + p->linelen, sizeof p->line - 1 - p->linelen);
  if (n <= 0) return n < 0 && (errno == EAGAIN || errno == EINTR) ? 0 : -1;
  p->linelen += (size_t)n;
  p->line[p->linelen] = 0;
  char *nl = strchr(p->line, '\n');
  if (!nl) return p->linelen >= sizeof p->line - 1 ? -1 : 0;
  *nl = 0;
  if (strcmp(p->line, "PING") == 0) {
    send(p->fd[0], "PONG\n", 5, MSG_NOSIGNAL);
    return -1;
  }
  int port;
  char extra;
  if (sscanf(p->line, "PORT %d%c", &port, &extra) != 1 || port < 1 || port > 65535) return -1;
  int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = opt_tap ? guest_addr.s_addr : htonl(INADDR_LOOPBACK);
  p->fd[1] = s;
  if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
    unsigned char ok = 0;
    send(p->fd[0], &ok, 1, MSG_NOSIGNAL);
    p->stage = 0;
    return 0;
  }
  if (errno != EINPROGRESS) {
    unsigned char e = (unsigned char)(errno > 255 ? 255 : errno);
    send(p->fd[0], &e, 1, MSG_NOSIGNAL);
    return -1;
  }
  p->stage = 2;
  return 0;
}

static int control_connected(struct pair *p) {
  int err = 0;
  socklen_t el = sizeof err;
  getsockopt(p->fd[1], SOL_SOCKET, SO_ERROR, &err, &el);
  unsigned char b = (unsigned char)(err > 255 ? 255 : err);
  send(p->fd[0], &b, 1, MSG_NOSIGNAL);
  if (err) return -1;
  p->stage = 0;
  return 0;
}

/* ------------------------------------------------------------ confinement */

/*
 * Once set up, the relay only copies bytes, accepts, connects and reads /proc: a seccomp filter
 * (no_new_privs first) lets through just those syscalls, so a bug reached by the sandbox's bytes
 * cannot exec, ptrace, mount, setns or load modules with the relay's root. Anything else fails
 * with EPERM (not a kill: a forgotten libc internal then degrades one call, not the sandbox's network).
 */
static int confine(void) {
#if defined(__x86_64__)
  static const int allowed[] = {
      SYS_read, SYS_write, SYS_close, SYS_poll, SYS_ppoll, SYS_fstat, SYS_newfstatat, SYS_lseek,
      SYS_mmap, SYS_munmap, SYS_mremap, SYS_brk, SYS_rt_sigreturn, SYS_rt_sigprocmask, SYS_rt_sigaction,
      SYS_socket, SYS_connect, SYS_accept4, SYS_sendto, SYS_recvfrom, SYS_sendmsg, SYS_recvmsg,
      SYS_shutdown, SYS_getsockname, SYS_getpeername, SYS_setsockopt, SYS_getsockopt, SYS_fcntl,
      SYS_open, SYS_openat, SYS_getdents64, SYS_readlink, SYS_readlinkat, SYS_unlink, SYS_unlinkat,
      SYS_clock_gettime, SYS_gettimeofday, SYS_getpid, SYS_exit, SYS_exit_group, SYS_restart_syscall,
  };
  enum { N = sizeof allowed / sizeof allowed[0] };
  struct sock_filter f[4 + 2 * N + 1];
  int k = 0;
  f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
  f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
  f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
  f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
  for (int i = 0; i < (int)N; i++) {
    f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)allowed[i], 0, 1);
    f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  }
  f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA));
  struct sock_fprog prog = {.len = (unsigned short)k, .filter = f};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return -1;
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
#else
  return 0; /* other architectures: no filter yet (the relay still runs, unconfined) */
#endif
}

/* ------------------------------------------------------------ main */

static volatile sig_atomic_t stop;
static void on_term(int s) {
  (void)s;
  stop = 1;
}

int main(int argc, char **argv) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *k = argv[i], *v = argv[i + 1];
    if (!strcmp(k, "--id")) opt_id = v;
    else if (!strcmp(k, "--pid")) opt_pid = atoi(v);
    else if (!strcmp(k, "--gateway")) opt_gateway = v;
    else if (!strcmp(k, "--control")) opt_control = v;
    else if (!strcmp(k, "--resolver")) opt_resolver = v;
    else if (!strcmp(k, "--procs")) opt_procs = v;
    else if (!strcmp(k, "--pidfile")) opt_pidfile = v;
    else if (!strcmp(k, "--nft")) opt_nft = v;
    else if (!strcmp(k, "--tap")) opt_tap = v;
    else if (!strcmp(k, "--guest")) opt_guest = v;
    else {
      fprintf(stderr, "capsule-netrelay: unknown option %s\n", k);
      return 2;
    }
  }
  if (!opt_id || opt_pid <= 0 || !opt_gateway || !opt_control || !opt_resolver || strlen(opt_id) > 64) {
    fprintf(stderr, "capsule-netrelay: usage: --id ID --pid PID --gateway SOCK --control SOCK --resolver IP [--procs FILE]\n");
    return 2;
  }
  if ((opt_tap == NULL) != (opt_guest == NULL) || (opt_tap && (strlen(opt_tap) >= IFNAMSIZ || inet_pton(AF_INET, opt_guest, &guest_addr) != 1))) {
    fprintf(stderr, "capsule-netrelay: --tap IFNAME and --guest IPV4 go together\n");
    return 2;
  }
  if (opt_tap) {
    /* The /30's two usable addresses: the guest is one, the tap the other. */
    uint32_t g = ntohl(guest_addr.s_addr);
    if ((g & 3) != 1 && (g & 3) != 2) {
      fprintf(stderr, "capsule-netrelay: --guest must be a usable address of a /30\n");
      return 2;
    }
    tap_addr.s_addr = htonl((g & 3) == 1 ? g + 1 : g - 1);
  }
  for (const char *p = opt_id; *p; p++)
    if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.') {
      fprintf(stderr, "capsule-netrelay: bad id\n");
      return 2;
    }
  struct rlimit rl = {4096, 4096};
  setrlimit(RLIMIT_NOFILE, &rl);

  /* Watch the sandbox's init: when it exits, so do we (the namespace goes with it). */
  int pidfd = (int)syscall(SYS_pidfd_open, opt_pid, 0);
  if (pidfd < 0) fail(3, "pidfd_open of the sandbox init");
  char nspath[64];
  snprintf(nspath, sizeof nspath, "/proc/%d/ns/net", opt_pid);
  int nsfd = open(nspath, O_RDONLY | O_CLOEXEC);
  if (nsfd < 0) fail(3, "open the sandbox network namespace");
  /* The control socket is made on the host side: only its path matters, and the sandbox cannot see it. */
  int ctl = listen_unix(opt_control);
  if (ctl < 0) fail(6, "control socket");
  if (setns(nsfd, CLONE_NEWNET) < 0) fail(4, "setns into the sandbox network namespace");
  close(nsfd);

  int have_v6 = 0;
  int e = setup_routes(&have_v6);
  if (e < 0) {
    errno = -e;
    fail(5, "routes");
  }
  int port4 = 0, port6 = 0;
  int l4 = listen_tcp(AF_INET, &port4);
  if (l4 < 0) fail(6, "listen on 127.0.0.1");
  int l6 = have_v6 ? listen_tcp(AF_INET6, &port6) : -1;
  if (l6 < 0) have_v6 = 0;
  dns_udp = bind_dns();
  if (dns_udp < 0) fail(6, "bind the resolver address");
  if (load_rules(port4, port6, have_v6) < 0) fail(7, "nft (apt-get install nftables)");

  /* Ready: hand the caller a pid and go to the background; the launcher (a subreaper) reaps us. */
  fflush(stdout);
  pid_t child = fork();
  if (child < 0) fail(6, "fork");
  if (child > 0) {
    if (opt_pidfile) {
      char tmp[PATH_MAX];
      snprintf(tmp, sizeof tmp, "%s.tmp", opt_pidfile);
      FILE *pf = fopen(tmp, "we");
      if (!pf || fprintf(pf, "%d\n", child) < 0 || fclose(pf) != 0 || rename(tmp, opt_pidfile) < 0) {
        kill(child, SIGKILL);
        fail(6, "pid file");
      }
    }
    printf("ready %d %d\n", port4, port6);
    return 0;
  }
  setsid();
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull >= 0) {
    dup2(devnull, 0);
    dup2(devnull, 1);
    dup2(devnull, 2);
  }
  signal(SIGPIPE, SIG_IGN);
  signal(SIGTERM, on_term);
  signal(SIGINT, on_term);
  if (confine() < 0) return 8; /* refuse to serve unconfined where confinement exists */

  static struct pollfd pfd[6 + 2 * MAX_PAIRS]; /* 5 fixed, the DNS channel, two per pair */
  static int who[6 + 2 * MAX_PAIRS];           /* pair index * 2 + side; -2 for the DNS channel */
  while (!stop) {
    int n = 0;
    pfd[n++] = (struct pollfd){.fd = pidfd, .events = POLLIN};
    pfd[n++] = (struct pollfd){.fd = ctl, .events = POLLIN};
    pfd[n++] = (struct pollfd){.fd = l4, .events = POLLIN};
    pfd[n++] = (struct pollfd){.fd = l6, .events = POLLIN};
    pfd[n++] = (struct pollfd){.fd = dns_udp, .events = POLLIN};
    int fixed = n;
    if (dns_ch >= 0) {
      pfd[n] = (struct pollfd){.fd = dns_ch, .events = POLLIN};
      who[n++] = -2;
    }
    for (int i = 0; i < MAX_PAIRS; i++) {
      struct pair *p = &pairs[i];
      if (!p->used) continue;
      for (int s = 0; s < 2; s++) {
        if (p->fd[s] < 0) continue;
        short ev = 0;
        if (p->stage == 1 && s == 0) ev = POLLIN;
        else if (p->stage == 2 && s == 1) ev = POLLOUT;
        else if (p->stage == 0) {
          /* read when our buffer toward the other side is empty; write when we hold bytes for this side */
          if (p->h[s].len == 0 && !p->h[s].eof) ev |= POLLIN;
          if (p->h[1 - s].len > 0) ev |= POLLOUT;
        }
        pfd[n] = (struct pollfd){.fd = p->fd[s], .events = ev};
        who[n++] = i * 2 + s;
      }
    }
    int r = poll(pfd, (nfds_t)n, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pfd[0].revents) break; /* the sandbox's init exited */
    if (pfd[1].revents & POLLIN) accept_control(ctl);
    if (pfd[2].revents & POLLIN) accept_flow(l4);
    if (l6 >= 0 && (pfd[3].revents & POLLIN)) accept_flow(l6);
    if (pfd[4].revents & POLLIN) dns_from_sandbox();
    for (int k = fixed; k < n; k++) {
      if (!pfd[k].revents) continue;
      if (who[k] == -2) {
        if (dns_ch >= 0) dns_from_daemon();
        continue;
      }
      struct pair *p = &pairs[who[k] / 2];
      int s = who[k] % 2;
      if (!p->used || p->fd[s] != pfd[k].fd) continue; /* closed earlier in this round */
      int bad = 0;
      if (p->stage == 1) bad = control_read(p) < 0;
      else if (p->stage == 2) bad = control_connected(p) < 0;
      else if ((pfd[k].revents & POLLERR) || ((pfd[k].revents & POLLHUP) && p->h[s].eof && p->h[1 - s].len == 0)) {
        bad = 1; /* this side is gone both ways and nothing is owed to it */
      } else {
        if (pfd[k].revents & (POLLIN | POLLHUP)) bad |= pump(p, s) < 0;
        if (!bad && (pfd[k].revents & POLLOUT)) bad |= pump(p, 1 - s) < 0;
        if (!bad && p->h[0].eof && p->h[1].eof && p->h[0].len == 0 && p->h[1].len == 0) bad = 1;
      }
      if (bad) drop_pair(p);
    }
  }
  unlink(opt_control);
  return 0;
}
