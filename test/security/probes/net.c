/*
 * net: sockets a sandbox should not get, and reachability checks.
 * Usage: net <action> [args]; prints OK or the errno name.
 */
#include "probe.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef AF_PACKET
#define AF_PACKET 17
#endif

/* Non-blocking TCP connect with a timeout in ms. */
static int tcp_connect(const char *ip, int port, int ms) {
  struct sockaddr_storage ss;
  socklen_t len;
  memset(&ss, 0, sizeof ss);
  int fam = strchr(ip, ':') ? AF_INET6 : AF_INET;
  if (fam == AF_INET) {
    struct sockaddr_in *s = (struct sockaddr_in *)&ss;
    s->sin_family = AF_INET;
    s->sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, ip, &s->sin_addr);
    len = sizeof *s;
  } else {
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
    s->sin6_family = AF_INET6;
    s->sin6_port = htons((uint16_t)port);
    inet_pton(AF_INET6, ip, &s->sin6_addr);
    len = sizeof *s;
  }
  int fd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, (struct sockaddr *)&ss, len) == 0) return fd;
  if (errno != EINPROGRESS) return -1;
  struct pollfd p = {fd, POLLOUT, 0};
  int n = poll(&p, 1, ms);
  if (n == 0) { errno = ETIMEDOUT; return -1; }
  int err = 0;
  socklen_t el = sizeof err;
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
  if (err) { errno = err; return -1; }
  return fd;
}

static socklen_t abstract_addr(struct sockaddr_un *u, const char *name) {
  memset(u, 0, sizeof *u);
  u->sun_family = AF_UNIX;
  size_t n = strlen(name);
  if (n > sizeof u->sun_path - 2) n = sizeof u->sun_path - 2;
  memcpy(u->sun_path + 1, name, n); /* leading NUL: abstract namespace */
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

int main(int argc, char **argv) {
  const char *a = ARG(1);
  if (!strcmp(a, "raw-socket")) return report(socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)) < 0;
  if (!strcmp(a, "raw6-socket")) return report(socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6)) < 0;
  if (!strcmp(a, "packet-socket")) return report(socket(AF_PACKET, SOCK_RAW, htons(0x0003 /* ETH_P_ALL */))) < 0;
  if (!strcmp(a, "netlink-route-write")) {
    /* A netlink socket is fine; changing links/addresses needs CAP_NET_ADMIN (checked by `ip`). */
    return report(socket(AF_NETLINK, SOCK_RAW, 0)) < 0;
  }
  if (!strcmp(a, "connect")) return report(tcp_connect(ARG(2), atoi(ARG(3)), argc > 4 ? atoi(ARG(4)) : 2000)) < 0;
  if (!strcmp(a, "unix-listen")) {
    /* Bind an abstract unix socket, print OK, keep it for N seconds. */
    struct sockaddr_un u;
    socklen_t l = abstract_addr(&u, ARG(2));
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (bind(fd, (struct sockaddr *)&u, l) < 0 || listen(fd, 4) < 0) return report(-1) < 0;
    report(0);
    fclose(stdout);
    fclose(stderr);
    sleep((unsigned)atoi(ARG(3)));
    return 0;
  }
  if (!strcmp(a, "unix-connect")) {
    struct sockaddr_un u;
    socklen_t l = abstract_addr(&u, ARG(2));
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    return report(connect(fd, (struct sockaddr *)&u, l)) < 0;
  }
  if (!strcmp(a, "unix-connect-path")) {
    /* connect(2) to a unix socket by its path (the agent's, under gVisor). */
    struct sockaddr_un u;
    memset(&u, 0, sizeof u);
    u.sun_family = AF_UNIX;
    strncpy(u.sun_path, ARG(2), sizeof u.sun_path - 1);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    return report(connect(fd, (struct sockaddr *)&u, sizeof u)) < 0;
  }
  if (!strcmp(a, "tcp-listen")) {
    /* Listen on 127.0.0.1:port for N seconds (another sandbox then tries to reach it). */
    struct sockaddr_in s;
    memset(&s, 0, sizeof s);
    s.sin_family = AF_INET;
    s.sin_port = htons((uint16_t)atoi(ARG(2)));
    s.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&s, sizeof s) < 0 || listen(fd, 4) < 0) return report(-1) < 0;
    report(0);
    fclose(stdout);
    fclose(stderr);
    sleep((unsigned)atoi(ARG(3)));
    return 0;
  }
  if (!strcmp(a, "tcp-talk")) {
    /* Connect, send ARG(4) (\n-terminated), print what comes back within ms: "REPLY:<first line>", "EOF" or an errno.
     * A relay accepts every connection of a sandbox with egress, so only an answer proves the far end was reached. */
    int ms = argc > 5 ? atoi(ARG(5)) : 3000;
    int fd = tcp_connect(ARG(2), atoi(ARG(3)), ms);
    if (fd < 0) return report(-1) < 0;
    char msg[512];
    int n = snprintf(msg, sizeof msg, "%s\n", ARG(4));
    if (send(fd, msg, (size_t)n, MSG_NOSIGNAL) < 0) return report(-1) < 0;
    char buf[512];
    size_t got = 0;
    struct pollfd p = {fd, POLLIN, 0};
    while (got < sizeof buf - 1 && !memchr(buf, '\n', got)) {
      if (poll(&p, 1, ms) == 0) { errno = ETIMEDOUT; return report(-1) < 0; }
      ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
      if (r < 0) return report(-1) < 0;
      if (r == 0) break;
      got += (size_t)r;
    }
    if (got == 0) { printf("EOF\n"); return 1; }
    buf[got] = 0;
    char *nl = strchr(buf, '\n');
    if (nl) *nl = 0;
    char *cr = strchr(buf, '\r');
    if (cr) *cr = 0;
    printf("REPLY:%s\n", buf);
    return 0;
  }
  if (!strcmp(a, "udp-send")) {
    /* Send one datagram to ip:port and wait ms for any answer: OK (answered), ETIMEDOUT, or the send errno. */
    int ms = argc > 4 ? atoi(ARG(4)) : 1500;
    const char *ip = ARG(2);
    int fam = strchr(ip, ':') ? AF_INET6 : AF_INET;
    int fd = socket(fam, SOCK_DGRAM, 0);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (fam == AF_INET) {
      struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
      s4->sin_family = AF_INET;
      s4->sin_port = htons((uint16_t)atoi(ARG(3)));
      inet_pton(AF_INET, ip, &s4->sin_addr);
      len = sizeof *s4;
    } else {
      struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
      s6->sin6_family = AF_INET6;
      s6->sin6_port = htons((uint16_t)atoi(ARG(3)));
      inet_pton(AF_INET6, ip, &s6->sin6_addr);
      len = sizeof *s6;
    }
    if (sendto(fd, "capsule-probe", 13, 0, (struct sockaddr *)&ss, len) < 0) return report(-1) < 0;
    struct pollfd p = {fd, POLLIN, 0};
    int n = poll(&p, 1, ms);
    if (n == 0) { errno = ETIMEDOUT; return report(-1) < 0; }
    char buf[64];
    if (recv(fd, buf, sizeof buf, 0) < 0) return report(-1) < 0;
    return report(0) < 0;
  }
  fprintf(stderr, "net: unknown action %s\n", a);
  return 2;
}
