/*
 * Capsule agent wire protocol constants. docs/agent-protocol.md is the
 * normative description; src/agent/frames.ts mirrors these numbers.
 */
#ifndef CAPSULE_PROTOCOL_H
#define CAPSULE_PROTOCOL_H

/*
 * Protocol version major.minor. A peer works with any peer of the same major;
 * what a minor adds is announced as feature bits in HELLO and used only when
 * both sides have it. The macros can be overridden at build time, which the
 * upgrade tests use to build "older" and "newer" agents from these sources.
 */
#ifndef PROTO_MAJOR
#define PROTO_MAJOR 1
#endif
#ifndef PROTO_MINOR
#define PROTO_MINOR 4
#endif
#define PROTO_VERSION PROTO_MAJOR
#ifndef AGENT_VERSION
#define AGENT_VERSION "capsule-agent/0.5.0"
#endif

/* Feature bits (u64 in HELLO). Protocol 1.0 has none of them. */
#define F_EXEC_STREAMS (1ull << 0) /* EXEC stream table, stream ids beyond 2, CONTROL frames */
#define F_LARGE_DATA (1ull << 1)   /* DATA frames up to MAX_PAYLOAD instead of MAX_DATA */
#define F_READ_TO_SIZE (1ull << 2) /* READ stops at the size its OK announced */
#define F_PTY (1ull << 3)          /* 1.2: stream kind SK_PTY (a terminal), resized with CONTROL RESIZE */
#define F_WATCH (1ull << 4)        /* 1.2: WATCH requests (inotify), events in EVENTS frames */
#define F_XATTR (1ull << 5)        /* 1.3: WRITE sets user.* attributes; STAT/LIST entries carry them (xattr.c) */
#define F_FILE_HANDOFF (1ull << 6) /* 1.4: WRITE may name its temp file's descriptor, which the daemon fills itself */
#ifndef AGENT_FEATURES
#define AGENT_FEATURES (F_EXEC_STREAMS | F_LARGE_DATA | F_READ_TO_SIZE | F_PTY | F_WATCH | F_XATTR | F_FILE_HANDOFF)
#endif

/* Header: u32 payload length, u32 channel, u8 type, u8 stream, u16 flags (big-endian). */
#define HDR_LEN 12
#define MAX_PAYLOAD (1u << 20)   /* any frame */
#define MAX_DATA 65536u          /* DATA / ENTRIES chunks (DATA: MAX_PAYLOAD with F_LARGE_DATA) */
#define INIT_WINDOW (256u * 1024) /* initial credit per (channel, stream), both directions */
#define MAX_WINDOW (64u << 20)   /* credit beyond this is a protocol violation */

/* Connection-level (channel 0). */
#define FT_HELLO 0x01

/* Requests: each opens a new channel (id chosen by the daemon, non-zero, unused). */
#define FT_PING 0x02
#define FT_EXEC 0x03
#define FT_ATTACH 0x04
#define FT_PS 0x05
#define FT_READ 0x10
#define FT_WRITE 0x11
#define FT_LIST 0x12
#define FT_STAT 0x13
#define FT_MKDIR 0x14
#define FT_REMOVE 0x15
#define FT_RENAME 0x16
#define FT_WATCH 0x17 /* F_WATCH: u8 flags (WATCH_*), bytes path; OK, then EVENTS until CLOSE */

/* Frames on an open channel. */
#define FT_OK 0x40
#define FT_ERROR 0x41
#define FT_DATA 0x42
#define FT_WINDOW 0x43
#define FT_EOF 0x44
#define FT_EXIT 0x45
#define FT_SIGNAL 0x46
#define FT_CLOSE 0x47
#define FT_ENTRIES 0x48
#define FT_END 0x49
#define FT_CONTROL 0x4A /* F_EXEC_STREAMS: u8 kind + fields, for one stream of a process (CTL_*) */
#define FT_EVENTS 0x4B  /* F_WATCH: u32 count, count x watch event (WE_*), under credit like ENTRIES */

/* CONTROL kinds. */
#define CTL_RESIZE 1    /* u16 rows, u16 cols: a PTY stream's window size (F_PTY) */

/* WRITE's u32 mode: the low 12 bits are the file's mode; with F_FILE_HANDOFF, this bit asks for the handoff
 * (OK then carries u32 descriptor, u64 inode of the temp file; EOF may carry u64 bytes the daemon wrote). */
#define WRITE_HANDOFF (1u << 16)

/* WATCH flags (u8). */
#define WATCH_RECURSIVE 1 /* watch every directory below, including ones made later */

/* Watch event types: u8 type, u8 flags (WEF_*), bytes path relative to the watched directory. */
#define WE_CREATE 1
#define WE_WRITE 2
#define WE_REMOVE 3
#define WE_RENAME 4    /* the old name of a rename; the new name follows as WE_CREATE */
#define WE_CHMOD 5
#define WE_OVERFLOW 6  /* events were lost (queue full, kernel queue overflow, watch limit): rescan */
#define WE_GONE 7      /* the watched directory itself was removed or moved away: no more events */
#define WEF_DIR 1

/* EXEC flags (u8). */
#define EXEC_STDIN_PIPE 1  /* stdin is a pipe fed by DATA/EOF, else /dev/null */
#define EXEC_HOLD_REPLY 2  /* without a stdin pipe: the OK may wait (up to 2 ms) to leave with the output and EXIT */
#define EXEC_STREAMS 4     /* F_EXEC_STREAMS: a stream table follows the environment (bit0 is then ignored) */

/* Stream kinds in an EXEC stream table. */
#define SK_NULL 0      /* the listed fds are /dev/null; no traffic */
#define SK_PIPE_IN 1   /* daemon -> process: DATA, EOF; credit from the agent */
#define SK_PIPE_OUT 2  /* process -> daemon: DATA; credit from the daemon */
#define SK_PTY 3       /* F_PTY: a terminal; its table entry ends with u16 rows, u16 cols. Without F_PTY: ENOTSUP */
#define MAX_STREAMS 8  /* entries in a stream table */
#define MAX_CHILD_FD 9 /* highest fd of the child a stream may be bound to */

/* Streams of the classic layout (no stream table), and of file channels. */
#define S_IN 0
#define S_OUT 1
#define S_ERR 2

/* Entry types. */
#define T_UNKNOWN 0
#define T_FILE 1
#define T_DIR 2
#define T_SYMLINK 3
#define T_FIFO 4
#define T_SOCKET 5
#define T_CHAR 6
#define T_BLOCK 7

#endif
