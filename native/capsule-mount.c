/*
 * capsule-mount: a sandbox's host-side mounts in one short-lived process.
 * Runs on the host as root, called by the daemon (src/runtime/mounts.ts);
 * never inside a sandbox. Node has no mount(2) or ioctl(2), and spawning
 * mount(8) and umount(8) cost ~4 and ~7 ms per sandbox.
 *
 *   capsule-mount setup SANDBOX_DIR TOP_LAYER DISK_MB UID AGENT_BINARY [--dio] [--image-cache DIR] [--lower LAYER]...
 *   capsule-mount teardown SANDBOX_DIR
 *   capsule-mount unmount SANDBOX_DIR
 *   capsule-mount mount SANDBOX_DIR AGENT_BINARY [--dio]
 *   capsule-mount volume-mount VOLUME_DIR DISK_MB UID [--image-cache DIR]
 *   capsule-mount volume-unmount VOLUME_DIR
 *
 * TOP_LAYER is the topmost read-only layer (a template's rootfs); each
 * --lower adds the next layer beneath the ones before it (at most MAX_LAYERS).
 *
 * setup makes SANDBOX_DIR (which must not exist) and in it:
 *   lower      symlink to TOP_LAYER (so no host path appears in the overlay's options)
 *   lower1..N  symlinks to the --lower layers, in order
 *   disk.img   sparse file of DISK_MB MiB holding an ext4 made by mke2fs: the sandbox's quota
 *   disk.dev   a node of the loop device the image is bound to (the mount's source name)
 *   disk/      that ext4, through a loop device that frees itself when unmounted
 *     upper/ work/   the overlay's writable layer, owned by UID (the sandbox's root)
 *     agent/     a copy of AGENT_BINARY, bind-mounted into the sandbox by the bundle
 *   rootfs/    overlay of lower[:lower1...] + disk/upper: the container's root
 * Every mount is made with SANDBOX_DIR as cwd and relative option strings:
 * overlayfs prints its options as given in /proc/self/mountinfo, which the
 * sandbox can read.
 *
 * --image-cache DIR keeps one freshly made, empty image per size in DIR and
 * gives each sandbox a sparse copy of it (~0.2 ms instead of running mke2fs,
 * ~3-10 ms). Sizes that are not a multiple of 256 MiB are always made anew,
 * so callers cannot fill DIR with one image per size.
 *
 * teardown unmounts rootfs then disk (lazily when busy) and leaves the files.
 * It is only for sandboxes being destroyed: a disk with much data on it is
 * shut down first (EXT4_IOC_SHUTDOWN), so its dirty pages are dropped instead
 * of being written into an image that is deleted right after.
 *
 * unmount and mount are for a stopped sandbox, whose disk outlives its
 * mounts (and a host reboot). unmount writes everything back: it never
 * detaches lazily (a disk still mounted somewhere and mounted again by the
 * next start would be two filesystems on one image), retries while busy, and
 * fsyncs disk.img. mount makes the mounts of an existing SANDBOX_DIR again
 * from disk.img and the lower* symlinks setup left: a fresh loop device, the
 * ext4, the current agent (replacing the copy on the disk when there is room)
 * and the overlay.
 *
 * volume-mount makes a named volume's disk ready to be bind-mounted into
 * sandboxes: VOLUME_DIR/disk.img (made on first use, like a sandbox's disk),
 * mounted at VOLUME_DIR/mnt, holding data/ owned by UID. The mountpoint
 * itself is mode 000 and data/ exists only inside the mounted filesystem, so
 * a sandbox started while the volume is not mounted fails to bind it instead
 * of writing into the host's filesystem. Mounted already: nothing to do.
 * volume-unmount unmounts it strictly and fsyncs the image (as unmount).
 *
 * Exit codes (the daemon maps them to errors with hints):
 *   0 done, 2 usage, 3 template, 4 sandbox dir, 5 disk image or mke2fs,
 *   6 loop device, 7 disk mount, 8 layout, 9 overlay mount, 10 unmount
 *   (for mount: 3 a layer is gone, 4 no such sandbox dir, 5 no disk.img).
 * On failure stderr holds one line: "capsule-mount: STEP: DETAIL".
 * setup undoes its own mounts when it fails; the files stay for the daemon
 * to remove.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* The loop device ABI from linux/loop.h, which musl's headers do not ship. */
