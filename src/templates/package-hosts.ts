/**
 * Where package steps may go: the Debian mirrors this host's apt sources name
 * (the templates were debootstrapped from the first of them) and the npm
 * registry. A build sandbox's egress allowlist is exactly these, with their
 * ports: an apt or npm step reaches nothing else.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { parseDeb822, parseSourcesList } from './debian.js';

/** Default npm registry (CAPSULE_NPM_REGISTRY overrides it, e.g. for a local mirror). */
export const DEFAULT_NPM_REGISTRY = 'https://registry.npmjs.org/';

/** `host:port` egress rules for http(s) URLs; other schemes (file:, cdrom:) are skipped. */
export function egressRulesFor(urls: string[]): string[] {
  const out = new Set<string>();
  for (const u of urls) {
    let url: URL;
    try {
      url = new URL(u);
    } catch {
      continue;
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') continue;
    const port = url.port || (url.protocol === 'https:' ? '443' : '80');
    const host = url.hostname.startsWith('[') ? url.hostname : url.hostname.toLowerCase();
    out.add(`${host}:${port}`);
  }
  return [...out];
}

/** URIs of every enabled `deb` source on the host. */
export async function aptSourceUrls(aptDir = '/etc/apt'): Promise<string[]> {
  const uris: string[] = [];
  const add = (list: ReturnType<typeof parseSourcesList>) => {
    for (const s of list) if (s.types.includes('deb')) uris.push(...s.uris);
  };
  try {
    add(parseSourcesList(await fs.readFile(path.join(aptDir, 'sources.list'), 'utf8')));
  } catch {
    /* no sources.list */
  }
  for (const e of (await fs.readdir(path.join(aptDir, 'sources.list.d')).catch(() => [] as string[])).sort()) {
    const file = path.join(aptDir, 'sources.list.d', e);
    try {
      if (e.endsWith('.list')) add(parseSourcesList(await fs.readFile(file, 'utf8')));
      else if (e.endsWith('.sources')) add(parseDeb822(await fs.readFile(file, 'utf8')));
    } catch {
      /* unreadable: skip */
    }
  }
  return uris;
}

export async function packageHosts(opts: { aptDir?: string; npmRegistry?: string } = {}): Promise<{ apt: string[]; npm: string[] }> {
  const apt = egressRulesFor(await aptSourceUrls(opts.aptDir));
  const npm = egressRulesFor([opts.npmRegistry ?? process.env.CAPSULE_NPM_REGISTRY ?? DEFAULT_NPM_REGISTRY]);
  return { apt: apt.length ? apt : ['deb.debian.org:80'], npm };
}
