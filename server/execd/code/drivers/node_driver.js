// The interpreter behind a javascript (or typescript) code context. It runs *inside the
// sandbox* as
//   node -e <this source> <token> <cwd> [typescript]
// and needs nothing but node >= 12; typescript contexts also need the `typescript` npm
// package (found next to the working directory, on NODE_PATH or in node's global modules).
// Each cell is transpiled (no type checking, as ts-node's transpile-only mode) and then run
// like javascript: with the package's `transpileModule` up to 6.x, and from 7.x, whose
// package is a native compiler with no such API, by that compiler (`tsc --noCheck`) on the
// cell written to a scratch directory of the context (removed when the driver exits, and
// named in a `scratch` message so that the server removes it if the driver is killed).
//
// Requests arrive on stdin, one JSON object per line: {"op":"run","seq":N,"code":"..."} and
// {"op":"interrupt","seq":N} (the server repeats it until cell N ends). A worker thread owns stdin, so an interrupt is seen while a cell runs
// synchronously: it sends SIGINT to this process, and the cell (run with `breakOnSigint`)
// stops with an error; a cell waiting on a promise stops waiting. User code never sees the
// pipe: `process.stdin` is an empty stream.
//
// Each cell is a script run in this one global context, so `var`, `let`, `const`, functions
// and `require`d modules persist between cells. The completion value of the script is the
// cell's result (a promise is awaited first). The user's output goes to fd 1 and 2 unchanged;
// the driver's messages are lines `\x1e<token>|<json>`: `ready`, `result`, `display`,
// `error`, `done` on stdout and `sync` (all the cell's stderr came before it) on stderr.
'use strict';

const fs = require('fs');
const path = require('path');
const util = require('util');
const vm = require('vm');
const { Readable } = require('stream');
const { Worker } = require('worker_threads');

const TOKEN = process.argv[1] || '0';
const CWD = process.argv[2] || '';
const TYPESCRIPT = process.argv[3] === 'typescript';
let ts = null;
const MARK = '\x1e' + TOKEN + '|';

function writeAll(fd, text) {
  const data = Buffer.from(text);
  let offset = 0;
  while (offset < data.length) {
    try {
      offset += fs.writeSync(fd, data, offset, data.length - offset);
    } catch (error) {
      if (error.code !== 'EAGAIN') throw error;
    }
  }
}

function send(message, toStderr) {
  writeAll(toStderr ? 2 : 1, MARK + JSON.stringify(message) + '\n');
}

function describe(value) {
  return util.inspect(value, { depth: 4, colors: false });
}

function bundle(value) {
  return { 'text/plain': typeof value === 'string' ? value : describe(value) };
}

function errorMessage(error, interrupted) {
  if (interrupted) {
    return { ev: 'error', ename: 'KeyboardInterrupt', evalue: '', traceback: ['KeyboardInterrupt'] };
  }
  const isError = error instanceof Error;
  const ename = isError ? String(error.name || 'Error') : 'Error';
  const evalue = isError ? String(error.message) : describe(error);
  const stack = isError && error.stack ? String(error.stack) : 'Uncaught ' + evalue;
  let lines = stack.split('\n');
  // Frames below the last cell frame are the driver's own: leave them out.
  let last = -1;
  lines.forEach((line, index) => { if (/^\s+at .*cell-\d+/.test(line)) last = index; });
  if (last >= 0) lines = lines.slice(0, last + 1);
  return { ev: 'error', ename, evalue, traceback: lines };
}

// `display(value, ...)` shows values now; `display.raw({"text/html": ...})` sends a bundle.
function display(...values) {
  for (const value of values) send({ ev: 'display', data: bundle(value) });
}
display.raw = (data) => send({ ev: 'display', data });

