/**
 * Which backends this daemon serves: the container backend always (its OCI
 * runtime is `--runtime`), gVisor when runsc is installed and runs, microVMs
 * when QEMU and a guest kernel are there and the host has hardware
 * virtualization (or a test-only setting allows emulation), and the
 * reason for each one that is missing (GET /v1/info shows it, and a create
 * asking for it gets it in its `unsupported` error).
 */
import type { DaemonConfig, DataPaths } from '../config/index.js';
import { InvalidArgumentError } from '../errors/index.js';
import { Backends } from './backends.js';
import { OciRuntimeDriver, type RuntimeLogger } from './driver.js';
import { GvisorDriver } from './gvisor/driver.js';
import type { Isolation } from './isolation.js';
import { Launcher, LAUNCHER_PATH } from './launcher.js';
import { MicrovmDriver } from './microvm/driver.js';
import { findKernel, findQemu, hostAccel, QEMU_PACKAGE } from './microvm/kernel.js';
import { resolveBinary, runtimeFlavor } from './oci-cli.js';

export interface OpenedBackends {
  backends: Backends;
  /** The container backend itself: template builds need its exportChanges whatever the default isolation is. */
  container: OciRuntimeDriver;
}

export async function openBackends(
  config: Pick<DaemonConfig, 'runtime' | 'isolation' | 'idMapBase' | 'idMapSize' | 'microvmAllowTcg' | 'microvmKernel'>,
  deps: {
    paths: DataPaths;
    agentBinary: string;
    log: RuntimeLogger & { warn(obj: unknown, msg?: string): void };
    /** The driver kind a sandbox was recorded with (its row), for re-adoption after a restart. */
    recorded?: (id: string) => string | null | undefined;
    /** runsc to use (tests); default runsc on PATH. */
    runsc?: string;
    /** QEMU to use (tests); default qemu-system-x86_64 on PATH. */
    qemu?: string;
  },
): Promise<OpenedBackends> {
  if (runtimeFlavor(config.runtime) === 'runsc') {
    throw new InvalidArgumentError(
      'CAPSULE_RUNTIME / --runtime runsc: gVisor is an isolation kind now, next to the container runtime: keep --runtime crun (or runc) and pass --isolation gvisor (CAPSULE_ISOLATION=gvisor) to make it the default, or isolation "gvisor" per create',
    );
  }
  // One launcher for both drivers: it runs their tools and is the subreaper of every sandbox's processes.
  const launcher = Launcher.available(LAUNCHER_PATH) ? new Launcher(LAUNCHER_PATH) : null;
  const common = { paths: deps.paths, idMapBase: config.idMapBase, idMapSize: config.idMapSize, agentBinary: deps.agentBinary, logger: deps.log, launcher };
  const container = new OciRuntimeDriver({ runtime: config.runtime, ...common });
  // Its version, for GET /v1/info and the logs; a runtime that cannot say is still usable.
  await container.probe().catch((err: unknown) => deps.log.warn({ err }, 'could not read the runtime version'));
  const unavailable: Partial<Record<Isolation, string>> = {};
  const drivers: Array<OciRuntimeDriver | GvisorDriver | MicrovmDriver> = [container];
  const gvisor = await openGvisor(common, deps.runsc);
  if (gvisor instanceof GvisorDriver) drivers.push(gvisor);
  else unavailable.gvisor = gvisor;
  const microvm = await openMicrovm(config, { ...common, logger: deps.log }, deps.qemu);
  if (microvm instanceof MicrovmDriver) drivers.push(microvm);
  else unavailable.microvm = microvm;
  const backends = new Backends({
    drivers,
    unavailable,
    defaultIsolation: config.isolation,
    ...(deps.recorded ? { recorded: deps.recorded } : {}),
  });
  return { backends, container };
}

/** The gVisor driver, or why there is none. */
async function openGvisor(common: ConstructorParameters<typeof GvisorDriver>[0], runsc = 'runsc'): Promise<GvisorDriver | string> {
  if (!resolveBinary(runsc)) return 'runsc (gVisor) is not installed: apt-get install runsc, or capsule doctor --fix';
  const d = new GvisorDriver({ ...common, runsc });
  try {
    await d.probe();
    return d;
  } catch (e) {
    return `runsc does not run: ${(e as Error).message}; see capsule doctor`;
  }
}

/** The microVM driver, or why there is none (QEMU missing, no guest kernel, or emulation not allowed). */
export async function openMicrovm(
  config: Pick<DaemonConfig, 'idMapBase' | 'idMapSize' | 'microvmAllowTcg' | 'microvmKernel'>,
  common: { paths: DataPaths; agentBinary: string; logger: RuntimeLogger & { warn(obj: unknown, msg?: string): void } },
  qemu?: string,
): Promise<MicrovmDriver | string> {
  const bin = findQemu(qemu);
  if (!bin) return `QEMU is not installed: apt-get install ${QEMU_PACKAGE}, or capsule doctor --fix`;
  const kernel = findKernel(config.microvmKernel);
  if (typeof kernel === 'string') return kernel;
  const accel = hostAccel();
  if (accel === 'tcg' && !config.microvmAllowTcg) {
    return 'no hardware virtualization here (no kvm_intel/kvm_amd and /dev/kvm): QEMU would emulate the CPU (TCG), where the emulator is the only boundary; CAPSULE_MICROVM_ALLOW_TCG=1 allows it for tests only';
  }
  const d = new MicrovmDriver({ ...common, idMapBase: config.idMapBase, idMapSize: config.idMapSize, kernel, accel, qemu: bin });
  try {
    await d.probe();
    return d;
  } catch (e) {
    return `QEMU does not run: ${(e as Error).message}; see capsule doctor`;
  }
}
