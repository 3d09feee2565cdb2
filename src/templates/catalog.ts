/**
 * The template service as callers see it: every method takes the caller's
 * RequestContext. Built-in templates are shared by all tenants, so reading
 * them needs no owner; a forced rebuild (which replaces the tree every tenant's
 * new sandboxes start from) needs an admin.
 */
import type { RequestContext } from '../auth/context.js';
import { PermissionDeniedError } from '../errors/index.js';
import type { BuildProgress, TemplateInfo } from './types.js';
import type { TemplateService } from './service.js';

export interface BuildRequest {
  force?: boolean | undefined;
  onProgress?: ((p: BuildProgress) => void) | undefined;
  signal?: AbortSignal | undefined;
}

export class TemplateCatalog {
  constructor(private readonly templates: TemplateService) {}

  list(_ctx: RequestContext): TemplateInfo[] {
    return this.templates.list();
  }

  get(_ctx: RequestContext, name: string): TemplateInfo {
    return this.templates.get(name);
  }

  /** Throws what build() would refuse with before it starts: an unknown name, a forced rebuild by a non-admin. */
  checkBuild(ctx: RequestContext, name: string, req: Pick<BuildRequest, 'force'> = {}): void {
    this.templates.get(name);
    if (req.force && !ctx.principal.admin) throw new PermissionDeniedError('a forced rebuild needs an admin key');
  }

  async build(ctx: RequestContext, name: string, req: BuildRequest = {}): Promise<TemplateInfo> {
    this.checkBuild(ctx, name, req);
    await this.templates.build(name, {
      ...(req.force ? { force: true } : {}),
      ...(req.onProgress ? { onProgress: req.onProgress } : {}),
      ...(req.signal ? { signal: req.signal } : {}),
    });
    return this.templates.get(name);
  }
}
