// The newest JS SDK (`opensandbox-next`, 0.1.11) with an egress policy: `networkPolicy` at
// create, then getEgressPolicy, patchEgressRules and deleteEgressRules. A program in the
// sandbox fetches each URL in turn. Prints one JSON object for tests/test_egress.py.
//
//   node tests/js/newer_egress.mjs <domain> <image> <allowed url> <other url> [--proxy]
import { ConnectionConfig, Sandbox } from "opensandbox-next";

const args = process.argv.slice(2);
const [domain, image, allowed, other] = args.filter((a) => !a.startsWith("--"));
const useServerProxy = args.includes("--proxy");
const connectionConfig = new ConnectionConfig({ domain, useServerProxy, requestTimeoutSeconds: 60 });

const fetchProgram = [
  "import sys, urllib.request",
  "for url in sys.argv[1:]:",
  "    try:",
  "        print(urllib.request.urlopen(url, timeout=10).read().decode())",
  "    except Exception as error:",
  "        print('failed', type(error).__name__)",
].join("\n");
const quote = (text) => "'" + text.replaceAll("'", "'\\''") + "'";

async function fetchAll(sandbox) {
  const run = await sandbox.commands.run(
    `python3 -c ${quote(fetchProgram)} ${quote(allowed)} ${quote(other)}`);
  return run.logs.stdout.map((m) => m.text);
}

const out = {};
try {
  const sandbox = await Sandbox.create({
    connectionConfig, image, timeoutSeconds: 600, readyTimeoutSeconds: 60,
    entrypoint: ["tail", "-f", "/dev/null"],
    networkPolicy: { defaultAction: "deny", egress: [{ action: "allow", target: "allowed.test" }] },
  });
  try {
    out.first = await fetchAll(sandbox);
    out.policy = await sandbox.getEgressPolicy();
    await sandbox.patchEgressRules([{ action: "allow", target: "other.test" },
                                    { action: "deny", target: "allowed.test" }]);
    out.patched = await sandbox.getEgressPolicy();
    out.afterPatch = await fetchAll(sandbox);
    await sandbox.deleteEgressRules(["other.test"]);
    out.afterDelete = await fetchAll(sandbox);
  } finally {
    await sandbox.kill();
  }
} catch (error) {
  out.error = String(error?.stack ?? error);
}
console.log(JSON.stringify(out));
