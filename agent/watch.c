/*
 * File watches (WATCH, feature F_WATCH): inotify on a directory, optionally
 * on every directory below it, including directories made after the watch
 * started. Events name paths relative to the watched directory and leave in
 * EVENTS frames under the daemon's credit.
 *
 * Everything here is bounded: a watch keeps at most WATCH_QUEUE_MAX bytes of
 * events waiting for credit and at most MAX_WATCHES directories. What does
 * not fit is dropped and reported as one OVERFLOW event once there is room
 * again (so a consumer knows to rescan); the kernel's own queue overflow and
 * the directory limit are reported the same way.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "watch.h"

#define WATCH_QUEUE_MAX (256u * 1024) /* encoded events waiting for credit, per watch */
#define WATCH_RESERVE 64              /* always left free in the queue for an OVERFLOW or GONE event */
#define MAX_WATCHES 16384             /* directories one watch follows */
#define READS_PER_TURN 4              /* inotify reads per poll wake-up, so one busy watch cannot starve the rest */

#define MASK (IN_CREATE | IN_MODIFY | IN_ATTRIB | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | \
              IN_MOVE_SELF | IN_EXCL_UNLINK | IN_ONLYDIR)

/* One watched directory: its inotify descriptor and where it sits (parent's wd and its name; the root has 0 and ""). */
struct wnode { int wd, parent; char *name; };

struct watch {
  int fd;
  int recursive;
  char *root;                     /* the absolute path asked for */
  int root_wd;
  struct wnode *nodes;            /* sorted by wd (the kernel hands them out in increasing order) */
  size_t n, cap;
  size_t live;
  struct buf q;                   /* encoded events: u8 type, u8 flags, bytes path */
  int lost;                       /* events were dropped since the last OVERFLOW */
  int gone;                       /* the root went away: END once the queue is sent */
  uint32_t pend_cookie;           /* MOVED_FROM of a watched directory, waiting for its MOVED_TO */
  int pend_wd;
};

/* ------------------------------------------------------------------ */
/* the directory table                                                 */

static struct wnode *find(struct watch *w, int wd) {
  size_t lo = 0, hi = w->n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (w->nodes[mid].wd < wd) lo = mid + 1;
    else hi = mid;
  }
  return lo < w->n && w->nodes[lo].wd == wd && w->nodes[lo].name ? &w->nodes[lo] : NULL;
}

/* Drop removed entries once they are most of the table. */
static void compact(struct watch *w) {
  if (w->n < 64 || w->live * 2 > w->n) return;
  size_t j = 0;
  for (size_t i = 0; i < w->n; i++)
    if (w->nodes[i].name) w->nodes[j++] = w->nodes[i];
  w->n = j;
}

static struct wnode *add_node(struct watch *w, int wd, int parent, const char *name) {
  char *nm = strdup(name);
  if (!nm) return NULL;
  if (w->n == w->cap) {
    size_t nc = w->cap ? w->cap * 2 : 64;
    struct wnode *nn = realloc(w->nodes, nc * sizeof *nn);
    if (!nn) { free(nm); return NULL; }
    w->nodes = nn;
    w->cap = nc;
  }
  size_t at = w->n;
  while (at > 0 && w->nodes[at - 1].wd > wd) at--; /* almost always the end */
  if (at < w->n && w->nodes[at].wd == wd) { free(w->nodes[at].name); w->nodes[at] = (struct wnode){ wd, parent, nm }; w->live++; return &w->nodes[at]; }
  memmove(&w->nodes[at + 1], &w->nodes[at], (w->n - at) * sizeof *w->nodes);
  w->nodes[at] = (struct wnode){ wd, parent, nm };
  w->n++;
  w->live++;
  return &w->nodes[at];
}

static void drop_node(struct watch *w, struct wnode *n) {
  free(n->name);
  n->name = NULL;
  w->live--;
}

