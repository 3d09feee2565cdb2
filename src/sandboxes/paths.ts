import path from 'node:path';

/** Lexically normalised absolute path inside the sandbox ("x/../y" → "/y"). The agent resolves it in the sandbox's own root. */
export function resolveSandboxPath(p: string): string {
  return path.posix.resolve('/', p);
}

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Environment of a command: defaults, then the sandbox's envs, then the command's own. */
export function buildEnv(
  sandboxEnvs: Record<string, string>,
  commandEnvs: Record<string, string> | undefined,
  user: string | undefined,
): Record<string, string> {
  const isRoot = user === undefined || user === 'root' || user === '0';
  return {
    PATH: DEFAULT_PATH,
    HOME: isRoot ? '/root' : /^\d+$/.test(user) ? '/' : `/home/${user}`,
    USER: isRoot ? 'root' : user,
    LOGNAME: isRoot ? 'root' : user,
    // The shell a string command runs in (commands.ts); tools that spawn "$SHELL" found it empty before.
    SHELL: '/bin/sh',
    LANG: 'C.UTF-8',
    ...sandboxEnvs,
    ...(commandEnvs ?? {}),
  };
}
