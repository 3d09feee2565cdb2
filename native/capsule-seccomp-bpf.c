/*
 * capsule-build: cc=gcc libs=-lseccomp
 *
 * capsule-seccomp-bpf: compiles a sandbox's seccomp policy to the raw BPF
 * program the kernel loads, once, so crun does not have to run libseccomp on
 * every `crun run` (it takes the result through the run.oci.seccomp_bpf_data
 * annotation). Runs on the host, as the daemon, never inside a sandbox.
 *
 * The output must be what crun 1.8.1 itself would produce from the same OCI
 * `linux.seccomp` object, so this follows crun's translation step by step
 * (src/libcrun/seccomp.c, libcrun_generate_seccomp):
 *   - seccomp_init(default action) and no seccomp_attr_set at all: crun keeps
 *     libseccomp's defaults (bad-arch action, optimisation level), and the
 *     load-time attributes (NNP, TSYNC, LOG) do not change the exported program;
 *   - architectures: "SCMP_ARCH_" prefix dropped, lower-cased, resolved by
 *     libseccomp, added in order, "already present" ignored;
 *   - a rule whose action equals the default action is skipped;
 *   - a syscall name libseccomp does not know is skipped with a warning;
 *   - ERRNO and TRACE carry the errno value, other actions ignore it.
 * Splitting rules whose conditions repeat an argument index (crun adds one
 * rule per condition then) is done by the TypeScript emitter, which writes
 * one `rule` line per libseccomp rule, in crun's order.
 *
 * Input (stdin), one record per line, fields separated by single spaces:
 *   capsule-seccomp-bpf 1
 *   default <SCMP_ACT_...> <errno>
 *   arch <SCMP_ARCH_...>                                   (0 or more)
 *   rule <SCMP_ACT_...> <errno> <syscall> <n> [<index> <SCMP_CMP_...> <value> <valueTwo>]{n}
 *   end <number of rule lines>
 * Output (stdout): the BPF program (seccomp_export_bpf). Warnings and errors
 * go to stderr; the exit status is 0 only when the whole input was used.
 *
 *   capsule-seccomp-bpf --version   prints "capsule-seccomp-bpf 1 libseccomp X.Y.Z"
 *   capsule-seccomp-bpf --pfc       writes libseccomp's readable dump instead (debugging)
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <seccomp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Part of --version and so of the daemon's cache key: bump it whenever the output for a given
   input could change, or daemons keep loading programs compiled by the old translation. */
#define FORMAT_VERSION "1"
/* The policy is ~450 short lines (~20 KiB); anything near this is not ours. */
#define MAX_INPUT (4 * 1024 * 1024)
#define MAX_FIELDS (5 + 6 * 4 + 1)

static unsigned long line_no;

static void die(int status, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "capsule-seccomp-bpf: ");
  if (line_no > 0) fprintf(stderr, "line %lu: ", line_no);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(status);
}

static char *read_stdin(size_t *len)
{
  size_t cap = 64 * 1024, n = 0;
  char *buf = malloc(cap + 1);
  if (!buf) die(1, "out of memory");
  for (;;) {
    if (n == cap) {
      if (cap >= MAX_INPUT) die(2, "input larger than %d bytes", MAX_INPUT);
      cap *= 2;
      buf = realloc(buf, cap + 1);
      if (!buf) die(1, "out of memory");
    }
    ssize_t r = read(0, buf + n, cap - n);
    if (r < 0) {
      if (errno == EINTR) continue;
      die(1, "read stdin: %s", strerror(errno));
    }
    if (r == 0) break;
    n += (size_t)r;
  }
  buf[n] = '\0';
  *len = n;
  return buf;
}

/* Decimal only, the whole field, no sign: the emitter never writes anything else. */
static uint64_t parse_u64(const char *s, uint64_t max, const char *what)
{
  if (*s == '\0' || !isdigit((unsigned char)*s)) die(2, "%s: expected a decimal number, got `%s`", what, s);
  errno = 0;
  char *end = NULL;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0' || v > max) die(2, "%s: `%s` is not a number up to %" PRIu64, what, s, max);
  return (uint64_t)v;
}