#define LOOP_CTL_GET_FREE 0x4C82
#define LOOP_CONFIGURE 0x4C0A
#define LO_FLAGS_AUTOCLEAR 4
#define LO_FLAGS_DIRECT_IO 16
#define LO_NAME_SIZE 64
#define LO_KEY_SIZE 32
/* From linux/ext4.h (not shipped by musl either). */
#define EXT4_IOC_SHUTDOWN 0x8004587D
#define EXT4_GOING_FLAGS_NOLOGFLUSH 2
#define EXT4_SUPER_MAGIC 0xEF53
/* Bump when make_fs's options change, so cached images made with the old ones are not used. */
#define IMAGE_FORMAT_VERSION 1
#define CACHE_GRANULE_MB 256
/* Disks using more than this are shut down before unmounting: writing back their dirty data is wasted I/O. */
#define SHUTDOWN_ABOVE_BYTES (64LL << 20)

struct loop_info64 {
  uint64_t lo_device, lo_inode, lo_rdevice, lo_offset, lo_sizelimit;
  uint32_t lo_number, lo_encrypt_type, lo_encrypt_key_size, lo_flags;
  uint8_t lo_file_name[LO_NAME_SIZE];
  uint8_t lo_crypt_name[LO_NAME_SIZE];
  uint8_t lo_encrypt_key[LO_KEY_SIZE];
  uint64_t lo_init[2];
};

struct loop_config {
  uint32_t fd;
  uint32_t block_size;
  struct loop_info64 info;
  uint64_t reserved[8];
};

enum {
  EXIT_USAGE = 2,
  EXIT_TEMPLATE = 3,
  EXIT_DIR = 4,
  EXIT_IMAGE = 5,
  EXIT_LOOP = 6,
  EXIT_DISK_MOUNT = 7,
  EXIT_LAYOUT = 8,
  EXIT_OVERLAY = 9,
  EXIT_UNMOUNT = 10,
};

/* Mounts setup has made so far, undone in reverse when a later step fails. */
static int disk_mounted, rootfs_mounted, volume_mounted;
/* A half-made cache image, removed when making it fails. */
static char pending_tmp[PATH_MAX];

static void undo(void) {
  if (rootfs_mounted) umount2("rootfs", MNT_DETACH | UMOUNT_NOFOLLOW);
  if (disk_mounted) umount2("disk", MNT_DETACH | UMOUNT_NOFOLLOW);
  if (volume_mounted) umount2("mnt", MNT_DETACH | UMOUNT_NOFOLLOW);
  if (pending_tmp[0]) unlink(pending_tmp);
}

/* Print "capsule-mount: STEP: DETAIL[: strerror]" and exit with code. */
__attribute__((noreturn, format(printf, 3, 4))) static void fail(int code, int err, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  undo();
  if (err) fprintf(stderr, "capsule-mount: %s: %s\n", msg, strerror(err));
  else fprintf(stderr, "capsule-mount: %s\n", msg);
  exit(code);
}

static long parse_num(const char *s, const char *what, long min, long max) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || end == s || v < min || v > max) fail(EXIT_USAGE, 0, "usage: %s must be an integer in [%ld, %ld], got '%s'", what, min, max, s);
  return v;
}

/* mke2fs as a child, its stderr collected; the last line of it explains a failure. */
static void make_fs(const char *image) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) < 0) fail(EXIT_IMAGE, errno, "mke2fs: pipe");
  pid_t pid = fork();
  if (pid < 0) fail(EXIT_IMAGE, errno, "mke2fs: fork");
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
      dup2(devnull, 0);
      dup2(devnull, 1);
    }
    dup2(pipefd[1], 2);
    /*
     * No journal: the image lives as long as the sandbox and a host crash ends
     * the sandbox anyway. No resize inode, no discard of the (already sparse)
     * file, no reserved blocks (the sandbox gets all of its size), lazy inode
     * tables (the mount option noinit_itable stops the kernel zeroing them
     * later, which would fill the sparse file).
     */
    char *argv[] = {"mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0",
                    "-O", "^has_journal,^resize_inode",
                    "-E", "lazy_itable_init=1,nodiscard", (char *)image, NULL};
    char *envp[] = {"PATH=/usr/sbin:/sbin:/usr/bin:/bin", "LC_ALL=C", NULL};
    execvpe("mke2fs", argv, envp);
    fprintf(stderr, "cannot run mke2fs (%s): apt-get install e2fsprogs\n", strerror(errno));
    _exit(127);
  }
  close(pipefd[1]);
  char out[2048];
  size_t len = 0;
  for (;;) {
    ssize_t r = read(pipefd[0], out + len, sizeof out - 1 - len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    len += (size_t)r;
    if (len == sizeof out - 1) break;
  }
  close(pipefd[0]);
  out[len] = 0;
  int status;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
  while (len > 0 && (out[len - 1] == '\n' || out[len - 1] == ' ')) out[--len] = 0;
  char *last = strrchr(out, '\n');
  for (char *p = out; *p; p++) if (*p == '\n') *p = ' ';
  fail(EXIT_IMAGE, 0, "mke2fs failed (%s%d): %s", WIFEXITED(status) ? "exit " : "signal ",
       WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), last ? last + 1 : out);
}

