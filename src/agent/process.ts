/**
 * Process channels: EXEC starts a command, ATTACH re-binds one started over
 * an earlier connection. Output arrives as DATA under per-stream credit that
 * goes back as the listeners consume it; stdin leaves under the agent's credit.
 */
import { EventEmitter } from 'node:events';
import os from 'node:os';

import { InvalidArgumentError, SandboxError, type CapsuleError } from '../errors/index.js';
import { Credit, openChannel, readError, ReplyChannel, type ChannelHost } from './channel.js';
import {
  CTL_RESIZE,
  EXEC_HOLD_REPLY,
  EXEC_STDIN_PIPE,
  EXEC_STREAMS,
  FT,
  INIT_WINDOW,
  MAX_CHILD_FD,
  MAX_STREAMS,
  PayloadReader,
  PayloadWriter,
  ProtocolError,
  STREAM_ERR,
  STREAM_IN,
  STREAM_KIND,
  STREAM_OUT,
  type Frame,
} from './frames.js';
import type { AgentProcess, ExecRequest, ExitStatus, StreamKind, StreamSpec } from './types.js';

type StreamInfo = { id: number; kind: StreamKind };
const KIND_NAMES = Object.keys(STREAM_KIND) as StreamKind[];

/** stdin (a pipe or /dev/null), stdout, stderr: the layout of an EXEC without a stream table. */
function classicStreams(stdinPipe: boolean): StreamInfo[] {
  return [
    { id: STREAM_IN, kind: stdinPipe ? 'pipe-in' : 'null' },
    { id: STREAM_OUT, kind: 'pipe-out' },
    { id: STREAM_ERR, kind: 'pipe-out' },
  ];
}
const CLASSIC_EVENTS: Record<number, 'stdout' | 'stderr'> = { [STREAM_OUT]: 'stdout', [STREAM_ERR]: 'stderr' };

/** Receive side of an output stream: credit the agent still has, and credit held back while paused. */
interface OutStream {
  left: number;
  owed: number;
}
/** Send side of an input stream: the agent's credit, and the chain that keeps writes in order. */
interface InStream {
  credit: Credit;
  chain: Promise<void>;
}

function signalName(sig: number): string | undefined {
  for (const [name, num] of Object.entries(os.constants.signals)) if (num === sig) return name;
  return undefined;
}

function signalNumber(sig: NodeJS.Signals | number): number {
  if (typeof sig === 'number') {
    if (!Number.isInteger(sig) || sig < 1 || sig > 64) throw new InvalidArgumentError(`invalid signal number ${sig}`);
    return sig;
  }
  const n = (os.constants.signals as Record<string, number | undefined>)[sig];
  if (n === undefined) throw new InvalidArgumentError(`unknown signal ${sig}`);
  return n;
}

export class ProcessChannel extends ReplyChannel implements AgentProcess {
  private emitter = new EventEmitter();
  pid = 0;
  readonly exited: Promise<ExitStatus>;
  /** Set from the ATTACH reply: older output was dropped. */
  outputTruncated = false;
  streams: StreamInfo[] = [];
  private resolveExit!: (s: ExitStatus) => void;
  private rejectExit!: (e: Error) => void;
  private readonly outs = new Map<number, OutStream>();
  private readonly ins = new Map<number, InStream>();
  private finished = false;
  /** Frames that arrived right after the reply, replayed once the caller had a turn to add listeners. */
  private held: Frame[] | null = null;
  private paused = false;

  constructor(
    host: ChannelHost,
    id: number,
    kind: 'EXEC' | 'ATTACH',
    /** EXEC: the layout requested. ATTACH: learnt from the reply. */
    streams: StreamInfo[] | undefined,
    private readonly onOpen: (err: Error | null, p?: ProcessChannel) => void,
    /** ExecRequest.onStart: attaches the caller's listeners inside the reply, so nothing is held back. */
    private readonly onStart?: (p: AgentProcess) => void,
  ) {
    super(host, id, kind);
    if (streams) this.setStreams(streams);
    this.exited = new Promise<ExitStatus>((resolve, reject) => {
      this.resolveExit = resolve;
      this.rejectExit = reject;
    });
    this.exited.catch(() => undefined); // the caller may never look
  }

