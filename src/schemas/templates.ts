/**
 * Templates: the built-in ones (busybox, debian, base) and the ones users
 * define in code and build into layers. One definition schema serves the REST
 * API, the SDK's Template builder (which produces it) and `capsule template
 * build file.json`.
 */
import { z } from 'zod';
import { EnvVars, SandboxPath, TemplateName, Timestamp } from './common.js';

const Command = z
  .string()
  .min(1)
  .max(64 * 1024)
  .refine((s) => !s.includes('\0'), 'must not contain NUL');

/** A Debian package name, optionally `=version` (Debian policy: lowercase, digits, + - .). */
const DebianPackage = z
  .string()
  .min(2)
  .max(200)
  .regex(/^[a-z0-9][a-z0-9+.-]*(=[A-Za-z0-9.+~:-]+)?$/, 'a Debian package name, e.g. git or curl=7.88.1-10');

/** An npm package spec: name or @scope/name, optionally @version or @tag. No URLs, paths or git specs. */
const NpmPackage = z
  .string()
  .min(1)
  .max(214)
  .regex(/^(@[a-z0-9][a-z0-9._-]*\/)?[a-z0-9][a-z0-9._-]*(@[A-Za-z0-9.^~<>=|*+ -]+)?$/, 'an npm package, e.g. typescript or @types/node@20');

const User = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?$/, 'a user name or uid, optionally :group');

export const BlobDigest = z.string().regex(/^sha256:[0-9a-f]{64}$/, 'sha256:<64 hex digits>').describe('Digest of an uploaded archive (PUT /v1/blobs/:digest)');

export const TemplateStep = z
  .discriminatedUnion('type', [
    z.object({ type: z.literal('run'), command: Command.describe('Shell command run with /bin/sh -c in the build sandbox') }).strict(),
    z
      .object({
        type: z.literal('apt'),
        packages: z.array(DebianPackage).min(1).max(500).describe('Debian packages to install (apt-get install --no-install-recommends)'),
      })
      .strict(),
    z
      .object({
        type: z.literal('npm'),
        packages: z.array(NpmPackage).min(1).max(500).describe('npm packages to install'),
        global: z.boolean().optional().describe('npm install -g (else into the working directory)'),
      })
      .strict(),
    z
      .object({
        type: z.literal('copy'),
        source: BlobDigest.describe('The files, as an uploaded tar archive'),
        dest: SandboxPath.describe('Directory the archive is unpacked into'),
        owner: User.optional().describe('Owner of the copied files inside the sandbox; default root'),
      })
      .strict(),
    z.object({ type: z.literal('env'), vars: EnvVars.describe('Variables every later step and every sandbox of the template gets') }).strict(),
    z.object({ type: z.literal('workdir'), path: SandboxPath.describe('Working directory of later steps and of commands in the sandboxes') }).strict(),
    z.object({ type: z.literal('user'), user: User.describe('User later steps and the sandboxes\' commands run as') }).strict(),
  ])
  .describe('One build step: run, apt, npm and copy make a layer each; env, workdir and user change what the later steps and the sandboxes see');
export type TemplateStep = z.infer<typeof TemplateStep>;

export const TemplateDefinition = z
  .object({
    from: z
      .string()
      .min(1)
      .max(129)
      .regex(/^([a-z0-9][a-z0-9._-]*\/)?[a-z0-9][a-z0-9._-]*(:[a-z0-9][a-z0-9._-]*)?$/, 'a template name, e.g. debian, debian:bookworm, base, my-env')
      .describe('What to start from: a built-in template (busybox, debian or debian:bookworm, debian:trixie, base) or one of your templates (built or imported)'),
    steps: z.array(TemplateStep).max(200).describe('Build steps, in order'),
    cmd: z.string().max(4096).optional().describe('A start command recorded with the template (shown, not run)'),
  })
  .strict()
  .describe('A template defined in code');
export type TemplateDefinition = z.infer<typeof TemplateDefinition>;

