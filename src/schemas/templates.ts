import { z } from 'zod';
import { TemplateName } from './common.js';

export const TemplateInfo = z.object({
  name: z.string(),
  description: z.string(),
  status: z.enum(['missing', 'building', 'ready', 'failed']),
  sizeBytes: z.number().optional(),
  builtAt: z.string().optional(),
  error: z.string().optional(),
});
export const ListTemplatesResponse = z.object({ templates: z.array(TemplateInfo) });
export const TemplateParams = z.object({ name: TemplateName });