  private setStreams(streams: StreamInfo[]): void {
    this.streams = streams;
    for (const s of streams) {
      // A terminal carries both directions on one stream id.
      if (s.kind === 'pipe-out' || s.kind === 'pty') this.outs.set(s.id, { left: INIT_WINDOW, owed: 0 });
      // Stdin of the classic layout takes writes even as /dev/null: the agent drops them and returns the credit (1.0).
      if (s.kind === 'pipe-in' || s.kind === 'pty' || (s.id === STREAM_IN && s.kind === 'null')) {
        this.ins.set(s.id, { credit: new Credit(INIT_WINDOW), chain: Promise.resolve() });
      }
    }
  }

  on(event: 'stdout' | 'stderr', listener: (chunk: Buffer) => void): this;
  on(event: 'data', listener: (stream: number, chunk: Buffer) => void): this;
  on(event: 'exit', listener: (status: ExitStatus) => void): this;
  on(event: string, listener: ((chunk: Buffer) => void) | ((stream: number, chunk: Buffer) => void) | ((status: ExitStatus) => void)): this {
    this.emitter.on(event, listener as (...args: unknown[]) => void);
    return this;
  }

  override onFrame(f: Frame): void {
    if (this.held) {
      this.held.push(f);
      return;
    }
    super.onFrame(f);
  }

  private release(): void {
    const frames = this.held;
    this.held = null;
    if (frames) for (const f of frames) super.onFrame(f);
  }

  protected accepted(payload: Buffer): void {
    const r = new PayloadReader(payload, this.what);
    this.pid = r.u32();
    if (this.what === 'ATTACH') {
      const flags = r.u8();
      this.outputTruncated = (flags & 1) !== 0;
      this.setStreams(this.host.supports('exec-streams') ? readStreamTable(r) : classicStreams((flags & 4) !== 0));
    }
    if (this.onStart) {
      try {
        this.onStart(this);
      } catch (e) {
        // The caller's bug: surfaced like a throwing listener's, outside our socket handler.
        process.nextTick(() => {
          throw e;
        });
      }
      this.onOpen(null, this);
      return;
    }
    this.held = [];
    this.onOpen(null, this);
    // Output that came with the reply is delivered after the awaiting caller attached its listeners.
    setImmediate(() => this.host.guard(() => this.release()));
  }

  protected refused(err: CapsuleError): void {
    this.finished = true;
    this.onOpen(err);
  }

  protected override frame(f: Frame): void {
    switch (f.type) {
      case FT.DATA: {
        const out = this.outs.get(f.stream);
        if (!out) throw new ProtocolError(`DATA on stream ${f.stream}, which is not an output of the process`);
        out.left -= f.payload.length;
        if (out.left < 0) throw new ProtocolError('process output beyond the granted credit');
        const classic = CLASSIC_EVENTS[f.stream];
        if (classic) this.safeEmit(classic, f.payload);
        this.safeEmit('data', f.stream, f.payload);
        // Consumed (listeners ran synchronously): give the credit back, unless the consumer asked to pause.
        if (this.paused) out.owed += f.payload.length;
        else if (!this.finished) this.grant(f.stream, out, f.payload.length);
        return;
      }
      case FT.WINDOW: {
        const n = new PayloadReader(f.payload, 'WINDOW').u32();
        this.ins.get(f.stream)?.credit.add(n);
        return;
      }
      case FT.EXIT: {
        const r = new PayloadReader(f.payload, 'EXIT');
        const exitCode = r.u32();
        const sig = r.u8();
        if (r.remaining >= 1 && (r.u8() & 1) !== 0) this.outputTruncated = true;
        if (exitCode > 255 + 128) throw new ProtocolError('exit code out of range');
        this.finished = true;
        this.host.forget(this.id);
        // Built only when a write is waiting: an Error (stack trace) per exit cost ~15 µs of every exec.
        for (const s of this.ins.values()) if (s.credit.waiting) s.credit.fail(new SandboxError('process has exited', { pid: this.pid }));
        const status: ExitStatus = { exitCode };
        if (sig) status.signal = signalName(sig) ?? `SIG${sig}`;
        this.safeEmit('exit', status);
        this.resolveExit(status);
        return;
      }
      case FT.ERROR:
        this.fail(readError(f));
        return;
      default:
        return; // unknown frame types on a channel are ignored (forward compatible)
    }
  }

  private grant(stream: number, out: OutStream, n: number): void {
    out.left += n;
    this.host.send(this.id, FT.WINDOW, stream, new PayloadWriter().u32(n).finish());
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    for (const [stream, out] of this.outs) {
      const n = out.owed;
      out.owed = 0;
      if (n > 0 && !this.finished) this.host.guard(() => this.grant(stream, out, n));
    }
  }

