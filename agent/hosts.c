/*
 * /etc/hosts names the sandbox. Without it `sudo` says "unable to resolve host sbx-…" on every call, and
 * templates made by debootstrap ship no /etc/hosts at all, so not even `localhost` resolves in a sandbox
 * without a network. The agent is the sandbox's init, in every backend, so it fixes the file itself, in
 * the sandbox's own root: entries the template or the user wrote stay; a missing `localhost` is added;
 * the hostname gets one line of its own, marked, which is replaced when the name changes (a snapshot's
 * fork, a fork with memory, a template built in a sandbox with another name).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "hosts.h"

#define HOSTS "/etc/hosts"
#define HOSTS_TMP "/etc/.capsule-hosts"
#define LOCALHOST_LINES "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"

/* The name the file was last made to match: a new connection only re-reads the file when it changed. */
static char synced[sizeof ((struct utsname *)0)->nodename];

static int ends_with_mark(const char *line, size_t n) {
  while (n > 0 && (line[n - 1] == ' ' || line[n - 1] == '\t' || line[n - 1] == '\r')) n--;
  size_t m = strlen(HOSTS_MARK);
  return n >= m && !memcmp(line + n - m, HOSTS_MARK, m);
}

/* Does this line (comments aside) give `name` as one of its names? */
static int line_names(const char *line, size_t n, const char *name) {
  const char *hash = memchr(line, '#', n);
  if (hash) n = (size_t)(hash - line);
  size_t len = strlen(name), i = 0;
  int field = 0;
  while (i < n) {
    while (i < n && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) i++;
    size_t s = i;
    while (i < n && line[i] != ' ' && line[i] != '\t' && line[i] != '\r') i++;
    if (i == s) break;
    /* field 0 is the address */
    if (field++ > 0 && i - s == len && !strncasecmp(line + s, name, len)) return 1;
  }
  return 0;
}

/* Reads the whole file (at most HOSTS_MAX bytes) into *out; 0 with *out NULL when there is none. */
static int read_hosts(char **out, size_t *len, mode_t *mode) {
  *out = NULL;
  *len = 0;
  /* No link is followed and nothing that could block (a FIFO) is read: anything odd stays as it is. */
  int fd = open(HOSTS, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? 0 : -1;
  struct stat st;
  if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_size > HOSTS_MAX) { close(fd); return -1; }
  *mode = st.st_mode & 07777;
  char *buf = malloc((size_t)st.st_size + 1);
  if (!buf) { close(fd); return -1; }
  size_t got = 0;
  while (got < (size_t)st.st_size) {
    ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  close(fd);
  buf[got] = 0;
  *out = buf;
  *len = got;
  return 0;
}

static int write_hosts(const char *text, size_t n, mode_t mode) {
  unlink(HOSTS_TMP); /* left by an agent that died between open and rename */
  int fd = open(HOSTS_TMP, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return -1;
  size_t off = 0;
  while (off < n) {
    ssize_t w = write(fd, text + off, n - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    off += (size_t)w;
  }
  int bad = off != n || fchmod(fd, mode);
  if (close(fd)) bad = 1;
  /* rename replaces a link at /etc/hosts itself, never its target */
  if (bad || rename(HOSTS_TMP, HOSTS)) { unlink(HOSTS_TMP); return -1; }
  return 0;
}

static void sync_to(const char *name) {
  char *old;
  size_t len;
  mode_t mode = 0644;
  if (read_hosts(&old, &len, &mode)) return;
  size_t cap = len + 2 + strlen(LOCALHOST_LINES) + strlen(name) + strlen(HOSTS_MARK) + 32;
  char *text = malloc(cap);
  if (!text) { free(old); return; }
  size_t n = 0;
  int has_local = 0, has_name = 0;
  for (size_t i = 0; i < len;) {
    const char *nl = memchr(old + i, '\n', len - i);
    size_t end = nl ? (size_t)(nl - old) : len;
    const char *line = old + i;
    size_t ll = end - i;
    i = nl ? end + 1 : len;
    if (ends_with_mark(line, ll)) continue; /* ours, made for some name: made again below if needed */
    has_local |= line_names(line, ll, "localhost");
    has_name |= line_names(line, ll, name);
    memcpy(text + n, line, ll);
    n += ll;
    text[n++] = '\n';
  }
  if (!has_local) {
    memcpy(text + n, LOCALHOST_LINES, strlen(LOCALHOST_LINES));
    n += strlen(LOCALHOST_LINES);
  }
  if (!has_name) n += (size_t)snprintf(text + n, cap - n, "127.0.1.1\t%s\t%s\n", name, HOSTS_MARK);
  /* Best effort: a failure is not retried for this name. */
  if (n != len || memcmp(text, old ? old : "", n)) (void)write_hosts(text, n, mode);
  free(text);
  free(old);
}

void hosts_sync(void) {
  struct utsname u;
  if (uname(&u) || !u.nodename[0] || !strcmp(u.nodename, synced)) return;
  /* A hostname is letters, digits, dots and dashes; anything else is not written into the file. */
  for (const char *p = u.nodename; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '.' || *p == '-')) return;
  sync_to(u.nodename);
  strcpy(synced, u.nodename);
}
