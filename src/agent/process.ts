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
  EXEC_HOLD_REPLY,
  EXEC_STDIN_PIPE,
  FT,
  INIT_WINDOW,
  MAX_DATA,
  PayloadReader,
  PayloadWriter,
  ProtocolError,
  STREAM_ERR,
  STREAM_IN,
  STREAM_OUT,
  type Frame,
} from './frames.js';
import type { AgentProcess, ExecRequest, ExitStatus } from './types.js';

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
  private resolveExit!: (s: ExitStatus) => void;
  private rejectExit!: (e: Error) => void;
  private readonly recvLeft = [0, INIT_WINDOW, INIT_WINDOW];
  private readonly stdinCredit = new Credit(INIT_WINDOW);
  private stdinChain: Promise<void> = Promise.resolve();
  private finished = false;
  /** Frames that arrived right after the reply, replayed once the caller had a turn to add listeners. */
  private held: Frame[] | null = null;
  /** Credit withheld while paused, per stream, given back on resume. */
  private readonly owed = [0, 0, 0];
  private paused = false;

  constructor(
    host: ChannelHost,
    id: number,
    kind: 'EXEC' | 'ATTACH',
    private readonly onOpen: (err: Error | null, p?: ProcessChannel) => void,
  ) {
    super(host, id, kind);
    this.exited = new Promise<ExitStatus>((resolve, reject) => {
      this.resolveExit = resolve;
      this.rejectExit = reject;
    });
    this.exited.catch(() => undefined); // the caller may never look
  }

  on(event: 'stdout' | 'stderr', listener: (chunk: Buffer) => void): this {
    this.emitter.on(event, listener);
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
    if (this.what === 'ATTACH') this.outputTruncated = (r.u8() & 1) !== 0;
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
        if (f.stream !== STREAM_OUT && f.stream !== STREAM_ERR) throw new ProtocolError('DATA on a bad stream');
        const left = this.recvLeft[f.stream]! - f.payload.length;
        if (left < 0) throw new ProtocolError('process output beyond the granted credit');
        this.recvLeft[f.stream] = left;
        this.safeEmit(f.stream === STREAM_OUT ? 'stdout' : 'stderr', f.payload);
        // Consumed (listeners ran synchronously): give the credit back, unless the consumer asked to pause.
        if (this.paused) this.owed[f.stream]! += f.payload.length;
        else if (!this.finished) this.grant(f.stream, f.payload.length);
        return;
      }
      case FT.WINDOW:
        if (f.stream !== STREAM_IN) return;
        this.stdinCredit.add(new PayloadReader(f.payload, 'WINDOW').u32());
        return;
      case FT.EXIT: {
        const r = new PayloadReader(f.payload, 'EXIT');
        const exitCode = r.u32();
        const sig = r.u8();
        if (r.remaining >= 1 && (r.u8() & 1) !== 0) this.outputTruncated = true;
        if (exitCode > 255 + 128) throw new ProtocolError('exit code out of range');
        this.finished = true;
        this.host.forget(this.id);
        // Built only when a stdin write is waiting: an Error (stack trace) per exit cost ~15 µs of every exec.
        if (this.stdinCredit.waiting) this.stdinCredit.fail(new SandboxError('process has exited', { pid: this.pid }));
        const status: ExitStatus = { exitCode };
        if (sig) status.signal = signalName(sig) ?? `SIG${sig}`;
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

  private grant(stream: number, n: number): void {
    this.recvLeft[stream] = this.recvLeft[stream]! + n;
    this.host.send(this.id, FT.WINDOW, stream, new PayloadWriter().u32(n).finish());
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    for (const stream of [STREAM_OUT, STREAM_ERR]) {
      const n = this.owed[stream]!;
      this.owed[stream] = 0;
      if (n > 0 && !this.finished) this.host.guard(() => this.grant(stream, n));
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
    this.stdinCredit.fail(err);
    this.rejectExit(err);
  }

  private safeEmit(event: string, chunk: Buffer): void {
    try {
      this.emitter.emit(event, chunk);
    } catch (e) {
      // A throwing listener is the caller's bug; surface it like EventEmitter would, outside our socket handler.
      process.nextTick(() => {
        throw e;
      });
    }
  }

  writeStdin(data: Buffer): Promise<void> {
    const p = this.stdinChain.then(() => this.pushStdin(data));
    this.stdinChain = p.catch(() => undefined);
    return p;
  }

  private async pushStdin(data: Buffer): Promise<void> {
    let off = 0;
    while (off < data.length) {
      if (this.finished) throw new SandboxError('process has exited', { pid: this.pid });
      await this.stdinCredit.wait();
      const n = Math.min(data.length - off, MAX_DATA, this.stdinCredit.value);
      this.stdinCredit.value -= n;
      this.host.send(this.id, FT.DATA, STREAM_IN, data.subarray(off, off + n));
      off += n;
    }
  }

  closeStdin(): Promise<void> {
    const p = this.stdinChain.then(() => {
      if (!this.finished) this.host.send(this.id, FT.EOF, STREAM_IN);
    });
    this.stdinChain = p.catch(() => undefined);
    return p;
  }

  async signal(signal: NodeJS.Signals | number): Promise<void> {
    const n = signalNumber(signal);
    if (this.finished) return;
    this.host.send(this.id, FT.SIGNAL, 0, new PayloadWriter().u32(n).finish());
  }

  /** Stop receiving this process's output; it keeps running in the sandbox (re-attach later). */
  detach(): void {
    if (this.finished) return;
    this.host.send(this.id, FT.CLOSE, 0);
    this.fail(new SandboxError('detached from the process', { pid: this.pid }));
  }
}

function encodeExec(req: ExecRequest): Buffer {
  if (!Array.isArray(req.argv) || req.argv.length === 0 || !req.argv[0]) throw new InvalidArgumentError('argv must be a non-empty array');
  const flags = req.stdin ? EXEC_STDIN_PIPE : req.holdReply ? EXEC_HOLD_REPLY : 0;
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
  return w.finish();
}

function openProcess(host: ChannelHost, type: number, build: () => Buffer, kind: 'EXEC' | 'ATTACH'): Promise<AgentProcess> {
  return openChannel<AgentProcess>(host, type, build, (id, resolve, reject) =>
    new ProcessChannel(host, id, kind, (err, p) => (err ? reject(err) : resolve(p!))));
}

export function execProcess(host: ChannelHost, req: ExecRequest): Promise<AgentProcess> {
  return openProcess(host, FT.EXEC, () => encodeExec(req), 'EXEC');
}

export function attachProcess(host: ChannelHost, pid: number): Promise<AgentProcess> {
  if (!Number.isInteger(pid) || pid <= 0 || pid > 0xffffffff) return Promise.reject(new InvalidArgumentError(`invalid pid ${pid}`));
  return openProcess(host, FT.ATTACH, () => new PayloadWriter().u32(pid).finish(), 'ATTACH');
}
