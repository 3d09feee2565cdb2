'use strict';
/**
 * Capsule code-interpreter driver for JavaScript and TypeScript contexts (runs inside a sandbox,
 * on the template's Node.js; CommonJS, no build step). Same streams as python_driver.py:
 * requests on fd 3, events on fd 4, one JSON object per line (docs/adr/0011).
 *
 * Cells run in this process's global context, like the Node REPL: top-level `let`, `const`,
 * `class`, `function` and `import` bindings persist, and top-level `await` works. To get there a
 * cell is parsed (acorn, from Debian's node-acorn) and its top-level declarations become
 * assignments to bindings declared once per context, edited in place so that line numbers in
 * errors are the user's. TypeScript is transpiled first (Debian's node-typescript, types erased,
 * not checked) and error positions are mapped back through its source map.
 */
const fs = require('node:fs');
const path = require('node:path');
const util = require('node:util');
const vm = require('node:vm');
const { createRequire } = require('node:module');
const { pathToFileURL } = require('node:url');

const REQ_FD = 3;
const EVT_FD = 4;
const CHUNK = 64 * 1024;
const MAX_BUNDLE = 16 * 1024 * 1024;
const language = process.argv[2] === 'typescript' ? 'typescript' : 'javascript';

let currentId = null;

function writeAll(fd, buf) {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if (e.code !== 'EAGAIN') throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2);
    }
  }
}

function emit(ev) {
  if (!('id' in ev)) ev.id = currentId;
  // JSON.stringify escapes lone surrogates (well-formed JSON.stringify), so every line is valid UTF-8.
  writeAll(EVT_FD, Buffer.from(`${JSON.stringify(ev)}\n`, 'utf8'));
}

// --- output: process.stdout / stderr writes become events ----------------------------------

for (const [stream, name] of [[process.stdout, 'stdout'], [process.stderr, 'stderr']]) {
  stream.write = (chunk, encoding, cb) => {
    let text = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString(typeof encoding === 'string' && Buffer.isEncoding(encoding) ? undefined : 'utf8');
    while (text.length > 0) {
      emit({ t: name, text: text.slice(0, CHUNK) });
      text = text.slice(CHUNK);
    }
    const done = typeof encoding === 'function' ? encoding : cb;
    if (typeof done === 'function') process.nextTick(done);
    return true;
  };
}

// An error thrown in a callback after its cell ended must not end the context.
process.on('uncaughtException', (err) => process.stderr.write(`Uncaught ${err && err.stack ? err.stack : String(err)}\n`));
process.on('unhandledRejection', (err) => process.stderr.write(`Unhandled rejection: ${err && err.stack ? err.stack : String(err)}\n`));

// --- rich display ------------------------------------------------------------------------

function bounded(bundle) {
  let size = 0;
  for (const v of Object.values(bundle)) size += typeof v === 'string' ? v.length : JSON.stringify(v ?? null).length;
  return size <= MAX_BUNDLE ? bundle : { 'text/plain': `<result of ${size} bytes omitted: larger than ${MAX_BUNDLE}>` };
}

function inspect(value) {
  return util.inspect(value, { colors: false, depth: 4, maxArrayLength: 200, maxStringLength: 100_000 });
}

/** A value's mime bundle: its own `_repr_mimebundle_()` / `[Symbol.for('capsule.display')]`, else text/plain. */
function mimeBundle(value) {
  const own = value && (value[Symbol.for('capsule.display')] || value._repr_mimebundle_);
  if (typeof own === 'function') {
    const b = own.call(value);
    if (b && typeof b === 'object') return b;
  }
  return { 'text/plain': inspect(value) };
}