/* The path of a watched directory relative to the root ("" for the root). Returns its length, -1 when too long. */
static int node_path(struct watch *w, int wd, char *out, size_t cap) {
  const char *parts[PATH_MAX / 2];
  int np = 0;
  for (struct wnode *n = find(w, wd); !n || n->wd != w->root_wd; n = find(w, n->parent)) {
    if (!n || np == (int)(sizeof parts / sizeof parts[0])) return -1; /* no longer in the tree, or too deep */
    parts[np++] = n->name;
  }
  size_t len = 0;
  for (int i = np - 1; i >= 0; i--) {
    size_t l = strlen(parts[i]);
    if (len + l + 2 > cap) return -1;
    if (len) out[len++] = '/';
    memcpy(out + len, parts[i], l);
    len += l;
  }
  out[len] = 0;
  return (int)len;
}

static int is_below(struct watch *w, struct wnode *n, int ancestor) {
  for (int depth = 0; n && depth < PATH_MAX; depth++) {
    if (n->wd == ancestor) return 1;
    if (n->wd == w->root_wd) return 0;
    n = find(w, n->parent);
  }
  return 0;
}

/* A directory left the watched tree: stop watching it and everything below it. */
static void drop_subtree(struct watch *w, int wd) {
  size_t *idx = malloc((w->n ? w->n : 1) * sizeof *idx), k = 0;
  if (!idx) { w->lost = 1; return; }
  /* Found first, dropped after: is_below walks the parents, which must all still be in the table. */
  for (size_t i = 0; i < w->n; i++)
    if (w->nodes[i].name && w->nodes[i].wd != w->root_wd && is_below(w, &w->nodes[i], wd)) idx[k++] = i;
  for (size_t j = 0; j < k; j++) {
    inotify_rm_watch(w->fd, w->nodes[idx[j]].wd);
    drop_node(w, &w->nodes[idx[j]]);
  }
  free(idx);
  compact(w);
}

/* ------------------------------------------------------------------ */
/* the event queue                                                     */

static void put_event(struct watch *w, uint8_t type, uint8_t flags, const char *path, size_t len, int reserved) {
  size_t size = 2 + 4 + len;
  size_t room = WATCH_QUEUE_MAX - (reserved ? 0 : WATCH_RESERVE);
  if (!reserved && w->lost) return; /* nothing may overtake the OVERFLOW that reports the gap */
  if (w->q.len + size > room || buf_reserve(&w->q, size)) { w->lost = 1; return; }
  uint8_t *p = buf_tail(&w->q);
  p[0] = type;
  p[1] = flags;
  wr_u32(p + 2, (uint32_t)len);
  memcpy(p + 6, path, len);
  w->q.len += size;
}

static void emit(struct watch *w, uint8_t type, int isdir, int wd, const char *name) {
  char path[PATH_MAX];
  int l = node_path(w, wd, path, sizeof path);
  if (l < 0) { w->lost = 1; return; }
  size_t nl = strlen(name);
  if ((size_t)l + nl + 2 > sizeof path) { w->lost = 1; return; }
  if (l && nl) path[l++] = '/';
  memcpy(path + l, name, nl + 1);
  put_event(w, type, isdir ? WEF_DIR : 0, path, (size_t)l + nl, 0);
}

/* After a loss, one OVERFLOW once half the queue is free again; then events flow as before. */
static void report_loss(struct watch *w) {
  if (!w->lost || w->q.len > WATCH_QUEUE_MAX / 2) return;
  w->lost = 0;
  put_event(w, WE_OVERFLOW, 0, "", 0, 1);
}

/* ------------------------------------------------------------------ */
/* adding directories                                                  */

/* The absolute path of a watched directory, for inotify_add_watch and opendir. */
static int abs_path(struct watch *w, int wd, const char *name, char *out, size_t cap) {
  char rel[PATH_MAX];
  int l = node_path(w, wd, rel, sizeof rel);
  if (l < 0) return -1;
  int n = snprintf(out, cap, "%s%s%s%s%s", w->root, l ? "/" : "", rel, name[0] ? "/" : "", name);
  return n < 0 || (size_t)n >= cap ? -1 : n;
}

