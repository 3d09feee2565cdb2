/**
 * OCI `linux.seccomp` → the line format that native/capsule-seccomp-bpf.c
 * compiles. Pure. The lines say exactly which libseccomp rules crun 1.8.1
 * would add for the same object, in the same order, so the compiled program
 * is byte for byte the one crun would build (see that file for the format and
 * for the parts of crun's translation done on the C side).
 *
 * Done here, following crun's libcrun_generate_seccomp:
 *   - a missing errno is EPERM; an errno on an action other than ERRNO/TRACE
 *     is an error (crun refuses such a config);
 *   - one `rule` line per syscall name, names in the rule's order;
 *   - at most the first 6 conditions count; when two of them test the same
 *     argument index, crun adds one rule per condition (any one matching is
 *     enough), otherwise one rule with all of them (all must match).
 * Anything the format cannot carry faithfully throws a RuntimeError, and the
 * caller then hands crun the plain object instead.
 */
import { RuntimeError } from '../errors/index.js';
import type { OciSeccomp, OciSeccompArg } from './seccomp.js';

export const SECCOMP_LINES_FORMAT = 'capsule-seccomp-bpf 1';

const EPERM = 1;
/** crun reads at most this many conditions per rule (the syscall has six arguments). */
const MAX_ARGS = 6;
const ACTION_RE = /^SCMP_ACT_[A-Z_]+$/;
const OP_RE = /^SCMP_CMP_[A-Z_]+$/;
const ARCH_RE = /^[A-Za-z0-9_]+$/;
const NAME_RE = /^[a-z0-9_]+$/;

function fail(message: string): never {
  throw new RuntimeError(`seccomp precompile: ${message}`);
}

function supportsErrno(action: string): boolean {
  return action === 'SCMP_ACT_ERRNO' || action === 'SCMP_ACT_TRACE';
}

function checkAction(action: unknown, where: string): string {
  if (typeof action !== 'string' || !ACTION_RE.test(action)) fail(`${where}: action ${JSON.stringify(action)} is not SCMP_ACT_*`);
  return action;
}

function errnoFor(action: string, errnoRet: number | undefined, where: string): number {
  if (errnoRet === undefined || errnoRet === null) return EPERM;
  if (!supportsErrno(action)) fail(`${where}: errno value given for ${action}`);
  if (!Number.isInteger(errnoRet) || errnoRet < 0 || errnoRet > 0xffffffff) fail(`${where}: errno ${errnoRet} is not a uint32`);
  return errnoRet;
}

/** uint64 as decimal; JSON numbers above 2^53 have already lost precision, so refuse them. */
function u64(v: unknown, where: string): string {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) fail(`${where}: ${JSON.stringify(v)} is not an exact unsigned integer`);
  return String(v);
}

function condition(a: OciSeccompArg, where: string): string {
  if (!Number.isInteger(a.index) || a.index < 0 || a.index >= MAX_ARGS) fail(`${where}: argument index ${a.index} is not 0-5`);
  if (typeof a.op !== 'string' || !OP_RE.test(a.op)) fail(`${where}: comparison ${JSON.stringify(a.op)} is not SCMP_CMP_*`);
  return `${a.index} ${a.op} ${u64(a.value, where)} ${u64(a.valueTwo ?? 0, where)}`;
}

/** The condition groups crun turns one rule's args into: each group becomes one libseccomp rule. */
export function conditionGroups(args: readonly OciSeccompArg[] | undefined | null): OciSeccompArg[][] {
  if (!args || args.length === 0) return [[]];
  const used = args.slice(0, MAX_ARGS);
  const indexes = new Set(used.map((a) => a.index));
  return indexes.size === used.length ? [used] : used.map((a) => [a]);
}

/** The whole policy as lines (each ending in "\n"), ready for the compiler's stdin. */
export function seccompToLines(seccomp: OciSeccomp): string {
  const out: string[] = [SECCOMP_LINES_FORMAT];
  const def = checkAction(seccomp.defaultAction, 'defaultAction');
  out.push(`default ${def} ${errnoFor(def, seccomp.defaultErrnoRet, 'defaultErrnoRet')}`);
  for (const arch of seccomp.architectures ?? []) {
    if (typeof arch !== 'string' || !ARCH_RE.test(arch)) fail(`architecture ${JSON.stringify(arch)} is not a plain name`);
    out.push(`arch ${arch}`);
  }
  let rules = 0;
  seccomp.syscalls.forEach((rule, i) => {
    const where = `syscalls[${i}]`;
    const action = checkAction(rule.action, where);
    const errno = errnoFor(action, rule.errnoRet, where);
    const groups = conditionGroups(rule.args).map((g) => [String(g.length), ...g.map((a) => condition(a, where))].join(' '));
    for (const name of rule.names) {
      if (typeof name !== 'string' || !NAME_RE.test(name)) fail(`${where}: syscall name ${JSON.stringify(name)} is not [a-z0-9_]+`);
      for (const g of groups) {
        out.push(`rule ${action} ${errno} ${name} ${g}`);
        rules++;
      }
    }
  });
  out.push(`end ${rules}`);
  return `${out.join('\n')}\n`;
}