const b64 = (data) => (typeof data === 'string' ? data : Buffer.from(data).toString('base64'));
function display(value) {
  emit({ t: 'display', data: bounded(mimeBundle(value)), metadata: {} });
}
const raw = (mime, conv = (x) => x) => (data) => emit({ t: 'display', data: bounded({ [mime]: conv(data), 'text/plain': `<${mime}>` }), metadata: {} });
display.html = raw('text/html', String);
display.markdown = raw('text/markdown', String);
display.svg = raw('image/svg+xml', String);
display.latex = raw('text/latex', String);
display.png = raw('image/png', b64);
display.jpeg = raw('image/jpeg', b64);
display.json = (obj) => emit({ t: 'display', data: bounded({ 'application/json': obj, 'text/plain': inspect(obj) }), metadata: {} });

// --- the cell transform ------------------------------------------------------------------

let acorn;
function parser() {
  if (!acorn) acorn = require('acorn');
  return acorn;
}

/** Lexical names this context declared (let/const/class/import); declared once, assigned by every cell. */
const declared = new Set();

function bindingNames(pattern, out) {
  if (!pattern) return out;
  switch (pattern.type) {
    case 'Identifier':
      out.push(pattern.name);
      break;
    case 'ObjectPattern':
      for (const p of pattern.properties) bindingNames(p.type === 'RestElement' ? p.argument : p.value, out);
      break;
    case 'ArrayPattern':
      for (const e of pattern.elements) bindingNames(e, out);
      break;
    case 'RestElement':
      bindingNames(pattern.argument, out);
      break;
    case 'AssignmentPattern':
      bindingNames(pattern.left, out);
      break;
  }
  return out;
}

/** True when `node` has an await (or for await) that is not inside a nested function. */
function hasTopLevelAwait(node) {
  if (!node || typeof node.type !== 'string') return false;
  if (node.type === 'AwaitExpression' || (node.type === 'ForOfStatement' && node.await)) return true;
  if (/Function/.test(node.type) || node.type === 'MethodDefinition' || node.type === 'PropertyDefinition') return false;
  for (const key of Object.keys(node)) {
    const v = node[key];
    if (Array.isArray(v)) {
      if (v.some((c) => c && typeof c.type === 'string' && hasTopLevelAwait(c))) return true;
    } else if (v && typeof v.type === 'string' && hasTopLevelAwait(v)) return true;
  }
  return false;
}

/**
 * Rewrites a cell: top-level declarations become assignments (so they persist and may be
 * declared again by a later cell), imports become awaited dynamic imports, and with top-level
 * await the cell becomes an async function whose last expression is returned. Edits never add
 * or remove a line break. Returns the code, the new lexical names, and whether it is async.
 */
