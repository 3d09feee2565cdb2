/**
 * What the services tell the daemon's counters (the Prometheus endpoint,
 * src/telemetry). An interface with a do-nothing default, so a service never
 * depends on prom-client and a test can build a service without one.
 */
export interface Telemetry {
  /** A create answered: how long it took, how it ended, and whether a warm pool served it. */
  sandboxCreated(template: string, seconds: number, outcome: 'ok' | 'error', pooled: boolean): void;
  /** A command started (background: its pid is known) or finished (foreground: its result is ready). */
  commandRan(seconds: number, mode: 'foreground' | 'background'): void;
  /** A template build finished. */
  templateBuilt(template: string, outcome: 'ok' | 'error'): void;
  /** An API call failed with this code (REST and MCP answers). */
  apiError(code: string): void;
}

export const NO_TELEMETRY: Telemetry = {
  sandboxCreated: () => undefined,
  commandRan: () => undefined,
  templateBuilt: () => undefined,
  apiError: () => undefined,
};
