/*
 * Users and groups of the sandbox: a user spec (name, uid, name:group,
 * uid:gid) resolved against the sandbox's own /etc/passwd and /etc/group
 * into the credentials a command runs with. Both files are the sandbox's,
 * so they are read with bounds and parsed without trusting them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "users.h"

static char *slurp(const char *path, size_t max) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return NULL;
  struct stat st;
  if (fstat(fd, &st) || !S_ISREG(st.st_mode)) { close(fd); return NULL; }
  char *s = malloc(max + 1);
  size_t len = 0;
  if (s) {
    while (len < max) {
      ssize_t n = read(fd, s + len, max - len);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      len += (size_t)n;
    }
    s[len] = 0;
  }
  close(fd);
  return s;
}

static int parse_id(const char *s, size_t n, uint32_t *out) {
  if (!n || n > 10) return -1;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  if (v > 0xfffffffeu) return -1;
  *out = (uint32_t)v;
  return 0;
}

/* Split one colon-separated line in place; returns the field count. */
static int split_fields(char *line, char **f, int max) {
  int n = 0;
  f[n++] = line;
  for (char *q = line; *q && n < max; q++)
    if (*q == ':') { *q = 0; f[n++] = q + 1; }
  return n;
}

/* Look up the user in /etc/passwd (name or uid); fills name/gid. */
static int passwd_lookup(const char *name, int by_uid, uint32_t uid, char *oname, size_t onsz, uint32_t *ouid, uint32_t *ogid) {
  char *data = slurp("/etc/passwd", 4u << 20);
  if (!data) return -1;
  int found = -1;
  for (char *line = data, *next; line && *line; line = next) {
    next = strchr(line, '\n');
    if (next) *next++ = 0;
    char *f[8];
    if (split_fields(line, f, 8) < 4) continue;
    uint32_t u, g;
    if (parse_id(f[2], strlen(f[2]), &u) || parse_id(f[3], strlen(f[3]), &g)) continue;
    if (by_uid ? u == uid : strcmp(f[0], name) == 0) {
      snprintf(oname, onsz, "%s", f[0]);
      *ouid = u;
      *ogid = g;
      found = 0;
      break;
    }
  }
  free(data);
  return found;
}

/* Resolve a group name to a gid, and collect supplementary groups of user. */
static int group_scan(const char *gname, uint32_t *ogid, const char *user, struct cred *cr) {
  char *data = slurp("/etc/group", 4u << 20);
  if (!data) return gname ? -1 : 0;
  int found = gname ? -1 : 0;
  for (char *line = data, *next; line && *line; line = next) {
    next = strchr(line, '\n');
    if (next) *next++ = 0;
    char *f[5];
    if (split_fields(line, f, 5) < 4) continue;
    uint32_t g;
    if (parse_id(f[2], strlen(f[2]), &g)) continue;
    if (gname && strcmp(f[0], gname) == 0 && found) { *ogid = g; found = 0; }
    if (user && *user && cr && cr->ngroups < MAX_GROUPS) {
      for (char *m = f[3], *mn; m; m = mn) {
        mn = strchr(m, ',');
        if (mn) *mn++ = 0;
        if (strcmp(m, user) == 0) {
          int dup = 0;
          for (int i = 0; i < cr->ngroups; i++) dup |= cr->groups[i] == g;
          if (!dup) cr->groups[cr->ngroups++] = g;
          break;
        }
      }
    }
  }
  free(data);
  return found;
}

/* spec: name | uid | name:group | uid:gid. Returns 0 or sets msg. */
int resolve_user(const char *spec, struct cred *cr, char *msg, size_t msz) {
  char upart[256], gpart[256] = "";
  const char *colon = strchr(spec, ':');
  size_t ulen = colon ? (size_t)(colon - spec) : strlen(spec);
  if (ulen == 0 || ulen >= sizeof upart || (colon && strlen(colon + 1) >= sizeof gpart)) {
    snprintf(msg, msz, "invalid user \"%.200s\"", spec);
    return -1;
  }
  memcpy(upart, spec, ulen);
  upart[ulen] = 0;
  if (colon) snprintf(gpart, sizeof gpart, "%s", colon + 1);

  char name[256] = "";
  uint32_t uid, gid = 0, pu, pg;
  if (parse_id(upart, ulen, &uid) == 0) {
    if (passwd_lookup(NULL, 1, uid, name, sizeof name, &pu, &pg) == 0) gid = pg;
  } else {
    if (passwd_lookup(upart, 0, 0, name, sizeof name, &uid, &gid)) {
      snprintf(msg, msz, "unknown user \"%s\" (not in the sandbox's /etc/passwd)", upart);
      return -1;
    }
  }
  cr->uid = uid;
  cr->ngroups = 0;
  if (gpart[0]) {
    if (parse_id(gpart, strlen(gpart), &gid) && group_scan(gpart, &gid, NULL, NULL)) {
      snprintf(msg, msz, "unknown group \"%s\" (not in the sandbox's /etc/group)", gpart);
      return -1;
    }
  }
  cr->gid = gid;
  cr->groups[cr->ngroups++] = gid;
  group_scan(NULL, NULL, name, cr);
  return 0;
}
