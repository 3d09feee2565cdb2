/**
 * The envd secret E2B's SDK carries for a sandbox: envdAccessToken (`X-Access-Token`), which opens
 * the sandbox's in-sandbox API (commands, files). It derives from one random key per data directory
 * (`e2b.key`, 0600), so it survives daemon restarts as sandboxes do, and no table holds it.
 * (E2B's other one, trafficAccessToken, is Capsule's port token: NetworkService.portToken.)
 *
 * Signed file URLs are E2B's: `v1_` + base64(sha256("path:operation:user:token[:expiry]")).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const KEY_FILE = 'e2b.key';

export type FileOperation = 'read' | 'write';

/** The key of a data directory, made on first use. */
function loadKey(dataDir: string): Buffer {
  const file = path.join(dataDir, KEY_FILE);
  try {
    return Buffer.from(fs.readFileSync(file, 'utf8').trim(), 'hex');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const key = crypto.randomBytes(32);
  try {
    fs.writeFileSync(file, `${key.toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
    return key;
  } catch (err) {
    // Made meanwhile by another process on the same data dir: use that one.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return loadKey(dataDir);
    throw err;
  }
}

export class E2bTokens {
  private loaded: Buffer | undefined;

  /** `key`: the key itself, or the data directory whose key it is (read when first needed). */
  constructor(private readonly source: Buffer | { dataDir: string }) {}

  private get key(): Buffer {
    return (this.loaded ??= Buffer.isBuffer(this.source) ? this.source : loadKey(this.source.dataDir));
  }

  envdToken(sandboxId: string): string {
    return this.derive(`envd:${sandboxId}`);
  }

  checkEnvd(sandboxId: string, presented: string | undefined): boolean {
    return presented !== undefined && safeEqual(presented, this.envdToken(sandboxId));
  }

  /**
   * Whether a signed file URL is this sandbox's: its signature over path, operation and user with
   * the sandbox's access token, and an expiry (seconds) not passed yet when it has one.
   */
  checkSignature(sandboxId: string, s: { path: string; operation: FileOperation; user: string | undefined; signature: string; expiration: number | undefined }, nowMs = Date.now()): boolean {
    if (s.expiration !== undefined && s.expiration * 1000 < nowMs) return false;
    return safeEqual(s.signature, signFile(s.path, s.operation, s.user, this.envdToken(sandboxId), s.expiration));
  }

  private derive(what: string): string {
    return crypto.createHmac('sha256', this.key).update(what).digest('base64url');
  }
}

/** E2B's file URL signature (the SDK computes the same from the access token it holds). */
export function signFile(filePath: string, operation: FileOperation, user: string | undefined, token: string, expiration: number | undefined): string {
  const raw = `${filePath}:${operation}:${user ?? ''}:${token}${expiration !== undefined ? `:${expiration}` : ''}`;
  return `v1_${crypto.createHash('sha256').update(raw, 'utf8').digest('base64').replace(/=+$/, '')}`;
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}
