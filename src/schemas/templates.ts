import { z } from 'zod';

export const TemplateInfo = z.object({
  name: z.string(),
  description: z.string(),
  status: z.enum(['missing', 'building', 'ready', 'failed']),
  sizeBytes: z.number().optional(),
  builtAt: z.string().optional(),
  error: z.string().optional(),
});
export const ListTemplatesResponse = z.object({ templates: z.array(TemplateInfo) });
export const TemplateParams = z.object({ name: z.string().min(1).max(64).regex(/^[a-z0-9][a-z0-9._-]*$/) });