/* Copy the data extents of a sparse file; holes stay holes. */
static void copy_sparse(int in, int out, off_t size, const char *what) {
  if (ftruncate(out, size) < 0) fail(EXIT_IMAGE, errno, "size %s", what);
  off_t pos = 0;
  while (pos < size) {
    off_t data = lseek(in, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break; /* only a hole is left */
      fail(EXIT_IMAGE, errno, "SEEK_DATA in the cached image for %s", what);
    }
    off_t hole = lseek(in, data, SEEK_HOLE);
    if (hole < 0) fail(EXIT_IMAGE, errno, "SEEK_HOLE in the cached image for %s", what);
    off_t src = data, dst = data;
    while (src < hole) {
      ssize_t n = copy_file_range(in, &src, out, &dst, (size_t)(hole - src), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail(EXIT_IMAGE, n < 0 ? errno : EIO, "copy the cached image into %s", what);
    }
    pos = hole;
  }
}

/*
 * The sandbox's image: a copy of the cached empty image of this size, made
 * (atomically, under a temporary name) by whoever needs it first.
 */
static void make_image(int img, long disk_mb, const char *cache_dir) {
  off_t size = (off_t)disk_mb << 20;
  if (!cache_dir || disk_mb % CACHE_GRANULE_MB != 0) {
    if (ftruncate(img, size) < 0) fail(EXIT_IMAGE, errno, "size disk.img to %ld MiB", disk_mb);
    make_fs("disk.img");
    return;
  }
  char cached[PATH_MAX], tmp[PATH_MAX];
  snprintf(cached, sizeof cached, "%s/ext4-v%d-%ldm.img", cache_dir, IMAGE_FORMAT_VERSION, disk_mb);
  int in = open(cached, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (in < 0 && errno == ENOENT) {
    if (mkdir(cache_dir, 0700) < 0 && errno != EEXIST) fail(EXIT_IMAGE, errno, "mkdir %s", cache_dir);
    snprintf(tmp, sizeof tmp, "%s/.tmp-%d-%ldm.img", cache_dir, (int)getpid(), disk_mb);
    int t = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (t < 0) fail(EXIT_IMAGE, errno, "create %s", tmp);
    memcpy(pending_tmp, tmp, sizeof pending_tmp);
    if (ftruncate(t, size) < 0) fail(EXIT_IMAGE, errno, "size %s", tmp);
    close(t);
    make_fs(tmp);
    if (rename(tmp, cached) < 0) fail(EXIT_IMAGE, errno, "rename %s to %s", tmp, cached);
    pending_tmp[0] = 0;
    in = open(cached, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  }
  if (in < 0) fail(EXIT_IMAGE, errno, "open %s", cached);
  copy_sparse(in, img, size, "disk.img");
  close(in);
}

/*
 * A free loop device bound to the image. LOOP_CTL_GET_FREE and LOOP_CONFIGURE
 * are two steps, so a concurrent setup (another sandbox, losetup) can take the
 * same device in between: LOOP_CONFIGURE then answers EBUSY and we ask again.
 * AUTOCLEAR detaches the device when its last user goes (the fs unmounted, or
 * this process dying before the mount), so nothing needs to remember it.
 */
static int attach_loop(int image_fd, int direct_io, char *dev, size_t devlen) {
  int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) fail(EXIT_LOOP, errno, "open /dev/loop-control (modprobe loop)");
  for (int attempt = 0; attempt < 64; attempt++) {
    int n = ioctl(ctl, LOOP_CTL_GET_FREE);
    if (n < 0) fail(EXIT_LOOP, errno, "no free loop device (LOOP_CTL_GET_FREE; raise max_loop)");
    snprintf(dev, devlen, "/dev/loop%d", n);
    int fd = open(dev, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) fail(EXIT_LOOP, errno, "open %s (no devtmpfs on /dev?)", dev);
      fail(EXIT_LOOP, errno, "open %s", dev);
    }
    struct loop_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.fd = (uint32_t)image_fd;
    cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | (direct_io ? LO_FLAGS_DIRECT_IO : 0);
    snprintf((char *)cfg.info.lo_file_name, LO_NAME_SIZE, "capsule-sandbox-disk");
    if (ioctl(fd, LOOP_CONFIGURE, &cfg) == 0) {
      close(ctl);
      return fd;
    }
    int err = errno;
    close(fd);
    if (err != EBUSY) fail(EXIT_LOOP, err, "LOOP_CONFIGURE %s", dev);
  }
  fail(EXIT_LOOP, EBUSY, "every free loop device was taken before we could bind it");
}

/* Copy the agent onto the sandbox disk, read-only and host-root-owned. */
static void copy_agent(const char *src, const char *dst) {
  int in = open(src, O_RDONLY | O_CLOEXEC);
  if (in < 0) fail(EXIT_LAYOUT, errno, "open agent %s", src);
  struct stat st;
  if (fstat(in, &st) < 0 || !S_ISREG(st.st_mode)) fail(EXIT_LAYOUT, errno ? errno : EINVAL, "agent %s is not a regular file", src);
  int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0555);
  if (out < 0) fail(EXIT_LAYOUT, errno, "create %s", dst);
  off_t left = st.st_size;
  while (left > 0) {
    ssize_t n = sendfile(out, in, NULL, (size_t)(left > (1 << 30) ? (1 << 30) : left));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail(EXIT_LAYOUT, n < 0 ? errno : EIO, "copy agent to %s", dst);
    left -= n;
  }
  if (fchmod(out, 0555) < 0) fail(EXIT_LAYOUT, errno, "chmod %s", dst);
  close(out);
  close(in);
}