/*
 * Watch directory `name` of watched directory `parent`, then every directory below it (breadth first, no
 * recursion: depth is bounded only by PATH_MAX). With `announce`, everything found is reported as created:
 * it was made before the watch on its directory existed, so inotify never saw it (a `mkdir -p a/b/c`).
 */
static void add_tree(struct watch *w, int parent, const char *name, int announce) {
  int *todo = NULL;
  size_t nt = 0, ct = 0, head = 0;
  char path[PATH_MAX];
  if (abs_path(w, parent, name, path, sizeof path) < 0) { w->lost = 1; return; }
  int wd = inotify_add_watch(w->fd, path, MASK | IN_DONT_FOLLOW);
  if (wd < 0) { if (errno == ENOSPC) w->lost = 1; return; }
  struct wnode *known = find(w, wd);
  if (known) { /* the same directory again (it moved within the tree): it is already watched, with its subtree */
    char *nm = strdup(name);
    if (nm) {
      free(known->name);
      known->name = nm;
      known->parent = parent;
    }
    return;
  }
  if (w->live >= MAX_WATCHES || !add_node(w, wd, parent, name)) { inotify_rm_watch(w->fd, wd); w->lost = 1; return; }
  for (int cur = wd;; cur = todo[head++]) {
    if (abs_path(w, cur, "", path, sizeof path) >= 0) {
      DIR *d = opendir(path);
      struct dirent *de;
      while (d && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        int isdir = de->d_type == DT_DIR;
        if (de->d_type == DT_UNKNOWN) {
          struct stat st;
          isdir = fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
        }
        if (announce) emit(w, WE_CREATE, isdir, cur, de->d_name);
        if (!isdir) continue;
        char sub[PATH_MAX];
        if (snprintf(sub, sizeof sub, "%s/%s", path, de->d_name) >= (int)sizeof sub) { w->lost = 1; continue; }
        int cwd_ = inotify_add_watch(w->fd, sub, MASK | IN_DONT_FOLLOW);
        if (cwd_ < 0) { if (errno == ENOSPC) w->lost = 1; continue; }
        if (find(w, cwd_)) continue;
        if (w->live >= MAX_WATCHES || !add_node(w, cwd_, cur, de->d_name)) { inotify_rm_watch(w->fd, cwd_); w->lost = 1; continue; }
        if (nt == ct) {
          size_t nc = ct ? ct * 2 : 64;
          int *nn = realloc(todo, nc * sizeof *nn);
          if (!nn) { w->lost = 1; continue; }
          todo = nn;
          ct = nc;
        }
        todo[nt++] = cwd_;
      }
      if (d) closedir(d);
    }
    if (head == nt) break;
  }
  free(todo);
}

/* ------------------------------------------------------------------ */
/* kernel events                                                       */

