import { randomBytes } from 'node:crypto';

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

/** `sbx-` + 12 random base36 characters (~62 bits): also the container id and hostname. */
export function newSandboxId(): string {
  return `sbx-${random12()}`;
}

/** `vol-` + 12 random base36 characters: a named volume's id (its disk's directory name). */
export function newVolumeId(): string {
  return `vol-${random12()}`;
}

function random12(): string {
  const bytes = randomBytes(12);
  let s = '';
  for (const b of bytes) s += ALPHABET[b % 36];
  return s;
}
