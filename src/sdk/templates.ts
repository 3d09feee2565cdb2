/**
 * Templates: the root filesystems sandboxes start from. `Template.list()`
 * shows what exists; `Template.build()` builds one, reporting progress.
 */
import { z } from 'zod';
import { UnavailableError, errorFromWire } from '../errors/index.js';
import { ListTemplatesResponse, TemplateInfo } from '../schemas/index.js';

export type TemplateInfo = z.infer<typeof TemplateInfo>;
import { HttpClient } from './http.js';
import { readNdjson } from './ndjson.js';
import { pickConnection, resolveConnection, type ConnectionOptions } from './options.js';

/** One step of a build as the daemon reports it. */
export interface BuildProgress {
  phase: string;
  /** 0..1 when known. */
  fraction?: number;
  message?: string;
}

/** The NDJSON events of POST /v1/templates/:name/build. */
const BuildEvent = z.discriminatedUnion('type', [
  z.object({ type: z.literal('progress'), phase: z.string(), fraction: z.number().optional(), message: z.string().optional() }),
  z.object({ type: z.literal('done'), template: TemplateInfo }),
  z.object({ type: z.literal('error'), error: z.object({ code: z.string(), message: z.string() }) }),
]);

export interface BuildOptions extends ConnectionOptions {
  /** Rebuild even when the template is already built. */
  force?: boolean;
  /** Called for every progress event, in order. */
  onProgress?: (p: BuildProgress) => void;
}

export const Template = {
  /** Every template the daemon knows, with its build status. */
  async list(opts: ConnectionOptions = {}): Promise<TemplateInfo[]> {
    const http = new HttpClient(resolveConnection(pickConnection(opts)));
    return (await http.json('GET', '/templates', ListTemplatesResponse)).templates;
  },

  /** Build a template and resolve with its info once ready; a failed build rejects. */
  async build(name: string, opts: BuildOptions = {}): Promise<TemplateInfo> {
    const http = new HttpClient(resolveConnection(pickConnection(opts)));
    const path = `/templates/${encodeURIComponent(name)}/build`;
    const { body, fail } = await http.stream('POST', path, { query: { force: opts.force ? 'true' : undefined } });
    for await (const ev of readNdjson(body, BuildEvent, { what: `POST ${path}`, onReadError: fail })) {
      if (ev.type === 'progress') {
        const p: BuildProgress = { phase: ev.phase };
        if (ev.fraction !== undefined) p.fraction = ev.fraction;
        if (ev.message !== undefined) p.message = ev.message;
        opts.onProgress?.(p);
      } else if (ev.type === 'done') {
        return ev.template;
      } else {
        throw errorFromWire(ev.error.code, ev.error.message);
      }
    }
    throw new UnavailableError(`POST ${path}: the build stream ended before the build finished`);
  },
};
