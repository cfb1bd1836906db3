"""The newest Python SDK (opensandbox 1.1.x) through the Lifecycle API's newest surface, as
a user would write it from the SDK's docstrings: metadata patch and filters, snapshots and
restores (of a running and of a paused sandbox), diagnostics, signed endpoints, a pvc made
on demand. Prints what it saw as one JSON object for tests/test_newer_sdks.py.

    .venv-sdk-next/bin/python tests/compat/newer_lifecycle_sdk.py <domain> <image> [--proxy]
"""

import asyncio
import json
import sys
import time
import uuid
from datetime import timedelta

import httpx
from opensandbox import Sandbox, SandboxManager
from opensandbox.config import ConnectionConfig
from opensandbox.exceptions import SandboxException
from opensandbox.models.sandboxes import PVC, SandboxFilter, SnapshotFilter, Volume


async def ready(manager: SandboxManager, snapshot_id: str) -> str:
    """Poll a snapshot until it leaves Creating (the SDK has no helper for it)."""
    for _ in range(600):
        info = await manager.get_snapshot(snapshot_id)
        if info.status.state != "Creating":
            return info.status.state
        await asyncio.sleep(0.1)
    return "Creating"


async def main(domain: str, image: str, use_server_proxy: bool) -> dict[str, object]:
    config = ConnectionConfig(domain=domain, use_server_proxy=use_server_proxy,
                              request_timeout=timedelta(seconds=60))
    manager = await SandboxManager.create(connection_config=config)
    out: dict[str, object] = {}
    suite = "s" + uuid.uuid4().hex[:10]
    claim = "sdk-" + uuid.uuid4().hex[:10]
    sandbox = await Sandbox.create(
        image, connection_config=config, timeout=timedelta(minutes=10),
        metadata={"suite": suite, "team": "ai"},
        entrypoint=["sh", "-c", "echo entrypoint says hi; tail -f /dev/null"],
        volumes=[Volume(name="data", pvc=PVC(claim_name=claim, delete_on_sandbox_termination=True),
                        mount_path="/data")])
    made = [sandbox]
    snapshots: list[str] = []
    try:
        # Metadata: merge patch, visible at once in GET and in list filters.
        patched = await sandbox.patch_metadata({"team": None, "stage": "dev"})
        out["patched"] = patched.metadata
        out["got"] = (await sandbox.get_info()).metadata
        listed = await manager.list_sandbox_infos(
            SandboxFilter(metadata={"suite": suite, "stage": "dev"}))
        out["listed"] = [info.id == sandbox.id for info in listed.sandbox_infos]

        # A pvc made on demand, and files written by a command, then a snapshot.
        await sandbox.commands.run("mkdir -p /workspace && echo from-sdk > /workspace/s.txt && "
                                   "echo on-volume > /data/v.txt")
        snapshot = await sandbox.create_snapshot(name="sdk-snapshot")
        snapshots.append(snapshot.id)
        out["snapshot_first_state"] = snapshot.status.state
        out["snapshot_state"] = await ready(manager, snapshot.id)
        restored = await Sandbox.create(snapshot_id=snapshot.id, connection_config=config,
                                        timeout=timedelta(minutes=10))
        made.append(restored)
        run = await restored.commands.run("cat /workspace/s.txt; ls /data")
        out["restored_stdout"] = [m.text for m in run.logs.stdout]
        out["restored_snapshot_id"] = (await restored.get_info()).snapshot_id

        # A snapshot of a paused sandbox, listed, then deleted.
        await sandbox.pause()
        paused = await sandbox.create_snapshot()
        out["paused_snapshot_state"] = await ready(manager, paused.id)
        page = await manager.list_snapshots(SnapshotFilter(sandbox_id=sandbox.id))
        out["listed_snapshots"] = sorted(info.id for info in page.snapshot_infos) == \
            sorted([snapshot.id, paused.id])
        await manager.delete_snapshot(paused.id)
        try:
            await manager.get_snapshot(paused.id)
            out["deleted_snapshot"] = "still there"
        except SandboxException as error:
            out["deleted_snapshot"] = getattr(error, "status_code", None) or str(error)
        resumed = await Sandbox.resume(sandbox.id, connection_config=config)

        # Diagnostics after all that.
        logs = await resumed.get_diagnostic_logs("container")
        out["logs"] = logs.content
        events = await resumed.get_diagnostic_events("lifecycle")
        out["event_kinds"] = [line.split()[1] for line in (events.content or "").splitlines()]

        # A signed endpoint: accepted, refused when altered, refused once expired. With the
        # server proxy it is refused, as upstream refuses `expires` with `use_server_proxy`.
        try:
            signed = await resumed.get_signed_endpoint(44772, int(time.time()) + 3)
        except SandboxException as error:
            out["signed_refused"] = getattr(error, "status_code", None) or str(error)
            return out
        async with httpx.AsyncClient(timeout=30) as http:
            url = f"http://{signed.endpoint}/ping"
            out["signed_status"] = (await http.get(url, headers=signed.headers)).status_code
            altered = url.replace(signed.endpoint[-9:], "00000000" + signed.endpoint[-1])
            out["altered_status"] = (await http.get(altered, headers=signed.headers)).status_code
            for _ in range(100):
                expired = (await http.get(url, headers=signed.headers)).status_code
                if expired != 200:
                    break
                await asyncio.sleep(0.1)
            out["expired_status"] = expired
    finally:
        for each in reversed(made):
            await each.kill()
            await each.close()
        for snapshot_id in snapshots:
            await manager.delete_snapshot(snapshot_id)
        await manager.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], "--proxy" in sys.argv)),
                     default=str))
