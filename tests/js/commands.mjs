// execd commands through the official JS SDK, unmodified.
// Usage: node commands.mjs <server domain, e.g. 127.0.0.1:8080> [image]
// Prints one JSON object (the last line of stdout) that tests/test_commands_sdk.py checks.
import { Sandbox } from "@alibaba-group/opensandbox";

const domain = process.argv[2];
// The image: one the server's runtime can run (the docker runtime needs a local one).
const image = process.argv[3] ?? "python:3.11";
if (!domain) {
  console.error("usage: node commands.mjs <domain> [image]");
  process.exit(2);
}

const texts = (messages) => messages.map((m) => m.text);
const errorOf = (execution) =>
  execution.error
    ? { name: execution.error.name, value: execution.error.value, traceback: execution.error.traceback }
    : null;
const statusOf = (s) => ({ running: s.running, exitCode: s.exitCode, error: s.error ?? null });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const sandbox = await Sandbox.create({
  connectionConfig: { domain },
  image,
  timeoutSeconds: 300,
});
const results = {};
try {
  const commands = sandbox.commands;

  // run with handlers, exit codes
  const handlerStdout = [];
  const handlerStderr = [];
  let initId = null;
  let complete = false;
  const run = await commands.run("echo one; echo two >&2; printf 'three\\nfour'", {}, {
    onStdout: (m) => { handlerStdout.push(m.text); },
    onStderr: (m) => { handlerStderr.push(m.text); },
    onInit: (i) => { initId = i.id; },
    onExecutionComplete: () => { complete = true; },
  });
  results.run = {
    id: run.id, initId, complete, handlerStdout, handlerStderr,
    stdout: texts(run.logs.stdout), stderr: texts(run.logs.stderr),
    exitCode: run.exitCode, error: errorOf(run),
  };
  const failed = await commands.run("exit 7");
  results.failed = {
    exitCode: failed.exitCode, error: errorOf(failed),
    status: statusOf(await commands.getCommandStatus(failed.id)),
  };
  results.cwd = texts((await commands.run("pwd", { workingDirectory: "/tmp" })).logs.stdout);
  results.envs = texts((await commands.run("echo $FROM_JS", { envs: { FROM_JS: "from-js" } }))
    .logs.stdout);

  // timeout kills, interrupt terminates
  const timed = await commands.run("sleep 30 & sleep 60; wait", { timeoutSeconds: 1 });
  results.timeout = {
    exitCode: timed.exitCode, error: errorOf(timed),
    status: statusOf(await commands.getCommandStatus(timed.id)),
  };
  let runningId = null;
  const running = commands.run("sleep 60", {}, { onInit: (i) => { runningId = i.id; } });
  while (runningId === null) await sleep(20);
  await commands.interrupt(runningId);
  const interrupted = await running;
  results.interrupt = {
    exitCode: interrupted.exitCode, error: errorOf(interrupted),
    status: statusOf(await commands.getCommandStatus(runningId)),
  };

  // background: logs polled with the cursor until done, through reads with nothing new
  const background = await commands.run(
    "for i in $(seq 1 10); do echo out-$i; sleep 0.1; done", { background: true });
  let output = "";
  let cursor = undefined;
  let emptyReads = 0;
  for (;;) {
    const status = await commands.getCommandStatus(background.id);
    const logs = await commands.getBackgroundCommandLogs(background.id, cursor);
    if (logs.content === "") emptyReads += 1;
    output += logs.content;
    cursor = logs.cursor;
    if (!status.running) break;
    await sleep(30);
  }
  const finalEmpty = await commands.getBackgroundCommandLogs(background.id, cursor);
  results.background = {
    output, emptyReads, finalEmpty,
    status: statusOf(await commands.getCommandStatus(background.id)),
  };
} finally {
  await sandbox.kill();
  await sandbox.close();
}
console.log(JSON.stringify(results));
