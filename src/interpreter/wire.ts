/**
 * What a driver sends on its event stream, checked on the way in: one JSON
 * object per line, validated by schema, every size bounded. The driver runs
 * next to user code, so each line is hostile input; user code's own output only
 * ever arrives inside a stdout/stderr event's text (see the drivers).
 */
import { z } from 'zod';
import { CODE_LIMITS, type CodeResult, type ExecutionError } from '../schemas/code.js';

/** Longest event line taken (a 16 MiB image is ~21 MiB of base64 in JSON); a longer one is skipped whole. */
export const MAX_EVENT_LINE = 24 * 1024 * 1024;

const RunId = z.string().max(64).nullable().optional();
const Bundle = z.record(z.string().max(128), z.unknown());

export const DriverEvent = z.discriminatedUnion('t', [
  z.object({ t: z.literal('ready'), language: z.string().max(32), pid: z.number().int().optional(), version: z.string().max(200).optional() }),
  z.object({ t: z.literal('fatal'), message: z.string().max(64 * 1024) }),
  z.object({ t: z.enum(['stdout', 'stderr']), id: RunId, text: z.string() }),
  z.object({ t: z.enum(['display', 'result']), id: RunId, data: Bundle, metadata: z.unknown().optional() }),
  z.object({ t: z.literal('error'), id: RunId, name: z.string(), value: z.string(), traceback: z.array(z.string()).max(100_000) }),
  z.object({ t: z.literal('end'), id: RunId, status: z.enum(['ok', 'error', 'interrupted']), count: z.number().int().nullable().optional() }),
]);
export type DriverEvent = z.infer<typeof DriverEvent>;

/**
 * Splits a byte stream into lines of at most `max` bytes. A longer line is
 * dropped whole (reported once through `onOversized`), never buffered.
 */
export class LineSplitter {
  private parts: Buffer[] = [];
  private size = 0;
  private skipping = false;

  constructor(
    private readonly onLine: (line: Buffer) => void,
    private readonly onOversized: () => void,
    private readonly max = MAX_EVENT_LINE,
  ) {}

  push(chunk: Buffer): void {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl < 0 ? chunk.length : nl;
      if (!this.skipping) {
        if (this.size + (end - start) > this.max) {
          this.skipping = true;
          this.parts = [];
          this.size = 0;
          this.onOversized();
        } else if (end > start) {
          this.parts.push(chunk.subarray(start, end));
          this.size += end - start;
        }
      }
      if (nl < 0) return;
      if (!this.skipping) {
        const line = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.size);
        this.parts = [];
        this.size = 0;
        if (line.length) this.onLine(line);
      }
      this.skipping = false;
      start = nl + 1;
    }
  }
}

export function parseEvent(line: Buffer): DriverEvent | undefined {
  let v: unknown;
  try {
    v = JSON.parse(line.toString('utf8'));
  } catch {
    return undefined;
  }
  const r = DriverEvent.safeParse(v);
  return r.success ? r.data : undefined;
}

const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
const JPEG_MAGIC = Buffer.from([0xff, 0xd8, 0xff]);
const BASE64_RE = /^[A-Za-z0-9+/\r\n]*={0,2}\s*$/;

/** Base64 image data whose bytes start like `magic`, normalised (no line breaks); otherwise undefined. */
function image(v: unknown, magic: Buffer): string | undefined {
  if (typeof v !== 'string' || !BASE64_RE.test(v)) return undefined;
  const clean = v.replace(/\s+/g, '');
  const head = Buffer.from(clean.slice(0, 16), 'base64');
  return head.subarray(0, magic.length).equals(magic) ? clean : undefined;
}

const TEXT_FIELDS = {
  'text/plain': 'text',
  'text/html': 'html',
  'text/markdown': 'markdown',
  'image/svg+xml': 'svg',
  'text/latex': 'latex',
  'application/javascript': 'javascript',
} as const;

/** Size of a value as it will travel (strings by length, anything else as JSON). */
export function sizeOf(v: unknown): number {
  if (typeof v === 'string') return v.length;
  try {
    return JSON.stringify(v)?.length ?? 0;
  } catch {
    return Infinity;
  }
}

/**
 * A mime bundle from a driver as a CodeResult: only the known types, images
 * only when they are what they claim. Undefined when nothing is left or it is
 * larger than one result may be.
 */
export function toCodeResult(bundle: Record<string, unknown>, isMainResult: boolean): CodeResult | undefined {
  const out: CodeResult = { isMainResult, formats: [] };
  let size = 0;
  for (const [mime, field] of Object.entries(TEXT_FIELDS)) {
    const v = bundle[mime];
    if (typeof v !== 'string') continue;
    out[field] = v;
    out.formats.push(mime);
    size += v.length;
  }
  const png = image(bundle['image/png'], PNG_MAGIC);
  if (png !== undefined) {
    out.png = png;
    out.formats.push('image/png');
    size += png.length;
  }
  const jpeg = image(bundle['image/jpeg'], JPEG_MAGIC);
  if (jpeg !== undefined) {
    out.jpeg = jpeg;
    out.formats.push('image/jpeg');
    size += jpeg.length;
  }
  if ('application/json' in bundle) {
    const v = bundle['application/json'];
    out.json = v;
    out.formats.push('application/json');
    size += sizeOf(v);
  }
  if (out.formats.length === 0 || size > CODE_LIMITS.maxResultBytes) return undefined;
  return out;
}

export function resultSize(r: CodeResult): number {
  let n = 0;
  for (const k of ['text', 'html', 'markdown', 'svg', 'png', 'jpeg', 'latex', 'javascript'] as const) n += r[k]?.length ?? 0;
  if (r.json !== undefined) n += sizeOf(r.json);
  return n;
}

/** An exception from a driver, cut to the traceback limits. */
export function toExecutionError(e: { name: string; value: string; traceback: string[] }): ExecutionError {
  const cut = (s: string, n: number) => (s.length > n ? `${s.slice(0, n)}…` : s);
  const tb = e.traceback.slice(0, CODE_LIMITS.maxTracebackLines).map((l) => cut(l, CODE_LIMITS.maxTracebackLine));
  if (e.traceback.length > CODE_LIMITS.maxTracebackLines) tb.push(`… ${e.traceback.length - CODE_LIMITS.maxTracebackLines} more lines`);
  return { name: cut(e.name, 256), value: cut(e.value, 64 * 1024), traceback: tb };
}
