/**
 * Scenario microvm — the microVM backend (QEMU -M microvm, ADR 0017) next to
 * a raw QEMU boot of the same kernel and to the container backend, same run:
 *
 *  - create → first command (`Sandbox.create({isolation: 'microvm'})` + `echo hi`),
 *    interleaved with the container's and with raw QEMU booting the same
 *    kernel and initramfs to its init and powering off (no disks, no agent);
 *  - exec round trip of `true` through the SDK, and straight to the relay's
 *    socket (no HTTP), in one long-lived microVM;
 *  - a file written and read back through the SDK;
 *  - host memory of the idle microVM (its QEMU's cgroup).
 *
 * On a host without hardware virtualization this measures software emulation
 * (TCG): the bench daemon allows it (CAPSULE_MICROVM_ALLOW_TCG, main.ts).
 * Skipped (with a note) when QEMU or the guest kernel is missing.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { connectAgent } from '../src/agent/client.js';
import { initramfs } from '../src/runtime/microvm/images.js';
import { findKernel, findQemu, hostAccel } from '../src/runtime/microvm/kernel.js';
import { Sandbox } from '../src/sdk/index.js';
import { idleMemoryMiB, checkTrue as check, timed, transferRows } from './backend-rows.js';
import { interleave, linkRatios, row, type Scenario } from './context.js';
import { now } from './stats.js';

export const microvm: Scenario = async (ctx) => {
  const errors: string[] = [];
  const notes: string[] = [];
  const qemu = findQemu();
  const kernel = findKernel(process.env.CAPSULE_MICROVM_KERNEL || null);
  if (!qemu || typeof kernel === 'string') {
    notes.push(`skipped: ${!qemu ? 'QEMU is not installed (apt-get install qemu-system-x86)' : kernel}`);
    return { name: 'microvm', title: 'microVM backend', rows: [], notes, errors };
  }
  const accel = hostAccel();
  // Raw QEMU: the same kernel and initramfs (agent as /init), booted to init; without --vm-init the agent
  // exits at once, the kernel panics, and -no-reboot ends QEMU. No disks, serial port or agent.
  const initrd = await initramfs(path.join(path.dirname(ctx.daemon.dataDir), 'bench-microvm'), path.join(ctx.daemon.dataDir, 'bin', 'capsule-agent'), kernel.modulesDir);
  const rawBoot = () =>
    new Promise<number>((resolve, reject) => {
      const t0 = now();
      const c = spawn(
        qemu,
        [
          '-M',
          'microvm,pit=on,pic=on,rtc=on',
          ...(accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host,-arch-capabilities'] : ['-accel', 'tcg,tb-size=64', '-cpu', 'qemu64']),
          '-m',
          '256M',
          '-nodefaults',
          '-no-user-config',
          '-display',
          'none',
          '-nic',
          'none',
          '-serial',
          'none',
          '-no-reboot',
          '-kernel',
          kernel.kernel,
          '-initrd',
          initrd,
          '-append',
          'console=ttyS0 quiet panic=-1 reboot=t tsc_early_khz=2000000',
        ],
        { stdio: 'ignore' },
      );
      const timer = setTimeout(() => c.kill('SIGKILL'), 60_000);
      c.on('error', reject);
      c.on('exit', (code, sig) => {
        clearTimeout(timer);
        if (sig) reject(new Error(`raw QEMU boot killed (${sig})`));
        else resolve(now() - t0);
      });
    });
  const first = (isolation: 'microvm' | 'container') => async () => {
    const t0 = now();
    const s = await Sandbox.create({ ...ctx.conn, template: 'busybox', isolation });
    let ms: number;
    try {
      const r = await s.commands.run('echo hi');
      ms = now() - t0;
      if (r.stdout !== 'hi\n') throw new Error(`echo hi printed ${JSON.stringify(r.stdout)}`);
    } finally {
      await s.kill();
    }
    return ms;
  };
  // One untimed boot first: it builds the busybox template image (cached per template).
  await first('microvm')().catch((e: Error) => errors.push(`warm-up: ${e.message}`));
  const n = ctx.quick ? 2 : 6;
  const got = await interleave(
    n,
    [
      { name: 'ttfc.microvm', run: first('microvm') },
      { name: 'qemu boot to init (raw)', run: rawBoot },
      { name: 'ttfc.container', run: first('container') },
    ],
    errors,
  );

  const vm = await Sandbox.create({ ...ctx.conn, template: 'busybox', isolation: 'microvm' });
  const ct = await Sandbox.create({ ...ctx.conn, template: 'busybox', isolation: 'container' });
  // The microVM driver's layout: the relay listens on <data>/microvm/sb/<id>/agent.sock.
  const agent = await connectAgent(path.join(ctx.daemon.dataDir, 'microvm', 'sb', vm.id, 'agent.sock'));
  try {
    for (let i = 0; i < 3; i++) {
      await vm.commands.run(['true']);
      await ct.commands.run(['true']);
    }
    const ex = await interleave(
      ctx.quick ? 10 : 60,
      [
        { name: 'exec true (sdk, microvm)', run: async () => timed(async () => check(await vm.commands.run(['true']))) },
        {
          name: 'agent exec true (microvm relay socket)',
          run: async () =>
            timed(async () => {
              const p = await agent.exec({ argv: ['true'], env: {}, stdin: false });
              check(await p.exited);
            }),
        },
        { name: 'exec true (sdk, container)', run: async () => timed(async () => check(await ct.commands.run(['true']))) },
      ],
      errors,
    );
    const idle = await idleMemoryMiB(vm.id);
    const mb = ctx.quick ? 20 : 100;
    const rows = [
      row('ttfc.microvm', 'capsule', 'ms', got.get('ttfc.microvm')!, { vs: 'qemu boot to init (raw)' }),
      row('qemu boot to init (raw)', 'baseline', 'ms', got.get('qemu boot to init (raw)')!, { vs: 'ttfc.container' }),
      row('ttfc.container', 'capsule', 'ms', got.get('ttfc.container')!),
      row('exec true (sdk, microvm)', 'capsule', 'ms', ex.get('exec true (sdk, microvm)')!, { vs: 'agent exec true (microvm relay socket)' }),
      row('agent exec true (microvm relay socket)', 'baseline', 'ms', ex.get('agent exec true (microvm relay socket)')!, { vs: 'exec true (sdk, container)' }),
      row('exec true (sdk, container)', 'capsule', 'ms', ex.get('exec true (sdk, container)')!),
    ];
    rows.push(...(await transferRows('microvm', vm, ct, mb, ctx.quick ? 1 : 3, errors)));
    if (idle.length > 0) rows.push(row('idle memory (microvm, QEMU cgroup)', 'capsule', 'MiB', idle));
    linkRatios(rows);
    notes.push(
      `accelerator: ${accel}${accel === 'tcg' ? ' (software emulation: no hardware virtualization on this host; test-only)' : ''}; kernel ${kernel.kernel}.`,
      'ttfc rows: create + `echo hi` through the SDK (teardown not timed), interleaved with a raw QEMU boot of the same kernel and initramfs to its init (it exits, the kernel panics, QEMU ends: boot to userspace plus the exit) and the container pair.',
      'exec rows: `true` in one long-lived sandbox of each kind; the agent row connects straight to the microVM relay\'s socket (no HTTP: the mux over virtio-serial and the guest agent).',
      `file rows: ${mb} MB written and read back through the SDK in the same two sandboxes; ratio: microVM / container.`,
    );
    return { name: 'microvm', title: `microVM backend (${accel}) next to a raw QEMU boot and the container backend`, rows, notes, errors };
  } finally {
    agent.close();
    await vm.kill().catch(() => undefined);
    await ct.kill().catch(() => undefined);
  }
};