const READER = `
const fs = require('fs');
const { StringDecoder } = require('string_decoder');
const { parentPort } = require('worker_threads');
const decoder = new StringDecoder('utf8');
const chunk = Buffer.alloc(65536);
const pause = new Int32Array(new SharedArrayBuffer(4));
let pending = '';
for (;;) {
  let size;
  try {
    size = fs.readSync(0, chunk, 0, chunk.length, null);
  } catch (error) {
    if (error.code === 'EAGAIN') { Atomics.wait(pause, 0, 0, 10); continue; }
    if (error.code === 'EOF') size = 0; else throw error;
  }
  if (size === 0) break;
  pending += decoder.write(chunk.subarray(0, size));
  let end;
  while ((end = pending.indexOf('\\n')) >= 0) {
    const line = pending.slice(0, end);
    pending = pending.slice(end + 1);
    let request;
    try { request = JSON.parse(line); } catch (error) { continue; }
    parentPort.postMessage(request);
    if (request.op === 'interrupt') process.kill(process.pid, 'SIGINT');
  }
}
parentPort.postMessage({ op: 'eof' });
`;

let count = 0;
let running = null;
const queue = [];

function loadTypeScript() {
  const globalModules = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules');
  const paths = [process.cwd(), ...(process.env.NODE_PATH || '').split(path.delimiter),
    globalModules, '/usr/local/lib/node_modules', '/usr/lib/node_modules'].filter(Boolean);
  let home;
  let version;
  try {
    home = path.dirname(require.resolve('typescript/package.json', { paths }));
    version = String(JSON.parse(fs.readFileSync(path.join(home, 'package.json'), 'utf8')).version);
  } catch (error) {
    return null;
  }
  let api = null;
  try {
    api = require(home);
  } catch (error) {
    api = null;
  }
  if (api !== null && typeof api.transpileModule === 'function') {
    return { version, transpile: (code, number) => transpileWithApi(api, code, number) };
  }
  const compiler = nativeCompiler(home);
  if (compiler !== null) {
    return { version, transpile: (code, number) => transpileWithCompiler(compiler, code, number) };
  }
  return { version, transpile: null };
}

// The native compiler of typescript 7.x: the executable its platform package holds.
function nativeCompiler(home) {
  const platformPackage = '@typescript/typescript-' + process.platform + '-' + process.arch;
  for (const name of ['tsc', 'tsgo']) {
    try {
      const found = path.join(path.dirname(require.resolve(platformPackage + '/package.json',
        { paths: [home] })), 'lib', name);
      fs.accessSync(found, fs.constants.X_OK);
      return found;
    } catch (error) {
      // not this one
    }
  }
  return null;
}

let scratch = null;

function scratchDirectory() {
  if (scratch === null) {
    scratch = fs.mkdtempSync(path.join(require('os').tmpdir(), 'opensandbox-typescript-'));
    send({ ev: 'scratch', path: scratch });
    process.on('exit', () => {
      try {
        (fs.rmSync || fs.rmdirSync)(scratch, { recursive: true, force: true });
      } catch (error) {
        // already gone
      }
    });
  }
  return scratch;
}

function syntaxError(lines) {
  const error = new SyntaxError(lines.join('; '));
  error.stack = lines.join('\n');
  return error;
}

// The javascript of a typescript cell, or a SyntaxError-like object for what does not parse.
function transpileWithApi(ts, code, number) {
  const output = ts.transpileModule(code, {
    fileName: 'cell-' + number + '.ts',
    reportDiagnostics: true,
    compilerOptions: { target: ts.ScriptTarget.ES2020, module: ts.ModuleKind.CommonJS,
      esModuleInterop: true, sourceMap: false },
  });
  const problems = (output.diagnostics || []).filter(
    (d) => d.category === ts.DiagnosticCategory.Error);
  if (problems.length > 0) {
    throw syntaxError(problems.map((d) => {
      const text = ts.flattenDiagnosticMessageText(d.messageText, '\n');
      if (d.file && d.start !== undefined) {
        const at = d.file.getLineAndCharacterOfPosition(d.start);
        return 'cell-' + number + '.ts(' + (at.line + 1) + ',' + (at.character + 1) + '): ' + text;
      }
      return text;
    }));
  }
  return output.outputText;
}

