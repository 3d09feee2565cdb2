import { randomBytes } from 'node:crypto';

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

/** `sbx-` + 12 random base36 characters (~62 bits): also the container id and hostname. */
export function newSandboxId(): string {
  const bytes = randomBytes(12);
  let s = '';
  for (const b of bytes) s += ALPHABET[b % 36];
  return `sbx-${s}`;
}
