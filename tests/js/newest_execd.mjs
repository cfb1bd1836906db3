// The newest JS SDK (installed as `opensandbox-next`) through execd's newest surface: bash
// sessions, directory listing, line reads, and the 501 of isolated sessions; prints what it
// saw as one JSON object for tests/test_execd_newest.py.
//
//   node tests/js/newest_execd.mjs <domain> <image> [--proxy]
import { ConnectionConfig, Sandbox } from "opensandbox-next";

const args = process.argv.slice(2);
const [domain, image] = args.filter((a) => !a.startsWith("--"));
const useServerProxy = args.includes("--proxy");
const connectionConfig = new ConnectionConfig({ domain, useServerProxy, requestTimeoutSeconds: 30 });
const lines = (execution) => execution.logs.stdout.map((m) => m.text);

const out = {};
const sandbox = await Sandbox.create({
  connectionConfig, image, entrypoint: ["tail", "-f", "/dev/null"], timeoutSeconds: 600,
  readyTimeoutSeconds: 30,
});
try {
  const commands = sandbox.commands;
  const sid = await commands.createSession({ workingDirectory: "/tmp/js-session" });
  const first = await commands.runInSession(sid, "export KEPT=1; PLAIN=2; f() { :; }; cd /tmp; pwd");
  const second = await commands.runInSession(
    sid, 'echo "kept=$KEPT plain=${PLAIN:-unset}"; pwd; type f >/dev/null 2>&1 || echo no-function');
  const perRun = await commands.runInSession(sid, "pwd", { workingDirectory: "/" });
  const slow = await commands.runInSession(sid, "echo before; sleep 30", { timeoutSeconds: 1 });
  const again = await commands.runInSession(sid, "echo still-usable");
  const failed = await commands.runInSession(sid, "exit 4");
  out.sessions = {
    id: first.id === sid, first: lines(first), second: lines(second), perRun: lines(perRun),
    slow: { stdout: lines(slow), exitCode: slow.exitCode }, again: lines(again),
    failed: failed.exitCode,
  };
  await commands.deleteSession(sid);
  try {
    await commands.runInSession(sid, "true");
    out.deleted = "still there";
  } catch (err) {
    out.deleted = err?.constructor?.name ?? String(err);
  }
  await sandbox.files.writeFiles([
    { path: "/tmp/js-tree/a.txt", data: "l1\nl2\nl3\n" },
    { path: "/tmp/js-tree/d/b.txt", data: "b" },
  ]);
  out.list1 = (await sandbox.files.listDirectory({ path: "/tmp/js-tree" })).map((e) => e.path);
  out.list2 = (await sandbox.files.listDirectory({ path: "/tmp/js-tree", depth: 2 })).map((e) => e.path);
  out.lines = await sandbox.files.readFile("/tmp/js-tree/a.txt", { offset: 2, limit: 2 });
  out.range = await sandbox.files.readFile("/tmp/js-tree/a.txt", { range: "bytes=3-4" });
  try {
    await sandbox.isolation.capabilities();
    out.isolation = "served";
  } catch (err) {
    out.isolation = String(err?.message ?? err);
  }
} catch (err) {
  out.error = String(err?.stack ?? err);
} finally {
  await sandbox.kill();
}
console.log(JSON.stringify(out));