static void mkdir_owned(const char *p, mode_t mode, uid_t uid) {
  if (mkdir(p, mode) < 0) fail(EXIT_LAYOUT, errno, "mkdir %s", p);
  /* mkdir applies the umask; the mode must be exact (it becomes the sandbox's / for upper). */
  if (chmod(p, mode) < 0) fail(EXIT_LAYOUT, errno, "chmod %s", p);
  if (chown(p, uid, uid) < 0) fail(EXIT_LAYOUT, errno, "chown %s", p);
}

/*
 * Most read-only layers one overlay stacks here. The kernel allows 500; the
 * option string ("lower:lower1:...") must also fit in one page. The daemon
 * declares the same number (src/runtime/driver.ts MAX_LAYERS).
 */
#define MAX_LAYERS 128

static int setup(int argc, char **argv) {
  static const char usage[] = "usage: capsule-mount setup SANDBOX_DIR TOP_LAYER DISK_MB UID AGENT_BINARY [--dio] [--image-cache DIR] [--lower LAYER]...";
  if (argc < 7) fail(EXIT_USAGE, 0, "%s", usage);
  const char *dir = argv[2], *lower = argv[3], *agent = argv[6], *cache_dir = NULL;
  const char *extra[MAX_LAYERS];
  int nextra = 0;
  long disk_mb = parse_num(argv[4], "DISK_MB", 1, 1L << 30);
  uid_t uid = (uid_t)parse_num(argv[5], "UID", 0, INT32_MAX);
  int direct_io = 0;
  for (int i = 7; i < argc; i++) {
    if (!strcmp(argv[i], "--dio")) direct_io = 1;
    else if (!strcmp(argv[i], "--image-cache") && i + 1 < argc) cache_dir = argv[++i];
    else if (!strcmp(argv[i], "--lower") && i + 1 < argc) {
      if (nextra + 1 >= MAX_LAYERS) fail(EXIT_USAGE, 0, "usage: at most %d layers", MAX_LAYERS);
      extra[nextra++] = argv[++i];
      if (extra[nextra - 1][0] != '/') fail(EXIT_USAGE, 0, "usage: paths must be absolute");
    } else fail(EXIT_USAGE, 0, "%s", usage);
  }
  if (lower[0] != '/' || agent[0] != '/' || dir[0] != '/' || (cache_dir && cache_dir[0] != '/')) fail(EXIT_USAGE, 0, "usage: paths must be absolute");
  for (int i = 0; i < nextra; i++) {
    struct stat xst;
    if (stat(extra[i], &xst) < 0) fail(EXIT_TEMPLATE, errno == ENOENT ? 0 : errno, "layer %s %s", extra[i], errno == ENOENT ? "does not exist" : "");
    if (!S_ISDIR(xst.st_mode)) fail(EXIT_TEMPLATE, ENOTDIR, "layer %s", extra[i]);
  }
  const char *agent_name = strrchr(agent, '/') + 1;
  if (!*agent_name) fail(EXIT_USAGE, 0, "usage: AGENT_BINARY must name a file");

  struct stat lst;
  if (stat(lower, &lst) < 0) {
    if (errno == ENOENT) fail(EXIT_TEMPLATE, 0, "template rootfs %s does not exist", lower);
    fail(EXIT_TEMPLATE, errno, "template rootfs %s", lower);
  }
  if (!S_ISDIR(lst.st_mode)) fail(EXIT_TEMPLATE, ENOTDIR, "template rootfs %s", lower);

  umask(022);
  if (mkdir(dir, 0711) < 0) fail(EXIT_DIR, errno, "mkdir %s", dir);
  if (chdir(dir) < 0) fail(EXIT_DIR, errno, "chdir %s", dir);
  if (symlink(lower, "lower") < 0) fail(EXIT_DIR, errno, "symlink lower -> %s", lower);
  /* "lowerdir=lower:lower1:...:lowerN": relative names, so the options shown to the sandbox carry no host path. */
  char lowers[4096] = "lower";
  size_t used = strlen(lowers);
  for (int i = 0; i < nextra; i++) {
    char name[32];
    snprintf(name, sizeof name, "lower%d", i + 1);
    if (symlink(extra[i], name) < 0) fail(EXIT_DIR, errno, "symlink %s -> %s", name, extra[i]);
    int n = snprintf(lowers + used, sizeof lowers - used, ":%s", name);
    if (n < 0 || (size_t)n >= sizeof lowers - used) fail(EXIT_USAGE, 0, "usage: too many layers");
    used += (size_t)n;
  }
  if (mkdir("disk", 0700) < 0 || mkdir("rootfs", 0755) < 0) fail(EXIT_DIR, errno, "mkdir disk, rootfs in %s", dir);

  int img = open("disk.img", O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (img < 0) fail(EXIT_IMAGE, errno, "create %s/disk.img", dir);
  make_image(img, disk_mb, cache_dir);

  char dev[64];
  int loop = attach_loop(img, direct_io, dev, sizeof dev);
  close(img);
  /*
   * The mount's source string shows in the sandbox's mountinfo (on the
   * /.capsule bind). "/dev/loopN" would tell the sandbox how many loop devices
   * the host has in use, so mount through a node of the same device named
   * "disk.dev" in the sandbox dir; a data dir on a nodev mount cannot open it,
   * and then the real name is used.
   */
  const char *source = dev;
  struct stat lo;
  if (fstat(loop, &lo) == 0 && mknod("disk.dev", S_IFBLK | 0600, lo.st_rdev) == 0) source = "disk.dev";
  /*
   * discard: blocks the sandbox frees are punched out of the sparse image, so
   * deleting a file gives the space back to the host, not only to the sandbox.
   * noinit_itable: see make_fs.
   */
  const unsigned long flags = MS_NOSUID | MS_NODEV | MS_NOATIME;
  const char *opts = "noinit_itable,discard";
  int r = mount(source, "disk", "ext4", flags, opts);
  if (r < 0 && source != dev && errno == EACCES) r = mount(dev, "disk", "ext4", flags, opts);
  if (r < 0) fail(EXIT_DISK_MOUNT, errno, "mount %s (ext4) on %s/disk", dev, dir);
  disk_mounted = 1;
  close(loop); /* the mount holds the device now; AUTOCLEAR frees it at unmount */

  if (chmod("disk", 0755) < 0) fail(EXIT_LAYOUT, errno, "chmod %s/disk", dir);
  /* The upper's root becomes the merged root's attributes: the template root's mode, mapped-root owned. */
  mkdir_owned("disk/upper", lst.st_mode & 07777, uid);
  mkdir_owned("disk/work", 0755, uid);
  if (mkdir("disk/agent", 0755) < 0) fail(EXIT_LAYOUT, errno, "mkdir %s/disk/agent", dir);
  char agent_dst[PATH_MAX];
  snprintf(agent_dst, sizeof agent_dst, "disk/agent/%s", agent_name);
  copy_agent(agent, agent_dst);

  char ovl_opts[4096 + 64];
  snprintf(ovl_opts, sizeof ovl_opts, "lowerdir=%s,upperdir=disk/upper,workdir=disk/work", lowers);
  if (mount("overlay", "rootfs", "overlay", 0, ovl_opts) < 0) {
    fail(EXIT_OVERLAY, errno, "overlay mount on %s/rootfs (modprobe overlay)", dir);
  }
  rootfs_mounted = 1;
  return 0;
}

/* Unmount one mount point of the sandbox dir: not mounted is fine, busy goes lazy. */
static int unmount_one(const char *dir, const char *what) {
  if (umount2(what, UMOUNT_NOFOLLOW) == 0) return 0;
  if (errno == EINVAL || errno == ENOENT) return 0; /* not a mount point (any more), or never made */
  if (errno == EBUSY && umount2(what, MNT_DETACH | UMOUNT_NOFOLLOW) == 0) return 0;
  fprintf(stderr, "capsule-mount: unmount %s/%s: %s\n", dir, what, strerror(errno));
  return -1;
}

/*
 * True only when dirfd is the root of the ext4 on the loop device whose
 * backing file is this sandbox's disk.img: a shutdown must never reach
 * another filesystem (the host's root is ext4 too).
 */
static int is_sandbox_disk(int dirfd, const char *dir) {
  struct stat self;
  if (fstat(dirfd, &self) < 0 || major(self.st_dev) != 7 /* loop */) return 0;
  char sys[128], backing[PATH_MAX], want[PATH_MAX + 16], real[PATH_MAX];
  snprintf(sys, sizeof sys, "/sys/dev/block/%u:%u/loop/backing_file", major(self.st_dev), minor(self.st_dev));
  int fd = open(sys, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, backing, sizeof backing - 1);
  close(fd);
  if (n <= 0) return 0;
  backing[n] = 0;
  if (backing[n - 1] == '\n') backing[n - 1] = 0;
  if (!realpath(dir, real)) return 0;
  snprintf(want, sizeof want, "%s/disk.img", real);
  return strcmp(backing, want) == 0;
}

/*
 * Mark the disk's ext4 as shut down when it holds much data: dirty pages are
 * then dropped at unmount rather than written to the image we delete next.
 * Small disks skip it (the kernel logs every shutdown, and their writeback is
 * cheap). Best effort: any failure just means a slower unmount.
 */
static void shutdown_if_large(const char *dir, const char *disk) {
  int fd = open(disk, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return;
  struct statfs st;
  /* Only our own ext4: never a shut down of whatever fs a missing mount leaves "disk" on. */
  if (fstatfs(fd, &st) == 0 && st.f_type == EXT4_SUPER_MAGIC &&
      (long long)(st.f_blocks - st.f_bfree) * st.f_bsize > SHUTDOWN_ABOVE_BYTES && is_sandbox_disk(fd, dir)) {
    uint32_t flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
    ioctl(fd, EXT4_IOC_SHUTDOWN, &flags);
  }
  close(fd);
}

static int teardown(int argc, char **argv) {
  if (argc != 3 || argv[2][0] != '/') fail(EXIT_USAGE, 0, "usage: capsule-mount teardown SANDBOX_DIR");
  const char *dir = argv[2];
  if (chdir(dir) < 0) {
    if (errno == ENOENT) return 0;
    fail(EXIT_UNMOUNT, errno, "chdir %s", dir);
  }
  /* The overlay first: it holds the disk's upper and work dirs. */
  int bad = unmount_one(dir, "rootfs");
  shutdown_if_large(dir, "disk");
  bad |= unmount_one(dir, "disk");
  return bad ? EXIT_UNMOUNT : 0;
}

/* Unmount without ever detaching lazily; EBUSY is retried for about a second (processes just killed may still hold it). */
static int unmount_strict(const char *dir, const char *what) {
  for (int attempt = 0; attempt < 100; attempt++) {
    if (umount2(what, UMOUNT_NOFOLLOW) == 0) return 0;
    if (errno == EINVAL || errno == ENOENT) return 0;
    if (errno != EBUSY) break;
    usleep(10000);
  }
  fprintf(stderr, "capsule-mount: unmount %s/%s: %s\n", dir, what, strerror(errno));
  return -1;
}

/* A stopped sandbox: unmount both, write the image through to the host disk. */
static int unmount_keep(int argc, char **argv) {
  if (argc != 3 || argv[2][0] != '/') fail(EXIT_USAGE, 0, "usage: capsule-mount unmount SANDBOX_DIR");
  const char *dir = argv[2];
  if (chdir(dir) < 0) {
    if (errno == ENOENT) return 0;
    fail(EXIT_UNMOUNT, errno, "chdir %s", dir);
  }
  if (unmount_strict(dir, "rootfs") < 0 || unmount_strict(dir, "disk") < 0) return EXIT_UNMOUNT;
  /* The unmount wrote the fs into the loop device, i.e. into disk.img's page cache: make it durable. */
  int img = open("disk.img", O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (img >= 0) {
    if (fsync(img) < 0) fail(EXIT_UNMOUNT, errno, "fsync %s/disk.img", dir);
    close(img);
  }
  return 0;
}

/* True when PATH (relative to the cwd) is the root of a mount other than the cwd's own fs. */
static int is_mounted(const char *p) {
  struct stat here, st;
  if (stat(".", &here) < 0 || lstat(p, &st) < 0) return 0;
  return here.st_dev != st.st_dev;
}

/* Replace the agent on the disk with the current one (via a temporary name); keep the old one when there is no room. */
static void refresh_agent(const char *src, const char *name) {
  char dst[PATH_MAX], tmp[PATH_MAX];
  snprintf(dst, sizeof dst, "disk/agent/%s", name);
  snprintf(tmp, sizeof tmp, "disk/agent/.new-%s", name);
  if (mkdir("disk/agent", 0755) < 0 && errno != EEXIST) fail(EXIT_LAYOUT, errno, "mkdir disk/agent");
  unlink(tmp);
  pid_t pid = fork();
  if (pid < 0) fail(EXIT_LAYOUT, errno, "fork");
  if (pid == 0) {
    /* copy_agent exits on failure; in a child that only means "keep the old one" (and must not undo the parent's mounts). */
    disk_mounted = rootfs_mounted = 0;
    copy_agent(src, tmp);
    _exit(0);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    if (rename(tmp, dst) < 0) fail(EXIT_LAYOUT, errno, "rename %s to %s", tmp, dst);
    return;
  }
  unlink(tmp);
  if (access(dst, X_OK) < 0) fail(EXIT_LAYOUT, 0, "could not copy the agent onto the disk and there is no earlier copy");
}

static int remount(int argc, char **argv) {
  static const char usage[] = "usage: capsule-mount mount SANDBOX_DIR AGENT_BINARY [--dio]";
  if (argc < 4 || argc > 5) fail(EXIT_USAGE, 0, "%s", usage);
  const char *dir = argv[2], *agent = argv[3];
  int direct_io = 0;
  if (argc == 5) {
    if (strcmp(argv[4], "--dio") != 0) fail(EXIT_USAGE, 0, "%s", usage);
    direct_io = 1;
  }
  if (dir[0] != '/' || agent[0] != '/') fail(EXIT_USAGE, 0, "usage: paths must be absolute");
  const char *agent_name = strrchr(agent, '/') + 1;
  if (!*agent_name) fail(EXIT_USAGE, 0, "usage: AGENT_BINARY must name a file");
  if (chdir(dir) < 0) fail(EXIT_DIR, errno, "chdir %s", dir);
  if (is_mounted("disk") || is_mounted("rootfs")) fail(EXIT_LAYOUT, EBUSY, "%s is still mounted: unmount it first", dir);

  /* The layers, as setup linked them: lower, lower1, ... each must still be a directory. */
  char lowers[4096] = "lower";
  size_t used = strlen(lowers);
  struct stat st;
  errno = 0;
  if (stat("lower", &st) < 0 || !S_ISDIR(st.st_mode)) fail(EXIT_TEMPLATE, errno ? errno : ENOTDIR, "the top layer of %s is gone", dir);
  for (int i = 1; i < MAX_LAYERS; i++) {
    char name[32];
    snprintf(name, sizeof name, "lower%d", i);
    if (lstat(name, &st) < 0) break;
    errno = 0;
    if (stat(name, &st) < 0 || !S_ISDIR(st.st_mode)) fail(EXIT_TEMPLATE, errno ? errno : ENOTDIR, "layer %s of %s is gone", name, dir);
    int n = snprintf(lowers + used, sizeof lowers - used, ":%s", name);
    if (n < 0 || (size_t)n >= sizeof lowers - used) fail(EXIT_USAGE, 0, "usage: too many layers");
    used += (size_t)n;
  }

  int img = open("disk.img", O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (img < 0) fail(EXIT_IMAGE, errno, "open %s/disk.img", dir);
  char dev[64];
  int loop = attach_loop(img, direct_io, dev, sizeof dev);
  close(img);
  /* The device number is new (after a reboot, or another sandbox took the old one): make the node again. */
  const char *source = dev;
  struct stat lo;
  unlink("disk.dev");
  if (fstat(loop, &lo) == 0 && mknod("disk.dev", S_IFBLK | 0600, lo.st_rdev) == 0) source = "disk.dev";
  const unsigned long flags = MS_NOSUID | MS_NODEV | MS_NOATIME;
  const char *opts = "noinit_itable,discard";
  int r = mount(source, "disk", "ext4", flags, opts);
  if (r < 0 && source != dev && errno == EACCES) r = mount(dev, "disk", "ext4", flags, opts);
  if (r < 0) fail(EXIT_DISK_MOUNT, errno, "mount %s (ext4) on %s/disk", dev, dir);
  disk_mounted = 1;
  close(loop);

  refresh_agent(agent, agent_name);

  char ovl_opts[4096 + 64];
  snprintf(ovl_opts, sizeof ovl_opts, "lowerdir=%s,upperdir=disk/upper,workdir=disk/work", lowers);
  if (mount("overlay", "rootfs", "overlay", 0, ovl_opts) < 0) fail(EXIT_OVERLAY, errno, "overlay mount on %s/rootfs", dir);
  rootfs_mounted = 1;
  return 0;
}

static int volume_mount(int argc, char **argv) {
  static const char usage[] = "usage: capsule-mount volume-mount VOLUME_DIR DISK_MB UID [--image-cache DIR]";
  if (argc != 5 && argc != 7) fail(EXIT_USAGE, 0, "%s", usage);
  const char *dir = argv[2], *cache_dir = NULL;
  long disk_mb = parse_num(argv[3], "DISK_MB", 1, 1L << 30);
  uid_t uid = (uid_t)parse_num(argv[4], "UID", 0, INT32_MAX);
  if (argc == 7) {
    if (strcmp(argv[5], "--image-cache") != 0) fail(EXIT_USAGE, 0, "%s", usage);
    cache_dir = argv[6];
  }
  if (dir[0] != '/' || (cache_dir && cache_dir[0] != '/')) fail(EXIT_USAGE, 0, "usage: paths must be absolute");
  umask(022);
  if (mkdir(dir, 0700) < 0 && errno != EEXIST) fail(EXIT_DIR, errno, "mkdir %s", dir);
  if (chdir(dir) < 0) fail(EXIT_DIR, errno, "chdir %s", dir);
  if (mkdir("mnt", 0) < 0 && errno != EEXIST) fail(EXIT_DIR, errno, "mkdir %s/mnt", dir);
  if (is_mounted("mnt")) return 0;
  if (chmod("mnt", 0) < 0) fail(EXIT_DIR, errno, "chmod %s/mnt", dir);

  int img = open("disk.img", O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (img < 0 && errno == ENOENT) {
    img = open("disk.img", O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (img < 0) fail(EXIT_IMAGE, errno, "create %s/disk.img", dir);
    make_image(img, disk_mb, cache_dir);
  }
  if (img < 0) fail(EXIT_IMAGE, errno, "open %s/disk.img", dir);
  char dev[64];
  int loop = attach_loop(img, 0, dev, sizeof dev);
  close(img);
  const char *source = dev;
  struct stat lo;
  unlink("disk.dev");
  if (fstat(loop, &lo) == 0 && mknod("disk.dev", S_IFBLK | 0600, lo.st_rdev) == 0) source = "disk.dev";
  const unsigned long flags = MS_NOSUID | MS_NODEV | MS_NOATIME;
  const char *opts = "noinit_itable,discard";
  int r = mount(source, "mnt", "ext4", flags, opts);
  if (r < 0 && source != dev && errno == EACCES) r = mount(dev, "mnt", "ext4", flags, opts);
  if (r < 0) fail(EXIT_DISK_MOUNT, errno, "mount %s (ext4) on %s/mnt", dev, dir);
  volume_mounted = 1;
  close(loop);
  /* The filesystem's root stays root's; data/ is what sandboxes see, owned by their root. */
  if (chmod("mnt", 0711) < 0) fail(EXIT_LAYOUT, errno, "chmod %s/mnt", dir);
  if (mkdir("mnt/data", 0755) == 0) {
    if (chown("mnt/data", uid, uid) < 0) fail(EXIT_LAYOUT, errno, "chown %s/mnt/data", dir);
  } else if (errno != EEXIST) {
    fail(EXIT_LAYOUT, errno, "mkdir %s/mnt/data", dir);
  }
  return 0;
}

static int volume_unmount(int argc, char **argv) {
  if (argc != 3 || argv[2][0] != '/') fail(EXIT_USAGE, 0, "usage: capsule-mount volume-unmount VOLUME_DIR");
  const char *dir = argv[2];
  if (chdir(dir) < 0) {
    if (errno == ENOENT) return 0;
    fail(EXIT_UNMOUNT, errno, "chdir %s", dir);
  }
  if (unmount_strict(dir, "mnt") < 0) return EXIT_UNMOUNT;
  int img = open("disk.img", O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (img >= 0) {
    if (fsync(img) < 0) fail(EXIT_UNMOUNT, errno, "fsync %s/disk.img", dir);
    close(img);
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "setup") == 0) return setup(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "teardown") == 0) return teardown(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "unmount") == 0) return unmount_keep(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "mount") == 0) return remount(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "volume-mount") == 0) return volume_mount(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "volume-unmount") == 0) return volume_unmount(argc, argv);
  fail(EXIT_USAGE, 0, "usage: capsule-mount setup|teardown|unmount|mount|volume-mount|volume-unmount ... (see the comment at the top of native/capsule-mount.c)");
}