static int has_prefix(const char *s, const char *prefix)
{
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Same names and meaning as crun: SCMP_ACT_<name>, errno only for ERRNO and TRACE. */
static uint32_t parse_action(const char *name, uint32_t errno_ret)
{
  static const struct { const char *name; uint32_t action; } table[] = {
    { "ALLOW", SCMP_ACT_ALLOW },
    { "KILL", SCMP_ACT_KILL },
    { "TRAP", SCMP_ACT_TRAP },
    { "LOG", SCMP_ACT_LOG },
    { "KILL_PROCESS", SCMP_ACT_KILL_PROCESS },
    { "KILL_THREAD", SCMP_ACT_KILL_THREAD },
    { "NOTIFY", SCMP_ACT_NOTIFY },
  };
  if (!has_prefix(name, "SCMP_ACT_")) die(2, "unknown action `%s`", name);
  const char *p = name + strlen("SCMP_ACT_");
  if (strcmp(p, "ERRNO") == 0) return SCMP_ACT_ERRNO(errno_ret);
  if (strcmp(p, "TRACE") == 0) return SCMP_ACT_TRACE(errno_ret);
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
    if (strcmp(p, table[i].name) == 0) return table[i].action;
  die(2, "unknown action `%s`", name);
  return 0;
}

static enum scmp_compare parse_op(const char *name)
{
  static const struct { const char *name; enum scmp_compare op; } table[] = {
    { "NE", SCMP_CMP_NE }, { "LT", SCMP_CMP_LT }, { "LE", SCMP_CMP_LE }, { "EQ", SCMP_CMP_EQ },
    { "GE", SCMP_CMP_GE }, { "GT", SCMP_CMP_GT }, { "MASKED_EQ", SCMP_CMP_MASKED_EQ },
  };
  if (has_prefix(name, "SCMP_CMP_")) {
    const char *p = name + strlen("SCMP_CMP_");
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
      if (strcmp(p, table[i].name) == 0) return table[i].op;
  }
  die(2, "unknown comparison `%s`", name);
  return SCMP_CMP_EQ;
}

static uint32_t parse_arch(const char *name)
{
  char lower[32];
  const char *p = has_prefix(name, "SCMP_ARCH_") ? name + strlen("SCMP_ARCH_") : name;
  size_t i = 0;
  for (; p[i] != '\0' && i < sizeof lower - 1; i++) lower[i] = (char)tolower((unsigned char)p[i]);
  lower[i] = '\0';
  uint32_t token = seccomp_arch_resolve_name(lower);
  if (token == 0) die(2, "unknown architecture `%s`", name);
  return token;
}

/* Split one line into space-separated fields (in place); returns how many. */
static int split(char *line, char **fields, int max)
{
  int n = 0;
  char *save = NULL;
  for (char *f = strtok_r(line, " ", &save); f != NULL; f = strtok_r(NULL, " ", &save)) {
    if (n == max) die(2, "too many fields");
    fields[n++] = f;
  }
  return n;
}

static void add_rule(scmp_filter_ctx ctx, uint32_t default_action, char **f, int n)
{
  if (n < 5) die(2, "rule: expected at least 5 fields");
  uint32_t errno_ret = (uint32_t)parse_u64(f[2], UINT32_MAX, "errno");
  uint32_t action = parse_action(f[1], errno_ret);
  uint64_t nargs = parse_u64(f[4], 6, "argument count");
  if ((uint64_t)n != 5 + nargs * 4) die(2, "rule: %" PRIu64 " conditions need %" PRIu64 " fields, got %d", nargs, 5 + nargs * 4, n);

  struct scmp_arg_cmp cmp[6];
  memset(cmp, 0, sizeof cmp);
  for (uint64_t k = 0; k < nargs; k++) {
    char **a = f + 5 + k * 4;
    cmp[k].arg = (unsigned int)parse_u64(a[0], 5, "argument index");
    cmp[k].op = parse_op(a[1]);
    cmp[k].datum_a = parse_u64(a[2], UINT64_MAX, "value");
    cmp[k].datum_b = parse_u64(a[3], UINT64_MAX, "valueTwo");
  }
  if (action == default_action) return; /* crun drops these: the default already applies */

  int nr = seccomp_syscall_resolve_name(f[3]);
  if (nr == __NR_SCMP_ERROR) {
    /* crun warns and goes on (unless run.oci.seccomp_fail_unknown_syscall), so must we. */
    fprintf(stderr, "capsule-seccomp-bpf: unknown syscall `%s` ignored\n", f[3]);
    return;
  }
  int rc = seccomp_rule_add_array(ctx, action, nr, (unsigned int)nargs, cmp);
  if (rc < 0) die(1, "seccomp_rule_add_array(%s): %s", f[3], strerror(-rc));
}

int main(int argc, char **argv)
{
  int pfc = 0;
  if (argc == 2 && strcmp(argv[1], "--version") == 0) {
    const struct scmp_version *v = seccomp_version();
    printf("capsule-seccomp-bpf " FORMAT_VERSION " libseccomp %u.%u.%u\n", v->major, v->minor, v->micro);
    return 0;
  }
  if (argc == 2 && strcmp(argv[1], "--pfc") == 0) pfc = 1;
  else if (argc != 1) die(2, "usage: capsule-seccomp-bpf [--version | --pfc] < policy > filter.bpf");

  size_t len = 0;
  char *input = read_stdin(&len);
  if (strlen(input) != len) die(2, "input contains a NUL byte");

  scmp_filter_ctx ctx = NULL;
  uint32_t default_action = 0;
  unsigned long rules = 0;
  int ended = 0;
  char *next = input;
  while (*next != '\0') {
    char *line = next;
    char *nl = strchr(line, '\n');
    if (nl == NULL) die(2, "input does not end with a newline (truncated?)");
    *nl = '\0';
    next = nl + 1;
    line_no++;
    if (ended) die(2, "text after `end`");
    char *f[MAX_FIELDS];
    int n = split(line, f, MAX_FIELDS);
    if (n == 0) die(2, "empty line");

    if (line_no == 1) {
      if (n != 2 || strcmp(f[0], "capsule-seccomp-bpf") != 0 || strcmp(f[1], FORMAT_VERSION) != 0)
        die(2, "expected header `capsule-seccomp-bpf " FORMAT_VERSION "`");
      continue;
    }
    if (ctx == NULL) {
      if (n != 3 || strcmp(f[0], "default") != 0) die(2, "expected `default <action> <errno>` after the header");
      default_action = parse_action(f[1], (uint32_t)parse_u64(f[2], UINT32_MAX, "errno"));
      ctx = seccomp_init(default_action);
      if (ctx == NULL) die(1, "seccomp_init failed for default action %s", f[1]);
    } else if (strcmp(f[0], "arch") == 0) {
      if (n != 2) die(2, "arch: expected one name");
      if (rules > 0) die(2, "arch lines must come before rules");
      int rc = seccomp_arch_add(ctx, parse_arch(f[1]));
      if (rc < 0 && rc != -EEXIST) die(1, "seccomp_arch_add(%s): %s", f[1], strerror(-rc));
    } else if (strcmp(f[0], "rule") == 0) {
      add_rule(ctx, default_action, f, n);
      rules++;
    } else if (strcmp(f[0], "end") == 0) {
      if (n != 2) die(2, "end: expected the rule count");
      /* A truncated policy must not become a weaker filter. */
      if (parse_u64(f[1], UINT32_MAX, "rule count") != rules) die(2, "end says %s rules, read %lu", f[1], rules);
      ended = 1;
    } else {
      die(2, "unknown record `%s`", f[0]);
    }
  }
  line_no = 0;
  if (!ended) die(2, "input ends without `end` (truncated?)");

  int rc = pfc ? seccomp_export_pfc(ctx, 1) : seccomp_export_bpf(ctx, 1);
  if (rc < 0) die(1, "seccomp_export_%s: %s", pfc ? "pfc" : "bpf", strerror(-rc));
  seccomp_release(ctx);
  free(input);
  return 0;
}