  onClose(err: Error): void {
    if (!this.hasReply) {
      this.finished = true;
      this.onOpen(err);
      return;
    }
    if (this.held) {
      // deliver what arrived before the loss first
      setImmediate(() => {
        try {
          this.release();
        } catch {
          /* connection already gone */
        }
        this.fail(err);
      });
      return;
    }
    this.fail(err);
  }

  private fail(err: Error): void {
    if (this.finished) return;
    this.finished = true;
    this.host.forget(this.id);
    for (const s of this.ins.values()) s.credit.fail(err);
    this.rejectExit(err);
  }

  private safeEmit(event: string, ...args: unknown[]): void {
    try {
      this.emitter.emit(event, ...args);
    } catch (e) {
      // A throwing listener is the caller's bug; surface it like EventEmitter would, outside our socket handler.
      process.nextTick(() => {
        throw e;
      });
    }
  }

  private input(stream: number): InStream {
    const s = this.ins.get(stream);
    if (!s) throw new InvalidArgumentError(`stream ${stream} of process ${this.pid} is not an input stream`, { pid: this.pid, stream });
    return s;
  }

  writeStdin(data: Buffer): Promise<void> {
    return this.writeStream(STREAM_IN, data);
  }

  closeStdin(): Promise<void> {
    return this.closeStream(STREAM_IN);
  }

  writeStream(stream: number, data: Buffer): Promise<void> {
    let s: InStream;
    try {
      s = this.input(stream);
    } catch (e) {
      return Promise.reject(e);
    }
    const p = s.chain.then(() => this.push(stream, s.credit, data));
    s.chain = p.catch(() => undefined);
    return p;
  }

  private async push(stream: number, credit: Credit, data: Buffer): Promise<void> {
    let off = 0;
    while (off < data.length) {
      if (this.finished) throw new SandboxError('process has exited', { pid: this.pid });
      await credit.wait();
      const n = Math.min(data.length - off, this.host.maxData, credit.value);
      credit.value -= n;
      this.host.send(this.id, FT.DATA, stream, data.subarray(off, off + n));
      off += n;
    }
  }

  closeStream(stream: number): Promise<void> {
    let s: InStream;
    try {
      s = this.input(stream);
    } catch (e) {
      return Promise.reject(e);
    }
    const p = s.chain.then(() => {
      if (!this.finished) this.host.send(this.id, FT.EOF, stream);
    });
    s.chain = p.catch(() => undefined);
    return p;
  }

  async signal(signal: NodeJS.Signals | number): Promise<void> {
    const n = signalNumber(signal);
    if (this.finished) return;
    this.host.send(this.id, FT.SIGNAL, 0, new PayloadWriter().u32(n).finish());
  }

  async resize(rows: number, cols: number): Promise<void> {
    const pty = this.streams.find((s) => s.kind === 'pty');
    if (!pty) throw new InvalidArgumentError(`process ${this.pid} has no terminal to resize`, { pid: this.pid });
    checkSize(rows, cols);
    if (this.finished) return;
    this.host.send(this.id, FT.CONTROL, pty.id, new PayloadWriter().u8(CTL_RESIZE).u16(rows).u16(cols).finish());
  }

  /** Stop receiving this process's output; it keeps running in the sandbox (re-attach later). */
  detach(): void {
    if (this.finished) return;
    this.host.send(this.id, FT.CLOSE, 0);
    this.fail(new SandboxError('detached from the process', { pid: this.pid }));
  }
}

/** ATTACH reply on 1.1: u8 count, count x (u8 id, u8 kind, u8 open). From the agent: bounded and checked. */
function readStreamTable(r: PayloadReader): StreamInfo[] {
  const n = r.u8();
  if (n > MAX_STREAMS) throw new ProtocolError(`process with ${n} streams`);
  const out: StreamInfo[] = [];
  for (let i = 0; i < n; i++) {
    const id = r.u8();
    const kind = KIND_NAMES[r.u8()];
    r.u8(); // open: informational
    if (!kind || out.some((s) => s.id === id)) throw new ProtocolError('bad stream table in ATTACH reply');
    out.push({ id, kind });
  }
  return out;
}

/** A terminal's size: what a u16 holds, and at least one cell. */
function checkSize(rows: number, cols: number): void {
  for (const [name, v] of [['rows', rows], ['cols', cols]] as const) {
    if (!Number.isInteger(v) || v < 1 || v > 0xffff) throw new InvalidArgumentError(`terminal ${name} must be an integer from 1 to 65535, not ${v}`);
  }
}

