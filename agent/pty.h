/* Terminals: a pseudo-terminal pair for a process's SK_PTY stream, and its window size (pty.c). */
#ifndef CAPSULE_PTY_H
#define CAPSULE_PTY_H

#include <stdint.h>

/*
 * Opens a terminal of rows x cols: *master for the agent (close-on-exec), *slave for the child
 * (close-on-exec too: spawn dup3s it onto the child's fds). Returns 0, or an errno.
 */
int pty_open(int *master, int *slave, uint16_t rows, uint16_t cols);
/* New window size; the kernel sends SIGWINCH to the terminal's foreground process group. 0 or an errno. */
int pty_resize(int master, uint16_t rows, uint16_t cols);

#endif