static void on_event(struct watch *w, const struct inotify_event *ev) {
  if (ev->wd < 0) {
    if (ev->mask & IN_Q_OVERFLOW) w->lost = 1;
    return;
  }
  /* A directory moved out of the tree arrives as a MOVED_FROM not followed by its MOVED_TO. */
  if (w->pend_wd && !((ev->mask & IN_MOVED_TO) && ev->cookie == w->pend_cookie)) {
    drop_subtree(w, w->pend_wd);
    w->pend_wd = 0;
  }
  struct wnode *n = find(w, ev->wd);
  if (!n || w->gone) return;
  int wd = n->wd;
  if (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT)) {
    if (wd == w->root_wd) {
      w->gone = 1;
      put_event(w, WE_GONE, WEF_DIR, "", 0, 1);
    } else if (ev->mask & IN_IGNORED) {
      drop_node(w, n);
      compact(w);
    }
    return;
  }
  /* A watched subdirectory's own events are reported by its parent, with its name. */
  if (!ev->len || !ev->name[0]) {
    if (wd == w->root_wd && (ev->mask & IN_ATTRIB)) put_event(w, WE_CHMOD, WEF_DIR, "", 0, 0);
    return;
  }
  int isdir = (ev->mask & IN_ISDIR) != 0;
  const char *name = ev->name;
  if (ev->mask & IN_CREATE) {
    emit(w, WE_CREATE, isdir, wd, name);
    if (isdir && w->recursive) add_tree(w, wd, name, 1);
  }
  if (ev->mask & IN_MODIFY) emit(w, WE_WRITE, isdir, wd, name);
  if (ev->mask & IN_ATTRIB) emit(w, WE_CHMOD, isdir, wd, name);
  if (ev->mask & IN_DELETE) emit(w, WE_REMOVE, isdir, wd, name);
  if (ev->mask & IN_MOVED_FROM) {
    emit(w, WE_RENAME, isdir, wd, name);
    if (isdir && w->recursive) {
      for (size_t i = 0; i < w->n; i++) {
        struct wnode *c = &w->nodes[i];
        if (c->name && c->parent == wd && c->wd != w->root_wd && !strcmp(c->name, name)) {
          w->pend_wd = c->wd;
          w->pend_cookie = ev->cookie;
          break;
        }
      }
    }
  }
  if (ev->mask & IN_MOVED_TO) {
    emit(w, WE_CREATE, isdir, wd, name);
    if (isdir && w->recursive) {
      struct wnode *moved = w->pend_wd && ev->cookie == w->pend_cookie ? find(w, w->pend_wd) : NULL;
      char *nm = moved ? strdup(name) : NULL;
      if (nm) { /* renamed within the tree: its subtree keeps its watches and now hangs here */
        free(moved->name);
        moved->name = nm;
        moved->parent = wd;
      } else {
        if (moved) drop_subtree(w, moved->wd);
        add_tree(w, wd, name, 1);
      }
      w->pend_wd = 0;
    }
  }
}

void watch_read(struct conn *c, struct chan *ch) {
  (void)c;
  static char buf[65536] __attribute__((aligned(__alignof__(struct inotify_event))));
  struct watch *w = ch->watch;
  for (int round = 0; round < READS_PER_TURN; round++) {
    ssize_t n = read(w->fd, buf, sizeof buf);
    if (n <= 0) break;
    for (char *p = buf; p < buf + n;) {
      const struct inotify_event *ev = (const struct inotify_event *)p;
      on_event(w, ev);
      p += sizeof *ev + ev->len;
    }
  }
  /* A pending directory move whose MOVED_TO did not come with it: the directory left the tree. */
  if (w->pend_wd) {
    drop_subtree(w, w->pend_wd);
    w->pend_wd = 0;
  }
  report_loss(w);
}

/* ------------------------------------------------------------------ */
/* the channel                                                         */

