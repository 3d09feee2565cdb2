/**
 * The MCP tools are a view of the API's schemas (pick/extend + one snake_case
 * mapping): the same field accepts and refuses the same values in both, and
 * defaults agree. A rule changed in src/schemas changes the tool with it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { z } from 'zod';
import { TOOLS, type ToolContext, newSessionState } from '../../../src/mcp/tools.js';
import {
  CreateSandboxRequest,
  ListFilesQuery,
  LIMITS,
  RunCodeRequest,
  RunCommandRequest,
  SetTimeoutRequest,
  WakeSandboxRequest,
  WriteFileQuery,
  camelKey,
  fromSnake,
  snakeKey,
  snakeObject,
  toSnake,
} from '../../../src/schemas/index.js';
import type { McpBackend } from '../../../src/mcp/backend.js';

const tool = (name: string) => {
  const t = TOOLS.find((x) => x.name === name);
  assert.ok(t, name);
  return t;
};

/** JSON Schema of a field without the words (descriptions differ by view on purpose). */
function rules(schema: z.ZodType): unknown {
  const strip = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(strip);
    if (v && typeof v === 'object') {
      return Object.fromEntries(Object.entries(v).filter(([k]) => k !== 'description' && k !== '$schema' && k !== 'default').map(([k, x]) => [k, strip(x)]));
    }
    return v;
  };
  return strip(z.toJSONSchema(schema.optional(), { unrepresentable: 'any', io: 'input' }));
}

describe('MCP tool schemas derive from the API schemas', () => {
  const pairs: Array<[string, string, z.ZodType]> = [
    ['sandbox_create', 'timeout_ms', CreateSandboxRequest.shape.timeoutMs],
    ['sandbox_create', 'envs', CreateSandboxRequest.shape.envs],
    ['sandbox_create', 'metadata', CreateSandboxRequest.shape.metadata],
    ['sandbox_create', 'resources', CreateSandboxRequest.shape.resources],
    ['sandbox_set_timeout', 'timeout_ms', SetTimeoutRequest.shape.timeoutMs],
    ['sandbox_resume', 'timeout_ms', WakeSandboxRequest.shape.timeoutMs],
    ['sandbox_start', 'timeout_ms', WakeSandboxRequest.shape.timeoutMs],
    ['run_command', 'timeout_ms', RunCommandRequest.shape.timeoutMs],
    ['run_command', 'cwd', RunCommandRequest.shape.cwd],
    ['run_command', 'user', RunCommandRequest.shape.user],
    ['run_command', 'stdin', RunCommandRequest.shape.stdin],
    ['run_code', 'timeout_ms', RunCodeRequest.shape.timeoutMs],
    ['run_code', 'envs', RunCodeRequest.shape.envs],
    ['write_file', 'mode', WriteFileQuery.shape.mode],
    ['write_file', 'path', WriteFileQuery.shape.path],
    ['list_files', 'path', ListFilesQuery.shape.path],
  ];
  for (const [name, field, api] of pairs) {
    it(`${name}.${field} has the API's rules`, () => {
      const mine = (tool(name).input.shape as Record<string, z.ZodType>)[field];
      assert.ok(mine, `${name} has ${field}`);
      assert.deepEqual(rules(mine), rules(api));
    });
  }

  it('the template-name rule is the API\'s (one copy)', () => {
    const mcp = tool('sandbox_create').input;
    for (const bad of ['Debian', '-x', '', 'a'.repeat(65), 'a/b']) {
      assert.equal(mcp.safeParse({ template: bad }).success, false, bad);
      assert.equal(CreateSandboxRequest.safeParse({ template: bad }).success, false, bad);
    }
    assert.equal(mcp.safeParse({ template: 'my-env.2' }).success, true);
  });

  it('list_files uses the API\'s default limit', async () => {
    let asked: number | undefined;
    const backend = {
      listFiles: async (_id: string, _p: string, limit?: number) => ((asked = limit), { entries: [], truncated: false }),
    } as unknown as McpBackend;
    const ctx: ToolContext = { backend, session: newSessionState(), defaultTemplate: 'busybox', signal: new AbortController().signal };
    await tool('list_files').handler({ sandbox_id: 'sbx-000000000000' }, ctx);
    assert.equal(asked, LIMITS.defaultListEntries);
  });
});

describe('case mapping', () => {
  it('maps keys both ways', () => {
    assert.equal(snakeKey('timeoutMs'), 'timeout_ms');
    assert.equal(snakeKey('maxOutputBytes'), 'max_output_bytes');
    assert.equal(camelKey('max_output_bytes'), 'maxOutputBytes');
    assert.deepEqual(fromSnake({ timeout_ms: 1, envs: { A_B: 'x' } }), { timeoutMs: 1, envs: { A_B: 'x' } });
    assert.deepEqual(toSnake({ timeoutMs: 1, gone: undefined }), { timeout_ms: 1 });
  });
  it('snakeObject keeps every rule of every field', () => {
    const s = snakeObject(RunCommandRequest.pick({ timeoutMs: true, maxOutputBytes: true }));
    assert.deepEqual(Object.keys(s.shape).sort(), ['max_output_bytes', 'timeout_ms']);
    assert.equal(s.safeParse({ timeout_ms: -1 }).success, false);
    assert.equal(s.safeParse({ max_output_bytes: LIMITS.maxOutputBytes + 1 }).success, false);
    assert.equal(s.safeParse({ timeout_ms: 5 }).success, true);
  });
});
