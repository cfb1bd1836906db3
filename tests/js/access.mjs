// Drives the official JS SDK through a sandbox's whole access lifecycle and prints what it saw
// as one JSON object on stdout, for tests/test_access_sdk.py to check.
//
//   node tests/js/access.mjs <domain> [--proxy] [--api-key=KEY]
//
// create (health check on) -> connect -> pause -> resume (health check on) -> kill.
import { ConnectionConfig, Sandbox } from "@alibaba-group/opensandbox";

const args = process.argv.slice(2);
const domain = args.find((a) => !a.startsWith("--"));
const useServerProxy = args.includes("--proxy");
const apiKey = args.find((a) => a.startsWith("--api-key="))?.slice("--api-key=".length);

const describe = (err) => ({
  name: err?.name,
  statusCode: err?.statusCode,
  code: err?.error?.code,
  message: String(err?.message ?? err),
});

async function waitForState(sbx, wanted) {
  const deadline = Date.now() + 20000;
  let state;
  while (Date.now() < deadline) {
    state = (await sbx.getInfo()).status.state;
    if (state === wanted) return state;
    await new Promise((r) => setTimeout(r, 50));
  }
  return state;
}

const out = { useServerProxy };
const connectionConfig = new ConnectionConfig({ domain, useServerProxy, apiKey, requestTimeoutSeconds: 30 });
let created;
try {
  created = await Sandbox.create({
    connectionConfig,
    image: "python:3.11",
    timeoutSeconds: 600,
    resource: { cpu: "1", memory: "1Gi" },
    readyTimeoutSeconds: 30,
  });
  out.id = created.id;
  out.endpoint = await created.getEndpoint(44772);
  out.healthyAfterCreate = await created.isHealthy();
  out.pingAfterCreate = await created.health.ping();

  const connected = await Sandbox.connect({ sandboxId: created.id, connectionConfig, readyTimeoutSeconds: 30 });
  out.healthyAfterConnect = await connected.isHealthy();
  await connected.close();

  await created.pause();
  out.stateAfterPause = await waitForState(created, "Paused");
  out.healthyWhilePaused = await created.isHealthy();
  try {
    await created.health.ping();
    out.pingWhilePaused = "succeeded";
  } catch (err) {
    out.pingWhilePaused = describe(err);
  }

  const resumed = await created.resume({ readyTimeoutSeconds: 30 });
  out.healthyAfterResume = await resumed.isHealthy();
  out.stateAfterResume = (await resumed.getInfo()).status.state;
  // `resumed` shares `created`'s transport (resume() passes its own config on): no close here.

  await created.kill();
  try {
    await created.getInfo();
    out.afterKill = "still there";
  } catch (err) {
    out.afterKill = describe(err);
  }
  try {
    await created.health.ping();
    out.pingAfterKill = "succeeded";
  } catch (err) {
    out.pingAfterKill = describe(err);
  }
} catch (err) {
  out.error = describe(err);
  process.exitCode = 1;
} finally {
  await created?.close();
}
console.log(JSON.stringify(out));
