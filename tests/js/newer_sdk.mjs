// The newest JS SDK on the registry (installed as `opensandbox-next`), through a sandbox's
// everyday flows; prints what it saw as one JSON object for tests/test_newer_sdks.py.
//
//   node tests/js/newer_sdk.mjs <domain> [--proxy]
import { ConnectionConfig, Sandbox } from "opensandbox-next";

const args = process.argv.slice(2);
const domain = args.find((a) => !a.startsWith("--"));
const useServerProxy = args.includes("--proxy");
const connectionConfig = new ConnectionConfig({ domain, useServerProxy, requestTimeoutSeconds: 30 });

const out = { useServerProxy };
const sandbox = await Sandbox.create({
  connectionConfig, image: "python:3.11", timeoutSeconds: 600, readyTimeoutSeconds: 30,
});
try {
  out.healthy = await sandbox.isHealthy();
  const run = await sandbox.commands.run("echo hi; echo oops >&2; exit 3");
  out.stdout = run.logs.stdout.map((m) => m.text);
  out.stderr = run.logs.stderr.map((m) => m.text);
  out.exitCode = run.exitCode;
  await sandbox.files.writeFiles([{ path: "/tmp/next.txt", data: "written by the newer SDK" }]);
  out.read = await sandbox.files.readFile("/tmp/next.txt");
  out.cat = (await sandbox.commands.run("cat /tmp/next.txt")).logs.stdout.map((m) => m.text);
  const background = await sandbox.commands.run("echo one; sleep 0.3; echo two", { background: true });
  let cursor = 0;
  let content = "";
  for (let i = 0; i < 100; i++) {
    const logs = await sandbox.commands.getBackgroundCommandLogs(background.id, cursor);
    content += logs.content;
    cursor = logs.cursor ?? cursor;
    const status = await sandbox.commands.getCommandStatus(background.id);
    if (!status.running) {
      content += (await sandbox.commands.getBackgroundCommandLogs(background.id, cursor)).content;
      break;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  out.backgroundLog = content;
  await sandbox.pause();
  const resumed = await Sandbox.resume({ sandboxId: sandbox.id, connectionConfig, readyTimeoutSeconds: 30 });
  out.stateAfterResume = (await resumed.getInfo()).status.state;
} catch (err) {
  out.error = String(err?.stack ?? err);
} finally {
  await sandbox.kill();
}
console.log(JSON.stringify(out));