void handle_watch(struct conn *c, uint32_t id, struct rd *r) {
  uint8_t flags = rd_u8(r);
  uint32_t n;
  const uint8_t *p = rd_bytes(r, &n);
  if (!p) { c->dead = 1; return; }
  if (!(c->features & F_WATCH)) { send_error(c, id, ENOSYS, "file watching was not negotiated"); return; }
  if (n == 0 || p[0] != '/') { send_error(c, id, EINVAL, "path must be absolute"); return; }
  if (memchr(p, 0, n)) { send_error(c, id, EINVAL, "path contains a NUL byte"); return; }
  if (n >= PATH_MAX) { send_error(c, id, ENAMETOOLONG, "path is too long"); return; }
  struct watch *w = calloc(1, sizeof *w);
  if (!w || !(w->root = malloc(n + 1))) { free(w); send_error(c, id, ENOMEM, "out of memory"); return; }
  memcpy(w->root, p, n);
  w->root[n] = 0;
  while (n > 1 && w->root[n - 1] == '/') w->root[--n] = 0; /* "/a/" and "/a" are one directory; "/" stays */
  if (n == 1) w->root[0] = 0;                             /* the root: children are "/x", not "//x" */
  w->recursive = flags & WATCH_RECURSIVE;
  w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (w->fd < 0) { int e = errno; free(w->root); free(w); send_error(c, id, e, "inotify: %s", strerror(e)); return; }
  w->root_wd = inotify_add_watch(w->fd, w->root[0] ? w->root : "/", MASK);
  if (w->root_wd < 0 || !add_node(w, w->root_wd, 0, "")) {
    int e = w->root_wd < 0 ? errno : ENOMEM;
    send_error(c, id, e, "cannot watch %.300s: %s", w->root[0] ? w->root : "/", strerror(e));
    watch_free(w);
    return;
  }
  if (w->recursive) {
    /* The root's subdirectories, without announcing them: they existed when the watch started. */
    DIR *d = opendir(w->root[0] ? w->root : "/");
    struct dirent *de;
    while (d && (de = readdir(d))) {
      if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
      int isdir = de->d_type == DT_DIR;
      if (de->d_type == DT_UNKNOWN) {
        struct stat st;
        isdir = fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
      }
      if (isdir) add_tree(w, w->root_wd, de->d_name, 0);
    }
    if (d) closedir(d);
  }
  struct chan *ch = chan_new(c, id, CH_WATCH);
  if (!ch) { watch_free(w); send_error(c, id, ENOMEM, "out of memory"); return; }
  ch->watch = w;
  ch->credit = INIT_WINDOW;
  send_simple(c, id, FT_OK, 0, NULL, 0);
  /* Directories beyond the limit at the start are a loss the consumer hears about first. */
  report_loss(w);
}

int watch_fd(const struct watch *w) {
  return w->fd;
}

int pump_watch(struct conn *c, struct chan *ch) {
  struct watch *w = ch->watch;
  for (int round = 0; round < 4; round++) {
    if (!w->q.len) break;
    if (ch->credit <= 0 || c->out.len >= OUT_HIGH || c->dead) return 0;
    size_t budget = MAX_DATA;
    if ((int64_t)budget > ch->credit) budget = (size_t)ch->credit;
    uint8_t *q = buf_head(&w->q);
    size_t take = 0;
    uint32_t count = 0;
    while (take < w->q.len) {
      size_t size = 2 + 4 + rd32(q + take + 2);
      if (4 + take + size > budget) break;
      take += size;
      count++;
    }
    if (!count) return 0; /* the next event needs more credit than is left */
    fr_begin(c, ch->id, FT_EVENTS, S_OUT);
    put_u32(c, count);
    put(c, q, take);
    fr_end(c);
    if (c->dead) return 0;
    ch->credit -= (int64_t)(4 + take);
    buf_consume(&w->q, take);
    report_loss(w);
  }
  if (w->gone && !w->q.len) {
    send_simple(c, ch->id, FT_END, 0, NULL, 0);
    chan_free(c, ch);
    return 0;
  }
  return w->q.len && ch->credit > 0 && c->out.len < OUT_HIGH;
}

void watch_frame(struct conn *c, struct chan *ch, uint8_t type, uint8_t stream, const uint8_t *d, uint32_t len) {
  struct rd r = { d, len, 0, 0 };
  if (type != FT_WINDOW) return; /* unknown frame types on a channel are ignored */
  uint32_t n = rd_u32(&r);
  if (r.bad) { c->dead = 1; return; }
  if (stream != S_OUT) return;
  ch->credit += n;
  if (ch->credit > (int64_t)MAX_WINDOW) c->dead = 1;
}

void watch_free(struct watch *w) {
  if (!w) return;
  if (w->fd >= 0) close(w->fd);
  for (size_t i = 0; i < w->n; i++) free(w->nodes[i].name);
  free(w->nodes);
  buf_free(&w->q);
  free(w->root);
  free(w);
}
