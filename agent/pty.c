/*
 * Terminals for processes (SK_PTY streams, feature F_PTY). The agent keeps the
 * master: what the process writes to its terminal is read there as the
 * stream's output, and the daemon's DATA is written there as keystrokes. The
 * child gets the slave on the fds the stream names and makes it its
 * controlling terminal (spawn.c), so the line discipline turns ^C into SIGINT
 * for the foreground job, not for the shell: job control works as in any
 * terminal.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "pty.h"

#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

int pty_open(int *master, int *slave, uint16_t rows, uint16_t cols) {
  int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (m < 0) return errno;
  int unlock = 0;
  if (ioctl(m, TIOCSPTLCK, &unlock)) { int e = errno; close(m); return e; }
  /* The peer by the master's fd, not by a /dev/pts path: nothing in the sandbox can swap the path. */
  int s = ioctl(m, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (s < 0) {
    char name[64];
    unsigned n;
    if (ioctl(m, TIOCGPTN, &n)) { int e = errno; close(m); return e; }
    snprintf(name, sizeof name, "/dev/pts/%u", n);
    s = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (s < 0) { int e = errno; close(m); return e; }
  }
  /* UTF-8 aware erase (backspace removes a whole character); everything else as the kernel sets a new terminal. */
  struct termios t;
  if (tcgetattr(s, &t) == 0) {
    t.c_iflag |= IUTF8;
    tcsetattr(s, TCSANOW, &t);
  }
  int e = pty_resize(m, rows, cols);
  if (e) { close(m); close(s); return e; }
  *master = m;
  *slave = s;
  return 0;
}

int pty_resize(int master, uint16_t rows, uint16_t cols) {
  struct winsize ws = { .ws_row = rows, .ws_col = cols };
  return ioctl(master, TIOCSWINSZ, &ws) ? errno : 0;
}
