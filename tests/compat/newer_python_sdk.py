"""The newest Python SDK (opensandbox 1.1.x, in its own virtualenv) through a sandbox's
everyday flows; prints what it saw as one JSON object for tests/test_newer_sdks.py.

    .venv-sdk-next/bin/python tests/compat/newer_python_sdk.py <domain> [--proxy]
"""

import asyncio
import json
import sys
from datetime import timedelta

from opensandbox import Sandbox
from opensandbox.config import ConnectionConfig
from opensandbox.models.filesystem import WriteEntry


async def main(domain: str, use_server_proxy: bool) -> dict[str, object]:
    config = ConnectionConfig(domain=domain, use_server_proxy=use_server_proxy)
    out: dict[str, object] = {}
    sandbox = await Sandbox.create("python:3.11", connection_config=config,
                                   timeout=timedelta(minutes=10))
    try:
        run = await sandbox.commands.run("echo hi; echo oops >&2; exit 3")
        out["stdout"] = [m.text for m in run.logs.stdout]
        out["stderr"] = [m.text for m in run.logs.stderr]
        out["exit_code"] = run.exit_code
        await sandbox.files.write_files([WriteEntry(path="/tmp/next.txt", data="newer SDK")])
        out["read"] = await sandbox.files.read_file("/tmp/next.txt")
        cat = await sandbox.commands.run("cat /tmp/next.txt")
        out["cat"] = [m.text for m in cat.logs.stdout]
        metrics = await sandbox.get_metrics()
        out["memory_ok"] = 0 <= metrics.memory_used_in_mib <= metrics.memory_total_in_mib
        await sandbox.pause()
        resumed = await Sandbox.resume(sandbox.id, connection_config=config)
        out["state_after_resume"] = (await resumed.get_info()).status.state
    finally:
        await sandbox.kill()
    forever = await Sandbox.create("python:3.11", connection_config=config, timeout=None)
    try:
        out["expires_at_without_timeout"] = (await forever.get_info()).expires_at
    finally:
        await forever.kill()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], "--proxy" in sys.argv)), default=str))