const NewTemplateName = TemplateName.describe('Name of the template to build (your own namespace; built-in names are taken)');
export const BuildTemplateRequest = z
  .union([
    z.object({ name: NewTemplateName, definition: TemplateDefinition }).strict(),
    z
      .object({
        name: NewTemplateName,
        image: BlobDigest.describe('An OCI image archive (docker save, or a tar of an OCI image layout) uploaded with PUT /v1/blobs/:digest'),
      })
      .strict(),
  ])
  .describe('Either a definition to build or an image archive to import');

/** What a sandbox of the template gets besides its files. */
export const TemplateConfig = z.object({
  env: z.record(z.string(), z.string()).describe('Environment every command gets (under the sandbox\'s and the command\'s own)'),
  workdir: z.string().optional().describe('Default working directory of commands'),
  user: z.string().optional().describe('Default user of commands'),
  cmd: z.string().optional().describe('Recorded start command'),
  sudo: z.boolean().optional().describe('setuid programs such as sudo work in the sandboxes (the base template and templates built on it)'),
});
export type TemplateConfig = z.infer<typeof TemplateConfig>;

export const TemplateInfo = z.object({
  name: z.string(),
  description: z.string(),
  status: z.enum(['missing', 'building', 'ready', 'failed']),
  builtIn: z.boolean().optional().describe('True for busybox, debian and base: shared by every owner, built on the host'),
  owner: z.string().optional().describe('Owner of a user template (shown to admins)'),
  sizeBytes: z.number().optional(),
  builtAt: z.string().optional(),
  error: z.string().optional(),
  buildId: z.string().optional().describe('The current or last build of a user template'),
});
export const ListTemplatesResponse = z.object({ templates: z.array(TemplateInfo) });
export const TemplateParams = z.object({ name: TemplateName });

export const LayerInfo = z.object({
  digest: z.string(),
  kind: z.enum(['base', 'step', 'import', 'flatten', 'snapshot']),
  sizeBytes: z.number(),
  entries: z.number(),
  description: z.string(),
});

export const TemplateDetails = TemplateInfo.extend({
  layers: z.array(LayerInfo).describe('Read-only layers a sandbox of the template stacks, lowest first'),
  config: TemplateConfig.optional(),
  definition: TemplateDefinition.optional(),
});

export const BUILD_STATUSES = ['queued', 'running', 'succeeded', 'failed'] as const;
export const BuildInfo = z.object({
  id: z.string().describe('Build id, e.g. bld_3f2a...'),
  template: z.string(),
  status: z.enum(BUILD_STATUSES),
  step: z.number().int().describe('Step being run (1-based; 0 before the first)'),
  steps: z.number().int().describe('Steps in the definition'),
  phase: z.string().optional().describe('What the build is doing now, e.g. "step 3/5: run make" or "cached"'),
  startedAt: Timestamp,
  endedAt: Timestamp.optional(),
  error: z.string().optional().describe('Why it failed: the step, its exit code and the end of its log'),
  cacheHits: z.number().int().optional().describe('Steps whose layer was already in the store'),
});
export type BuildInfo = z.infer<typeof BuildInfo>;
export const BuildParams = z.object({ buildId: z.string().regex(/^bld_[0-9a-f]{16}$/) });

/** One line of a build's NDJSON stream. */
export const BuildEvent = z.discriminatedUnion('type', [
  z.object({ type: z.literal('progress'), step: z.number().int(), steps: z.number().int(), phase: z.string(), cached: z.boolean().optional() }),
  z.object({ type: z.literal('log'), step: z.number().int(), data: z.string().describe('Output of the step (UTF-8 text)') }),
  z.object({ type: z.literal('done'), build: BuildInfo }),
  z.object({ type: z.literal('error'), error: z.object({ code: z.string(), message: z.string() }), build: BuildInfo.optional() }),
]);
export type BuildEvent = z.infer<typeof BuildEvent>;

export const BlobParams = z.object({ digest: BlobDigest });
