// The files API through the official JS SDK (one upload request per file), checked against
// what a command in the same sandbox sees. Usage: node files.mjs <server domain> [image].
// Prints one JSON object with what it observed; tests/test_files_sdk.py asserts on it.
import { Sandbox } from "@alibaba-group/opensandbox";

const domain = process.argv[2];
// The image: one the server's runtime can run (the docker runtime needs a local one).
const image = process.argv[3] ?? "python:3.11";
if (!domain) {
  console.error("usage: node files.mjs <host:port> [image]");
  process.exit(2);
}

async function run(sandbox, command) {
  const execution = await sandbox.commands.run(command);
  if (execution.error) {
    throw new Error(`${command}: ${JSON.stringify(execution.error)}`);
  }
  return execution.logs.stdout.map((m) => m.text).join("\n");
}

const sandbox = await Sandbox.create({
  connectionConfig: { domain },
  image,
  entrypoint: ["tail", "-f", "/dev/null"],
});
const report = {};
try {
  const files = sandbox.files;
  await files.writeFiles([
    { path: "/workspace/js/a.txt", data: "one\n" },
    { path: "/workspace/js/sub/b.txt", data: "two\n", mode: 600 },
    { path: "/workspace/js/c.bin", data: new Uint8Array([0, 1, 254, 255]) },
  ]);
  report.cat = (await run(sandbox, "cat /workspace/js/a.txt /workspace/js/sub/b.txt")).split("\n");
  report.modes = await run(sandbox, "stat -c %a /workspace/js/a.txt /workspace/js/sub/b.txt");
  report.read = await files.readFile("/workspace/js/a.txt");
  report.range = await files.readFile("/workspace/js/sub/b.txt", { range: "bytes=1-2" });
  report.bytes = Array.from(await files.readBytes("/workspace/js/c.bin"));

  const infos = await files.getFileInfo(["/workspace/js/a.txt"]);
  const info = infos["/workspace/js/a.txt"];
  report.info = { path: info.path, size: info.size, mode: info.mode, owner: info.owner,
                  group: info.group };
  if (!(info.modifiedAt instanceof Date) || Number.isNaN(info.modifiedAt.getTime())) {
    throw new Error("modifiedAt is not a date");
  }

  const found = await files.search({ path: "/workspace/js", pattern: "*.txt" });
  report.search = found.map((f) => f.path).sort();

  await files.setPermissions([{ path: "/workspace/js/a.txt", mode: 640, owner: "nobody",
                                group: "nogroup" }]);
  report.permissions = await run(sandbox, "stat -c '%a %U %G' /workspace/js/a.txt");

  await files.replaceContents([{ path: "/workspace/js/a.txt", oldContent: "one",
                                 newContent: "ONE" }]);
  report.replaced = await run(sandbox, "cat /workspace/js/a.txt");

  await files.moveFiles([{ src: "/workspace/js/a.txt", dest: "/tmp/js/moved.txt" }]);
  report.moved = await run(sandbox,
    "cat /tmp/js/moved.txt; test -e /workspace/js/a.txt || echo gone");

  await files.createDirectories([{ path: "/workspace/js/made/deep", mode: 700 }]);
  report.dirs = await run(sandbox, "stat -c %a /workspace/js/made/deep");

  await files.deleteFiles(["/workspace/js/c.bin", "/tmp/js/moved.txt"]);
  await files.deleteDirectories(["/workspace/js/sub", "/workspace/js/made"]);
  report.deleted = await run(sandbox, "ls -A /workspace/js; echo end");

  report.metrics = await sandbox.metrics.getMetrics();
} finally {
  await sandbox.kill();
  await sandbox.close();
}
console.log(JSON.stringify(report));
