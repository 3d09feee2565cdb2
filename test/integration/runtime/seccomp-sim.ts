/**
 * A classic-BPF interpreter for seccomp programs, for tests: runs a filter on
 * one `struct seccomp_data` and returns the action word the kernel would get.
 * Lets a test compare two compiled filters call by call without loading them.
 */

/** AUDIT_ARCH_* values the sandbox filter handles (x32 is x86_64 with the 0x40000000 syscall bit). */
export const AUDIT_ARCH_X86_64 = 0xc000003e;
export const AUDIT_ARCH_I386 = 0x40000003;

export interface SeccompCall {
  nr: number;
  arch: number;
  /** Up to six 64-bit arguments. */
  args?: readonly bigint[];
}

/** struct seccomp_data as the filter sees it (little-endian host). */
function seccompData(call: SeccompCall): Buffer {
  const b = Buffer.alloc(64);
  b.writeUInt32LE(call.nr >>> 0, 0);
  b.writeUInt32LE(call.arch >>> 0, 4);
  (call.args ?? []).forEach((a, i) => b.writeBigUInt64LE(BigInt.asUintN(64, a), 16 + 8 * i));
  return b;
}

/** Evaluate `prog` (raw sock_filter array) on `call`; throws on an instruction seccomp filters do not use. */
export function runSeccompFilter(prog: Buffer, call: SeccompCall): number {
  const data = seccompData(call);
  const n = prog.length / 8;
  const mem = new Uint32Array(16);
  let a = 0;
  let x = 0;
  for (let pc = 0, steps = 0; pc < n && steps < 100_000; pc++, steps++) {
    const code = prog.readUInt16LE(pc * 8);
    const jt = prog.readUInt8(pc * 8 + 2);
    const jf = prog.readUInt8(pc * 8 + 3);
    const k = prog.readUInt32LE(pc * 8 + 4);
    const jump = (cond: boolean) => {
      pc += cond ? jt : jf;
    };
    switch (code) {
      case 0x20: // ld [k]
        if (k + 4 > data.length) throw new Error(`load out of range at ${pc}`);
        a = data.readUInt32LE(k);
        break;
      case 0x00: a = k; break; // ld #k
      case 0x01: x = k; break; // ldx #k
      case 0x60: a = mem[k & 15] ?? 0; break; // ld M[k]
      case 0x61: x = mem[k & 15] ?? 0; break; // ldx M[k]
      case 0x02: mem[k & 15] = a; break; // st M[k]
      case 0x03: mem[k & 15] = x; break; // stx M[k]
      case 0x07: x = a; break; // tax
      case 0x87: a = x; break; // txa
      case 0x54: a = (a & k) >>> 0; break; // and #k
      case 0x44: a = (a | k) >>> 0; break; // or #k
      case 0x05: pc += k; break; // ja
      case 0x15: jump(a === k); break; // jeq #k
      case 0x25: jump(a > k); break; // jgt #k
      case 0x35: jump(a >= k); break; // jge #k
      case 0x45: jump((a & k) !== 0); break; // jset #k
      case 0x06: return k; // ret #k
      case 0x16: return a; // ret a
      default:
        throw new Error(`unsupported BPF opcode 0x${code.toString(16)} at ${pc}`);
    }
  }
  throw new Error('filter ran off its end');
}

/** "ALLOW", "ERRNO(1)", "KILL_THREAD", ... for messages. */
export function actionName(action: number): string {
  const act = action & 0xffff0000;
  const data = action & 0xffff;
  const names: Record<number, string> = {
    0x80000000: 'KILL_PROCESS',
    0x00000000: 'KILL_THREAD',
    0x00030000: 'TRAP',
    0x00050000: `ERRNO(${data})`,
    0x7fc00000: 'NOTIFY',
    0x7ff00000: `TRACE(${data})`,
    0x7ffc0000: 'LOG',
    0x7fff0000: 'ALLOW',
  };
  return names[act >>> 0] ?? `0x${(action >>> 0).toString(16)}`;
}
