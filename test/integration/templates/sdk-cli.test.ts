/**
 * Templates defined in code (the SDK's Template builder) and from files (the
 * CLI's `capsule template build file.json|file.ts`), against a real daemon.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CLI, REPO_ROOT, removeDataDir, startTestDaemon, tempDataDir, type TestDaemon } from '../../helpers/daemon.js';
import { sha, tinyImage } from '../../helpers/images.js';
import { Sandbox, SandboxError, Template, type ConnectionOptions, type StepProgress } from '../../../src/sdk/index.js';

let d: TestDaemon;
let conn: ConnectionOptions;
let tmp: string;

function capsule(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CAPSULE_URL: d.url, CAPSULE_API_KEY: d.adminKey ?? '' },
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    child.once('error', reject);
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

async function run(template: string, cmd: string): Promise<string> {
  const s = await Sandbox.create({ ...conn, template });
  try {
    const r = await s.commands.run(cmd);
    assert.equal(r.exitCode, 0, r.stderr);
    return r.stdout;
  } finally {
    await s.kill();
  }
}

describe('templates from the SDK and the CLI', () => {
  before(async () => {
    const dataDir = tempDataDir();
    fs.chmodSync(dataDir, 0o755);
    d = await startTestDaemon({ dataDir });
    conn = { apiUrl: d.url, ...(d.adminKey ? { apiKey: d.adminKey } : {}) };
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'capsule-tpl-'));
    fs.mkdirSync(path.join(tmp, 'app/sub'), { recursive: true });
    fs.writeFileSync(path.join(tmp, 'app/run.sh'), 'echo "run.sh: $MODE"\n', { mode: 0o755 });
    fs.writeFileSync(path.join(tmp, 'app/sub/empty'), '');
    fs.writeFileSync(path.join(tmp, 'app/secret.key'), 'not for the template\n');
    fs.symlinkSync('run.sh', path.join(tmp, 'app/link'));
  });
  after(async () => {
    await d?.stop();
    if (d) await removeDataDir(d.dataDir);
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('builds a Template defined in code, with local files, and caches its layers across builds', async () => {
    const t = Template.from('busybox')
      .copy(path.join(tmp, 'app'), '/srv/app', { owner: 'user', ignore: (p) => p.endsWith('.key') })
      .env({ MODE: 'sdk' })
      .run('sh /srv/app/run.sh > /srv/out.txt && echo building')
      .workdir('/srv/app')
      .user('user');
    const progress: StepProgress[] = [];
    let log = '';
    const b = await t.build('sdk-env', { ...conn, onProgress: (p) => progress.push(p), onLog: (s) => (log += s) });
    assert.equal(b.status, 'succeeded');
    assert.equal(b.cacheHits, 0);
    assert.ok(progress.some((p) => p.step === 3 && p.phase.includes('run')), JSON.stringify(progress));
    assert.match(log, /building/);
    const out = await run('sdk-env', 'pwd; id -u; cat /srv/out.txt; ls -A /srv/app | tr "\\n" " "; echo; readlink link; stat -c %u run.sh');
    assert.deepEqual(out.trim().split('\n'), ['/srv/app', '1000', 'run.sh: sdk', 'link run.sh sub ', 'run.sh', '1000']);

    // Same files: same archive digest, every layer cached.
    const again = await t.build('sdk-env', conn);
    assert.equal(again.cacheHits, 2);
    // A changed file changes the copy layer and everything after it.
    fs.writeFileSync(path.join(tmp, 'app/run.sh'), 'echo "run.sh v2: $MODE"\n', { mode: 0o755 });
    const changed = await t.build('sdk-env', conn);
    assert.equal(changed.cacheHits, 0);
    assert.equal(await run('sdk-env', 'cat /srv/out.txt'), 'run.sh v2: sdk\n');

    const details = await Template.get('sdk-env', conn);
    assert.equal(details.config?.workdir, '/srv/app');
    assert.equal(details.definition?.steps[0]?.type, 'copy');
    assert.ok((await Template.list(conn)).some((x) => x.name === 'sdk-env' && x.status === 'ready'));
    await Template.remove('sdk-env', conn);
    await assert.rejects(Template.get('sdk-env', conn), { code: 'not_found' });
  });

  it('rejects a failed build with the step, its exit code and its output', async () => {
    const err = await Template.from('busybox')
      .run('echo this went wrong >&2; exit 3')
      .build('sdk-broken', conn)
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    assert.ok(err instanceof SandboxError, String(err));
    assert.match(err.message, /step 1/);
    assert.match(err.message, /exited with 3/);
    assert.match(err.message, /this went wrong/);
    await assert.rejects(Template.from('busybox').copy(path.join(tmp, 'nope'), '/x').build('sdk-x', conn), { code: 'invalid_argument' });
  });

  it('imports an image archive from a file, and an OCI layout directory', async () => {
    const img = await tinyImage();
    const file = path.join(tmp, 'tiny.tar');
    fs.writeFileSync(file, img.dockerSave);
    const b = await Template.importImage('sdk-tiny', file, conn);
    assert.equal(b.status, 'succeeded');
    assert.equal(await run('sdk-tiny', 'echo "$GREETING"; ls /keep'), 'from the image\nnew\n');

    const dir = path.join(tmp, 'layout');
    fs.mkdirSync(path.join(dir, 'blobs/sha256'), { recursive: true });
    const put = (b: Buffer) => {
      fs.writeFileSync(path.join(dir, 'blobs/sha256', sha(b).slice(7)), b);
      return { digest: sha(b), size: b.length };
    };
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...put(img.config) },
        layers: [
          { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...put(img.layer1gz) },
          { mediaType: 'application/vnd.oci.image.layer.v1.tar', ...put(img.layer2) },
        ],
      }),
    );
    fs.writeFileSync(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    fs.writeFileSync(path.join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...put(manifest) }] }));
    const fromDir = await Template.importImage('sdk-layout', dir, conn);
    assert.equal(fromDir.status, 'succeeded');
    assert.equal(await run('sdk-layout', 'pwd; id -un'), '/data\napp\n');
  });

  it('capsule template build takes a JSON definition with local copies, and a TypeScript module', async () => {
    fs.writeFileSync(
      path.join(tmp, 'web.json'),
      JSON.stringify({ from: 'busybox', steps: [{ type: 'copy', source: 'app', dest: '/w' }, { type: 'env', vars: { MODE: 'json' } }, { type: 'run', command: 'sh /w/run.sh > /w/out; echo json-step-output' }] }),
    );
    const j = await capsule(['template', 'build', path.join(tmp, 'web.json')]);
    assert.equal(j.code, 0, j.stderr);
    assert.match(j.stdout, /^web built \(bld_[0-9a-f]{16} in [\d.]+ s; 0 of 3 steps cached\)\n$/);
    assert.match(j.stderr, /json-step-output/);
    assert.match(j.stderr, /step 3\/3/);
    assert.match(j.stderr, /uploading [\d.]+[KMG]? \([0-9a-f]{12}\) \([\d.]+ s\)/);
    assert.equal(await run('web', 'cat /w/out'), 'run.sh v2: json\n');

    const sdk = path.join(REPO_ROOT, 'dist/src/sdk/index.js');
    fs.writeFileSync(
      path.join(tmp, 'tool.ts'),
      `import { Template } from ${JSON.stringify(sdk)};\nconst mode: string = 'ts';\nexport default Template.from('busybox').env({ MODE: mode }).run('echo "made by $MODE" > /made');\n`,
    );
    const t = await capsule(['template', 'build', path.join(tmp, 'tool.ts'), '--name', 'from-ts', '--quiet', '--json']);
    assert.equal(t.code, 0, t.stderr);
    assert.equal(JSON.parse(t.stdout).status, 'succeeded');
    assert.equal(await run('from-ts', 'cat /made'), 'made by ts\n');

    const ls = await capsule(['template', 'list']);
    assert.match(ls.stdout, /from-ts +ready/);
    const insp = await capsule(['template', 'inspect', 'web']);
    assert.equal(insp.code, 0, insp.stderr);
    assert.match(insp.stdout, /env: +MODE=json/);
    assert.match(insp.stdout, /sha256:/);

    const bad = await capsule(['template', 'build', path.join(tmp, 'missing.json')]);
    assert.equal(bad.code, 2, bad.stderr);
    const failing = path.join(tmp, 'failing.json');
    fs.writeFileSync(failing, JSON.stringify({ from: 'busybox', steps: [{ type: 'run', command: 'exit 9' }] }));
    const f = await capsule(['template', 'build', failing]);
    assert.notEqual(f.code, 0);
    assert.match(f.stderr, /exited with 9/);

    const imp = path.join(tmp, 'tiny.tar');
    const i = await capsule(['template', 'import', imp, '--name', 'cli-tiny']);
    assert.equal(i.code, 0, i.stderr);
    assert.match(i.stdout, /^cli-tiny built \(bld_[0-9a-f]{16} in [\d.]+ s; 2 of 2 steps cached\)\n$/);

    const rm = await capsule(['template', 'rm', 'web', 'from-ts']);
    assert.equal(rm.code, 0, rm.stderr);
    assert.equal((await capsule(['template', 'inspect', 'web'])).code, 1);
  });
});