function transform(code) {
  const ast = parser().parse(code, {
    ecmaVersion: 'latest',
    sourceType: 'script',
    allowAwaitOutsideFunction: true,
    allowImportExportEverywhere: true,
    allowReturnOutsideFunction: false,
    allowHashBang: true,
    locations: true,
  });
  const edits = [];
  const lexical = [];
  const globals = [];
  let isAsync = false;
  const src = (n) => code.slice(n.start, n.end);

  const declaration = (node) => {
    if (node.type === 'VariableDeclaration') {
      const parts = [];
      for (const d of node.declarations) {
        const names = bindingNames(d.id, []);
        if (node.kind === 'var') globals.push(...names);
        else lexical.push(...names);
        if (d.init) parts.push(`(${src(d.id)} = ${src(d.init)})`);
        else if (node.kind !== 'var') parts.push(names.map((n) => `(${n} = undefined)`).join(', '));
      }
      return parts.length ? `void (${parts.join(', ')});` : ';';
    }
    if (node.type === 'ClassDeclaration') {
      lexical.push(node.id.name);
      return `void (${node.id.name} = ${src(node)});`;
    }
    if (node.type === 'ImportDeclaration') {
      isAsync = true;
      const from = `(await __capsule.import(${JSON.stringify(node.source.value)}))`;
      const specs = node.specifiers;
      if (specs.length === 0) return `void ${from};`;
      const ns = specs.find((s) => s.type === 'ImportNamespaceSpecifier');
      const props = specs
        .filter((s) => s.type !== 'ImportNamespaceSpecifier')
        .map((s) => (s.type === 'ImportDefaultSpecifier' ? `default: ${s.local.name}` : `${s.imported.type === 'Identifier' ? s.imported.name : JSON.stringify(s.imported.value)}: ${s.local.name}`));
      for (const s of specs) lexical.push(s.local.name);
      if (ns && props.length) return `void (__capsule.ns = ${from}, ${ns.local.name} = __capsule.ns, ({${props.join(', ')}} = __capsule.ns));`;
      if (ns) return `void (${ns.local.name} = ${from});`;
      return `void ({${props.join(', ')}} = ${from});`;
    }
    return undefined;
  };

  for (const node of ast.body) if (hasTopLevelAwait(node)) isAsync = true;
  const functions = [];
  ast.body.forEach((node) => {
    let target = node;
    if (node.type === 'ExportNamedDeclaration' && node.declaration) {
      edits.push({ start: node.start, end: node.declaration.start, text: '' });
      target = node.declaration;
    }
    if (target.type === 'FunctionDeclaration') {
      functions.push(target.id.name);
      return;
    }
    const text = declaration(target);
    if (text !== undefined) edits.push({ start: target.start, end: target.end, text: keepLines(src(target), text) });
  });
  if (isAsync) {
    // Function declarations are hoisted inside the async wrapper; publish them as globals at its start.
    globals.push(...functions);
    const last = ast.body[ast.body.length - 1];
    if (last && last.type === 'ExpressionStatement') {
      edits.push({ start: last.expression.start, end: last.expression.start, text: 'return { value: (' });
      edits.push({ start: last.expression.end, end: last.expression.end, text: ') }' });
    }
  }
  edits.sort((a, b) => b.start - a.start || b.end - a.end);
  let out = code;
  for (const e of edits) out = out.slice(0, e.start) + e.text + out.slice(e.end);
  if (isAsync) {
    const publish = functions.map((f) => `globalThis[${JSON.stringify(f)}] = ${f};`).join(' ');
    out = `(async () => { ${publish} ${out}\n})()`;
  }
  return { code: out, lexical: [...new Set(lexical)], isAsync };
}

/** `text` with as many line breaks as `original`, appended, so later lines keep their numbers. */
function keepLines(original, text) {
  const want = (original.match(/\n/g) || []).length;
  const have = (text.match(/\n/g) || []).length;
  return want > have ? text + '\n'.repeat(want - have) : text;
}

// --- TypeScript --------------------------------------------------------------------------

