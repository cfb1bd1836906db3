// The newest JS SDK (`opensandbox-next`, 0.1.11) through the Lifecycle API's newest surface:
// metadata patch and filters, snapshots and restores (of a running and of a paused sandbox),
// signed endpoints, a pvc made on demand. Prints one JSON object for tests/test_newer_sdks.py.
//
//   node tests/js/newer_lifecycle.mjs <domain> <image> [--proxy]
import { randomUUID } from "node:crypto";
import { ConnectionConfig, Sandbox, SandboxManager } from "opensandbox-next";

const args = process.argv.slice(2);
const [domain, image] = args.filter((a) => !a.startsWith("--"));
const useServerProxy = args.includes("--proxy");
const connectionConfig = new ConnectionConfig({ domain, useServerProxy, requestTimeoutSeconds: 60 });
const manager = SandboxManager.create({ connectionConfig });

async function ready(snapshotId) {
  for (let i = 0; i < 600; i++) {
    const info = await manager.getSnapshot(snapshotId);
    if (info.status.state !== "Creating") return info.status.state;
    await new Promise((r) => setTimeout(r, 100));
  }
  return "Creating";
}

const out = {};
const suite = "j" + randomUUID().slice(0, 10);
const claim = "js-" + randomUUID().slice(0, 10);
const made = [];
const snapshots = [];
try {
  const sandbox = await Sandbox.create({
    connectionConfig, image, timeoutSeconds: 600, readyTimeoutSeconds: 60,
    metadata: { suite, team: "ai" },
    volumes: [{ name: "data", pvc: { claimName: claim, deleteOnSandboxTermination: true }, mountPath: "/data" }],
  });
  made.push(sandbox);
  out.patched = (await sandbox.patchMetadata({ team: null, stage: "dev" })).metadata;
  const listed = await manager.listSandboxInfos({ metadata: { suite, stage: "dev" } });
  out.listed = listed.items.map((info) => info.id === sandbox.id);

  await sandbox.commands.run("mkdir -p /workspace && echo from-js > /workspace/j.txt && echo v > /data/v.txt");
  const snapshot = await manager.createSnapshot(sandbox.id, { name: "js-snapshot" });
  snapshots.push(snapshot.id);
  out.snapshotFirstState = snapshot.status.state;
  out.snapshotState = await ready(snapshot.id);
  const restored = await Sandbox.create({
    connectionConfig, snapshotId: snapshot.id, timeoutSeconds: 600, readyTimeoutSeconds: 60,
  });
  made.push(restored);
  out.restoredStdout = (await restored.commands.run("cat /workspace/j.txt")).logs.stdout.map((m) => m.text);
  out.restoredSnapshotId = (await restored.getInfo()).snapshotId ?? null;

  await sandbox.pause();
  const paused = await manager.createSnapshot(sandbox.id);
  out.pausedSnapshotState = await ready(paused.id);
  const page = await manager.listSnapshots({ sandboxId: sandbox.id });
  out.listedSnapshots = page.items.map((s) => s.id).sort().join() === [snapshot.id, paused.id].sort().join();
  await manager.deleteSnapshot(paused.id);
  try {
    await manager.getSnapshot(paused.id);
    out.deletedSnapshot = "still there";
  } catch (err) {
    out.deletedSnapshot = err?.statusCode ?? String(err);
  }
  await manager.resumeSandbox(sandbox.id);

  try {
    const signed = await restored.getSignedEndpoint(44772, Math.floor(Date.now() / 1000) + 3);
    const url = `http://${signed.endpoint}/ping`;
    out.signedStatus = (await fetch(url, { headers: signed.headers ?? {} })).status;
    const altered = url.replace(signed.endpoint.slice(-9), "00000000" + signed.endpoint.slice(-1));
    out.alteredStatus = (await fetch(altered, { headers: signed.headers ?? {} })).status;
    let expired = 200;
    for (let i = 0; i < 100 && expired === 200; i++) {
      expired = (await fetch(url, { headers: signed.headers ?? {} })).status;
      if (expired === 200) await new Promise((r) => setTimeout(r, 100));
    }
    out.expiredStatus = expired;
  } catch (err) {
    out.signedRefused = err?.statusCode ?? String(err);
  }
} catch (err) {
  out.error = String(err?.stack ?? err);
} finally {
  for (const each of made.reverse()) await each.kill().catch(() => {});
  for (const id of snapshots) await manager.deleteSnapshot(id).catch(() => {});
  await manager.close();
}
console.log(JSON.stringify(out));