// The same through the native compiler: syntax only (--noCheck, and no lib files to read,
// so the global types it then misses, TS2318, are no error here).
function transpileWithCompiler(compiler, code, number) {
  const directory = scratchDirectory();
  const name = 'cell-' + number;
  const source = path.join(directory, name + '.ts');
  const target = path.join(directory, name + '.js');
  fs.writeFileSync(source, code);
  try {
    const run = require('child_process').spawnSync(compiler, ['--ignoreConfig', '--noCheck',
      '--noLib', '--types', '', '--target', 'es2020', '--module', 'commonjs',
      '--esModuleInterop', '--pretty', 'false', '--outDir', directory, name + '.ts'],
    { cwd: directory, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    if (run.error) throw run.error;
    const problems = [];
    for (const line of (run.stdout + '\n' + run.stderr).split('\n')) {
      const found = /^(?:(.*)\((\d+),(\d+)\): )?error (TS\d+): (.*)$/.exec(line.trim());
      if (found === null || found[4] === 'TS2318') continue;
      problems.push(found[1] ? found[1] + '(' + found[2] + ',' + found[3] + '): ' + found[5]
        : found[5]);
    }
    if (problems.length > 0) throw syntaxError(problems);
    return fs.readFileSync(target, 'utf8').replace(/^"use strict";\r?\n/, '');
  } finally {
    for (const file of [source, target]) {
      try { fs.unlinkSync(file); } catch (error) { /* not written */ }
    }
  }
}

async function runCell(request) {
  count += 1;
  const number = count;
  let value;
  try {
    const code = ts !== null ? ts.transpile(request.code, number) : request.code;
    value = vm.runInThisContext(code, { filename: 'cell-' + number, breakOnSigint: true });
    if (value !== null && (typeof value === 'object' || typeof value === 'function') &&
        typeof value.then === 'function') {
      const promise = value;
      value = await new Promise((resolve, reject) => {
        running.cancel = () => reject(running);
        promise.then(resolve, reject);
      });
    }
  } catch (error) {
    const interrupted = error === running || running.interrupted ||
      (error && error.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED');
    send(errorMessage(error, interrupted));
    return number;
  }
  if (value !== undefined) {
    globalThis._ = value;
    send({ ev: 'result', count: number, data: bundle(value) });
  }
  return number;
}

async function pump() {
  if (running !== null || queue.length === 0) return;
  const request = queue.shift();
  running = { seq: request.seq, interrupted: false, cancel: null };
  let number = count;
  try {
    number = await runCell(request);
  } catch (error) {
    send(errorMessage(error, false));
  } finally {
    running = null;
    send({ ev: 'sync', seq: request.seq }, true);
    send({ ev: 'done', seq: request.seq, count: number });
  }
  pump();
}

function main() {
  try {
    if (CWD) {
      fs.mkdirSync(CWD, { recursive: true });
      process.chdir(CWD);
    }
  } catch (error) {
    send({ ev: 'fatal', cwd: true, message: String(error && error.message) });
    process.exit(1);
  }
  if (TYPESCRIPT) {
    ts = loadTypeScript();
    if (ts === null) {
      send({ ev: 'fatal', missing: 'typescript',
        message: 'the typescript npm package is not installed' });
      process.exit(1);
    }
    if (ts.transpile === null) {
      send({ ev: 'fatal', missing: 'typescript',
        message: 'the typescript npm package it has, ' + ts.version + ', offers neither the ' +
          'transpileModule API of 5.x and 6.x nor the native compiler of 7.x' });
      process.exit(1);
    }
    globalThis.exports = {};
    globalThis.module = { exports: globalThis.exports };
  }
  const empty = new Readable({ read() { this.push(null); } });
  Object.defineProperty(process, 'stdin', { configurable: true, get: () => empty });
  process.on('SIGINT', () => {});
  process.on('unhandledRejection', (reason) => {
    process.stderr.write('Unhandled promise rejection: ' + describe(reason) + '\n');
  });
  process.on('uncaughtException', (error) => {
    process.stderr.write('Uncaught exception: ' + describe(error) + '\n');
  });
  globalThis.require = require;
  globalThis.display = display;
  const reader = new Worker(READER, { eval: true });
  reader.on('message', (request) => {
    if (request.op === 'run') {
      queue.push(request);
      pump();
    } else if (request.op === 'interrupt') {
      if (running !== null && running.seq === request.seq) {
        running.interrupted = true;
        if (running.cancel) running.cancel();
      }
    } else if (request.op === 'eof') {
      process.exit(0);
    }
  });
  send({ ev: 'ready', pid: process.pid, impl: ts !== null ? 'typescript ' + ts.version : 'node',
    version: process.versions.node });
}

main();