/** Checks a requested stream table (the agent checks it too; this fails before anything is sent). */
function checkStreams(streams: StreamSpec[]): void {
  if (streams.length === 0 || streams.length > MAX_STREAMS) throw new InvalidArgumentError(`a process has 1 to ${MAX_STREAMS} streams, not ${streams.length}`);
  const ids = new Set<number>();
  const fds = new Set<number>();
  for (const s of streams) {
    if (!Number.isInteger(s.id) || s.id < 0 || s.id > 254) throw new InvalidArgumentError(`stream id must be 0-254, not ${s.id}`);
    if (ids.has(s.id)) throw new InvalidArgumentError(`stream id ${s.id} is used twice`);
    ids.add(s.id);
    if (!(s.kind in STREAM_KIND)) throw new InvalidArgumentError(`unknown stream kind ${String(s.kind)}`);
    if (!Array.isArray(s.fds) || s.fds.length === 0) throw new InvalidArgumentError(`stream ${s.id} is bound to no file descriptor`);
    if (s.kind === 'pty') checkSize(s.rows ?? 24, s.cols ?? 80);
    for (const fd of s.fds) {
      if (!Number.isInteger(fd) || fd < 0 || fd > MAX_CHILD_FD) throw new InvalidArgumentError(`fd must be 0-${MAX_CHILD_FD}, not ${fd}`);
      if (fds.has(fd)) throw new InvalidArgumentError(`fd ${fd} is bound to two streams`);
      fds.add(fd);
    }
  }
}

function encodeExec(host: ChannelHost, req: ExecRequest): Buffer {
  if (!Array.isArray(req.argv) || req.argv.length === 0 || !req.argv[0]) throw new InvalidArgumentError('argv must be a non-empty array');
  if (req.streams) {
    host.require('exec-streams');
    if (req.streams.some((s) => s.kind === 'pty')) host.require('pty');
    checkStreams(req.streams);
    if (req.streams.filter((s) => s.kind === 'pty').length > 1) throw new InvalidArgumentError('a process has at most one terminal');
  }
  const hasInput = req.streams ? req.streams.some((s) => s.kind === 'pipe-in' || s.kind === 'pty') : req.stdin;
  let flags = hasInput ? 0 : req.holdReply ? EXEC_HOLD_REPLY : 0;
  if (req.streams) flags |= EXEC_STREAMS;
  else if (req.stdin) flags |= EXEC_STDIN_PIPE;
  const w = new PayloadWriter().u8(flags).bytes(req.cwd ?? '').bytes(req.user ?? '');
  w.u32(req.argv.length);
  for (const a of req.argv) {
    if (a.includes('\0')) throw new InvalidArgumentError('argv contains a NUL byte');
    w.bytes(a);
  }
  const env = Object.entries(req.env ?? {});
  w.u32(env.length);
  for (const [k, v] of env) {
    if (!k || k.includes('=') || k.includes('\0') || String(v).includes('\0')) throw new InvalidArgumentError(`invalid environment variable name or value: ${k}`);
    w.bytes(`${k}=${v}`);
  }
  if (req.streams) {
    w.u8(req.streams.length);
    for (const s of req.streams) {
      w.u8(s.id).u8(STREAM_KIND[s.kind]).u8(s.fds.length);
      for (const fd of s.fds) w.u8(fd);
      if (s.kind === 'pty') w.u16(s.rows ?? 24).u16(s.cols ?? 80);
    }
  }
  return w.finish();
}

function openProcess(
  host: ChannelHost,
  type: number,
  build: () => Buffer,
  kind: 'EXEC' | 'ATTACH',
  streams?: StreamInfo[],
  onStart?: (p: AgentProcess) => void,
): Promise<AgentProcess> {
  return openChannel<AgentProcess>(host, type, build, (id, resolve, reject) =>
    new ProcessChannel(host, id, kind, streams, (err, p) => (err ? reject(err) : resolve(p!)), onStart));
}

export function execProcess(host: ChannelHost, req: ExecRequest): Promise<AgentProcess> {
  const streams = req.streams ? req.streams.map((s) => ({ id: s.id, kind: s.kind })) : classicStreams(req.stdin);
  return openProcess(host, FT.EXEC, () => encodeExec(host, req), 'EXEC', streams, req.onStart);
}

export function attachProcess(host: ChannelHost, pid: number): Promise<AgentProcess> {
  if (!Number.isInteger(pid) || pid <= 0 || pid > 0xffffffff) return Promise.reject(new InvalidArgumentError(`invalid pid ${pid}`));
  return openProcess(host, FT.ATTACH, () => new PayloadWriter().u32(pid).finish(), 'ATTACH');
}