let ts;
function transpile(code, fileName) {
  if (!ts) ts = require('typescript');
  const out = ts.transpileModule(code, {
    fileName,
    reportDiagnostics: true,
    compilerOptions: {
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.ESNext,
      sourceMap: true,
      inlineSourceMap: false,
      removeComments: false,
      // An import made in one cell is used by later ones: keep every value import.
      preserveValueImports: true,
      isolatedModules: true,
      moduleDetection: ts.ModuleDetectionKind ? ts.ModuleDetectionKind.Force : undefined,
    },
  });
  const bad = (out.diagnostics || []).filter((d) => d.category === ts.DiagnosticCategory.Error);
  if (bad.length) {
    const d = bad[0];
    const pos = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start) : undefined;
    const message = ts.flattenDiagnosticMessageText(d.messageText, '\n');
    const err = new SyntaxError(message);
    err.cellLocation = pos ? { line: pos.line + 1, column: pos.character + 1 } : undefined;
    throw err;
  }
  // TypeScript adds `export {};` to files it considers modules: not a statement a cell can run.
  const js = out.outputText.replace(/^export \{\};\s*$/m, '').replace(/\/\/# sourceMappingURL=.*$/m, '');
  return { js, map: decodeMappings(JSON.parse(out.sourceMapText).mappings) };
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
/** Source map v3 mappings: for each generated line, [generatedColumn, sourceLine, sourceColumn] segments. */
function decodeMappings(mappings) {
  const lines = [];
  let srcLine = 0;
  let srcCol = 0;
  let srcIdx = 0;
  for (const lineText of mappings.split(';')) {
    const segs = [];
    let genCol = 0;
    for (const seg of lineText.split(',')) {
      if (!seg) continue;
      const vals = [];
      let shift = 0;
      let value = 0;
      for (const ch of seg) {
        const digit = B64.indexOf(ch);
        value += (digit & 31) << shift;
        if (digit & 32) shift += 5;
        else {
          vals.push(value & 1 ? -(value >>> 1) : value >>> 1);
          value = 0;
          shift = 0;
        }
      }
      genCol += vals[0];
      if (vals.length >= 4) {
        srcIdx += vals[1];
        srcLine += vals[2];
        srcCol += vals[3];
        segs.push([genCol, srcLine, srcCol]);
      }
    }
    lines.push(segs);
  }
  return lines;
}

/** 1-based generated line/column to the TypeScript source's (nearest segment at or before it). */
function mapBack(map, line, column) {
  for (let l = line - 1; l >= 0; l--) {
    const segs = map[l] || [];
    let best;
    for (const s of segs) if (l < line - 1 || s[0] <= column - 1) best = s;
    if (best) return { line: best[1] + 1, column: l === line - 1 ? best[2] + (column - 1 - best[0]) + 1 : best[2] + 1 };
  }
  return { line, column };
}

// --- running a cell ----------------------------------------------------------------------

const requireFrom = (dir) => createRequire(path.join(dir, '__capsule__.js'));
globalThis.require = requireFrom(process.cwd());
globalThis.display = display;
Object.defineProperty(globalThis, '__capsule', {
  value: {
    ns: undefined,
    /** import() for cells: specifiers resolve from the working directory, like require. */
    async import(spec) {
      if (spec.startsWith('node:') || require('node:module').builtinModules.includes(spec)) return import(spec);
      let resolved;
      try {
        resolved = requireFrom(process.cwd()).resolve(spec);
      } catch {
        return import(spec);
      }
      return import(pathToFileURL(resolved).href);
    },
  },
  enumerable: false,
});

let cellNo = 0;

/** {name, value, traceback} with positions in the user's code (TypeScript: mapped back through the source map). */
function cellError(err, fileName, map, source) {
  if (!(err instanceof Error)) return { name: 'Error', value: `Uncaught ${inspect(err)}`, traceback: [`Uncaught ${inspect(err)}`] };
  const name = err.name || 'Error';
  // acorn appends "(line:column)" of the code it parsed, which is not the user's for TypeScript.
  const value = (err.message || '').replace(/ \(\d+:\d+\)$/, '');
  const where = (line, column) => (map ? mapBack(map, line, column) : { line, column });
  const traceback = [`${name}: ${value}`];
  const srcLines = source.split('\n');
  let shown = false;
  const at = (p, prefix) => {
    traceback.push(`${prefix}${fileName}:${p.line}:${p.column}`);
    if (!shown && srcLines[p.line - 1] !== undefined) {
      traceback.push(`    ${p.line} | ${srcLines[p.line - 1]}`);
      shown = true;
    }
  };
  if (err.cellLocation) at(err.cellLocation, '    at ');
  else if (err.loc && typeof err.pos === 'number') at(where(err.loc.line, err.loc.column + 1), '    at ');
  else {
    // The cell's own frames only: the driver's are noise.
    const re = new RegExp(`${fileName.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:(\\d+)(?::(\\d+))?`);
    const lines = String(err.stack || '').split('\n');
    const compile = re.exec(lines[0] || '');
    if (err instanceof SyntaxError && compile) at(where(Number(compile[1]), Number(compile[2] || 1)), '    at ');
    for (const l of lines) {
      const m = re.exec(l);
      if (!m || !/^\s+at /.test(l)) continue;
      const p = where(Number(m[1]), Number(m[2] || 1));
      const before = l.slice(0, m.index);
      traceback.push(`${before}${fileName}:${p.line}:${p.column}${l.slice(m.index + m[0].length)}`);
      if (!shown && srcLines[p.line - 1] !== undefined) {
        traceback.push(`    ${p.line} | ${srcLines[p.line - 1]}`);
        shown = true;
      }
    }
  }
  return { name, value, traceback };
}

async function execute(req) {
  cellNo += 1;
  const fileName = `Cell[${cellNo}]`;
  const envs = req.envs || {};
  const saved = {};
  for (const k of Object.keys(envs)) {
    saved[k] = process.env[k];
    process.env[k] = envs[k];
  }
  let map;
  try {
    let code = req.code || '';
    if (language === 'typescript') {
      const t = transpile(code, `${fileName}.ts`);
      code = t.js;
      map = t.map;
    }
    const { code: body, lexical, isAsync } = transform(code);
    const fresh = lexical.filter((n) => !declared.has(n));
    if (fresh.length) {
      vm.runInThisContext(`let ${fresh.join(', ')};`, { filename: `${fileName}:declare` });
      for (const n of fresh) declared.add(n);
    }
    globalThis.require = requireFrom(process.cwd());
    const script = new vm.Script(body, { filename: fileName, importModuleDynamically: (spec) => globalThis.__capsule.import(spec) });
    let value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
    if (isAsync) {
      const wrapped = await interruptible(value);
      value = wrapped ? wrapped.value : undefined;
    }
    if (value && typeof value.then === 'function') value = await interruptible(value);
    if (value !== undefined) emit({ t: 'result', data: bounded(mimeBundle(value)), metadata: {} });
    return 'ok';
  } catch (err) {
    if (err && (err.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED' || err === INTERRUPTED)) {
      emit({ t: 'error', name: 'Interrupted', value: 'the cell was interrupted (SIGINT)', traceback: [] });
      return 'interrupted';
    }
    emit({ t: 'error', ...cellError(err, fileName, map, req.code || '') });
    return 'error';
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/** Awaits `p`, unless SIGINT comes first (the promise's work goes on; the cell stops waiting for it). */
const INTERRUPTED = new Error('interrupted');
let onInterrupt = null;
process.on('SIGINT', () => {
  if (onInterrupt) onInterrupt();
});
function interruptible(p) {
  return new Promise((resolve, reject) => {
    onInterrupt = () => reject(INTERRUPTED);
    Promise.resolve(p).then(resolve, reject);
  }).finally(() => {
    onInterrupt = null;
  });
}

// --- the request loop --------------------------------------------------------------------

async function main() {
  if (language === 'typescript') transpile('let x: number = 1;', 'warmup.ts');
  parser();
  emit({ t: 'ready', language, pid: process.pid, version: process.version });
  const queue = [];
  let wake = null;
  let buf = '';
  const input = fs.createReadStream(null, { fd: REQ_FD, highWaterMark: 1 << 20 });
  input.setEncoding('utf8');
  input.on('data', (chunk) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        queue.push(JSON.parse(line));
      } catch {}
    }
    if (wake) wake();
  });
  input.on('end', () => process.exit(0));
  for (;;) {
    while (queue.length === 0) await new Promise((r) => (wake = r));
    wake = null;
    const req = queue.shift();
    if (req.op === 'shutdown') process.exit(0);
    if (req.op !== 'execute') continue;
    currentId = req.id;
    const status = await execute(req);
    emit({ t: 'end', status, count: cellNo });
    currentId = null;
  }
}

main().catch((e) => {
  emit({ t: 'fatal', message: String(e && e.stack ? e.stack : e) });
  process.exit(1);
});
