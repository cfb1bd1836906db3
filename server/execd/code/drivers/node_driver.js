// The interpreter behind a javascript (or typescript) code context. It runs *inside the
// sandbox* as
//   node -e <this source> <token> <cwd> [typescript]
// and needs nothing but node >= 12; typescript contexts also need the `typescript` npm
// package (found next to the working directory, on NODE_PATH or in node's global modules):
// each cell is transpiled with its `transpileModule` (no type checking, as ts-node's
// transpile-only mode) and then run like javascript.
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
  try {
    return require(require.resolve('typescript', { paths }));
  } catch (error) {
    return null;
  }
}

// The javascript of a typescript cell, or a SyntaxError-like object for what does not parse.
function transpile(code, number) {
  const output = ts.transpileModule(code, {
    fileName: 'cell-' + number + '.ts',
    reportDiagnostics: true,
    compilerOptions: { target: ts.ScriptTarget.ES2020, module: ts.ModuleKind.CommonJS,
      esModuleInterop: true, sourceMap: false },
  });
  const problems = (output.diagnostics || []).filter(
    (d) => d.category === ts.DiagnosticCategory.Error);
  if (problems.length > 0) {
    const lines = problems.map((d) => {
      const text = ts.flattenDiagnosticMessageText(d.messageText, '\n');
      if (d.file && d.start !== undefined) {
        const at = d.file.getLineAndCharacterOfPosition(d.start);
        return 'cell-' + number + '.ts(' + (at.line + 1) + ',' + (at.character + 1) + '): ' + text;
      }
      return text;
    });
    const error = new SyntaxError(lines.join('; '));
    error.stack = lines.join('\n');
    throw error;
  }
  return output.outputText;
}

async function runCell(request) {
  count += 1;
  const number = count;
  let value;
  try {
    const code = ts !== null ? transpile(request.code, number) : request.code;
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
