"""Smoke test of `docker compose up`: the official SDK against the server in its container.

    python tests/docker/compose_smoke.py [localhost:8080] [image]

Waits for the server's health, then creates a sandbox with a host volume (under the
directory the compose file shares at the same path), runs a command, moves a file through
the files API, checks both access paths to execd, and kills the sandbox. Exits non-zero
with the reason on the first thing that does not work.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx
from opensandbox.config.connection_sync import ConnectionConfigSync
from opensandbox.models.execd import RunCommandOpts
from opensandbox.models.sandboxes import Host, Volume
from opensandbox.sync import SandboxSync

VOLUMES = Path("/tmp/opensandbox-volumes")


def wait_healthy(domain: str, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"http://{domain}/health", timeout=3)
            if response.status_code == 200:
                print("health:", response.json())
                return
            last = response.text
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(0.5)
    raise SystemExit(f"the server at {domain} never became healthy: {last}")


def main() -> None:
    domain = sys.argv[1] if len(sys.argv) > 1 else "localhost:8080"
    image = sys.argv[2] if len(sys.argv) > 2 else "opensandbox-test/busybox:1"
    wait_healthy(domain)
    VOLUMES.mkdir(parents=True, exist_ok=True)
    shared = Path(tempfile.mkdtemp(prefix="smoke-", dir=VOLUMES))
    (shared / "from-host.txt").write_text("hello from the host\n")
    for use_server_proxy in (False, True):
        config = ConnectionConfigSync(domain=domain, use_server_proxy=use_server_proxy,
                                      request_timeout=timedelta(seconds=60))
        sandbox = SandboxSync.create(
            image, entrypoint=["sleep", "infinity"], resource={"cpu": "500m", "memory": "128Mi"},
            volumes=[Volume(name="shared", host=Host(path=str(shared)), mount_path="/shared")],
            connection_config=config, ready_timeout=timedelta(seconds=60))
        try:
            execution = sandbox.commands.run("cat /shared/from-host.txt; echo made > "
                                             "/shared/from-sandbox.txt",
                                             opts=RunCommandOpts(timeout=timedelta(seconds=30)))
            output = "".join(m.text for m in execution.logs.stdout)
            assert execution.error is None and output == "hello from the host", (
                execution.error, output)
            assert (shared / "from-sandbox.txt").read_text() == "made\n"
            sandbox.files.write_file("/tmp/smoke.txt", "via the files API")
            assert sandbox.files.read_file("/tmp/smoke.txt") == "via the files API"
            assert sandbox.get_info().status.state == "Running"
            print(f"sandbox {sandbox.id} works (use_server_proxy={use_server_proxy})")
        finally:
            sandbox.kill()
            sandbox.close()
        gone = httpx.get(f"http://{domain}/v1/sandboxes/{sandbox.id}", timeout=10)
        assert gone.status_code == 404, gone.text
    print("compose smoke test passed")


if __name__ == "__main__":
    main()
