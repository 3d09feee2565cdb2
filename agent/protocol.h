/*
 * Capsule agent wire protocol constants. docs/agent-protocol.md is the
 * normative description; src/agent/frames.ts mirrors these numbers.
 */
#ifndef CAPSULE_PROTOCOL_H
#define CAPSULE_PROTOCOL_H

#define PROTO_VERSION 1
#define AGENT_VERSION "capsule-agent/0.1.0"

/* Header: u32 payload length, u32 channel, u8 type, u8 stream, u16 flags (big-endian). */
#define HDR_LEN 12
#define MAX_PAYLOAD (1u << 20)   /* any frame */
#define MAX_DATA 65536u          /* DATA / ENTRIES chunks */
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

/* EXEC flags (u8). */
#define EXEC_STDIN_PIPE 1  /* stdin is a pipe fed by DATA/EOF, else /dev/null */
#define EXEC_HOLD_REPLY 2  /* without a stdin pipe: the OK may wait (up to 2 ms) to leave with the output and EXIT */

/* Streams. */
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
