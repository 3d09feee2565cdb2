/** Per-sandbox metrics (JSON) and log, and the daemon's Prometheus text. */
import type { RouteTable } from '../route.js';
import type { Services } from '../services.js';
import { MetricsQuery, MetricsResponse, SandboxLogQuery, SandboxLogResponse, SandboxParams } from '../../schemas/index.js';
import { PermissionDeniedError, UnsupportedError } from '../../errors/index.js';
import { z } from 'zod';

/** Where Prometheus scrapes; admin keys only unless the daemon runs with --metrics-open. */
export const PROMETHEUS_PATH = '/metrics';

export function metricsRoutes(t: RouteTable, s: Services): void {
  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/metrics',
    summary: "A sandbox's CPU, memory, disk and pids, sampled by the daemon every few seconds for the sandbox's life (bounded), oldest first",
    tag: 'sandboxes',
    params: SandboxParams,
    query: MetricsQuery,
    responses: { 200: { description: 'Samples', schema: MetricsResponse } },
    handler: async ({ params, query, ctx }) =>
      s.metrics.get(ctx, params.id, {
        start: query.start !== undefined ? new Date(query.start) : undefined,
        end: query.end !== undefined ? new Date(query.end) : undefined,
      }),
  });

  t.add({
    method: 'GET',
    url: '/v1/sandboxes/:id/logs',
    summary:
      "A sandbox's log, oldest first: its lifecycle (created, running, paused, resumed, stopped, killed, expired, failed, timeouts) and its commands (started, ended with exit code or signal, OOM kills, timeouts); at most 1000 entries per sandbox, kept after it ends",
    tag: 'sandboxes',
    params: SandboxParams,
    query: SandboxLogQuery,
    responses: { 200: { description: 'Entries after `since`', schema: SandboxLogResponse } },
    handler: async ({ params, query, ctx }) => s.logs.list(ctx, params.id, query),
  });

  t.add({
    method: 'GET',
    url: PROMETHEUS_PATH,
    summary: 'Prometheus text: sandboxes by state, creates, create and exec latency histograms, pool sizes, template builds, API errors by code (admin key, or --metrics-open)',
    tag: 'meta',
    responses: { 200: { description: 'Prometheus text exposition format 0.0.4', contentType: 'text/plain', schema: z.string() } },
    errors: ['permission_denied', 'unsupported'],
    handler: async ({ ctx, reply }) => {
      if (!s.metricsOpen && !ctx.principal.admin) {
        throw new PermissionDeniedError('the Prometheus endpoint needs an admin key, or a daemon started with --metrics-open (CAPSULE_METRICS_OPEN=1)');
      }
      if (!s.prometheus) throw new UnsupportedError('this daemon keeps no Prometheus metrics');
      const { contentType, body } = await s.prometheus.scrape();
      return reply.code(200).type(contentType).send(body);
    },
  });
}
