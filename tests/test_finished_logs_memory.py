"""Finished commands' output stays within the server-wide budget, measured in RSS.

200 background commands print 5 MB each. Each command keeps its newest 4 MiB (the
per-command buffer) and a sandbox may keep 1,000 finished commands, so without the global
budget the server would end up holding some 800 MB. With `[execd]
finished_logs_budget_bytes` at 64 MiB its resident memory grows by about that much, the
oldest commands answer 404, and `/health` says what is held.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.helpers.servers import ServerProcess, execd_url, new_sandbox, wait_for

MIB = 1024 * 1024
BUDGET = 64 * MIB
COMMANDS = 200
PRINTS = 5_000_000


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def run_to_the_end(execd: str) -> str:
    with httpx.Client(base_url=execd, timeout=120) as client:
        started = client.post("/command", json={
            "command": f"head -c {PRINTS} /dev/zero | tr '\\0' x", "background": True})
        assert started.status_code == 200, started.text
        command_id: str = json.loads(started.text.split("\n\n")[0])["text"]
        wait_for(lambda: not client.get(f"/command/status/{command_id}").json()["running"],
                 "a command to finish", timeout=120)
        return command_id


def test_two_hundred_finished_commands_stay_within_the_budget(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(execd={"finished_logs_budget_bytes": BUDGET})
    execd = execd_url(server, new_sandbox(server))
    run_to_the_end(execd)  # warm up: the first command's imports and buffers
    before = rss(server.process.pid)
    with ThreadPoolExecutor(max_workers=4) as pool:
        ids = list(pool.map(lambda _: run_to_the_end(execd), range(COMMANDS)))
    grown = rss(server.process.pid) - before
    print(f"\nRSS grew by {grown / MIB:.1f} MiB for {COMMANDS} finished commands of "
          f"{PRINTS / 1e6:.0f} MB (budget {BUDGET // MIB} MiB, "
          f"{COMMANDS * 4} MiB without it)")
    assert grown < BUDGET + 48 * MIB

    held = httpx.get(f"{server.url}/health").json()["finished_command_logs"]
    assert held["budget_bytes"] == BUDGET
    assert held["used_bytes"] <= BUDGET
    assert held["finished_commands"] == BUDGET // (4 * MIB)
    assert held["evicted_commands"] >= COMMANDS - held["finished_commands"]
    with httpx.Client(base_url=execd) as client:
        oldest = client.get(f"/command/{ids[0]}/logs")
        assert oldest.status_code == 404 and oldest.json()["code"] == "NOT_FOUND"
        newest = client.get(f"/command/{ids[-1]}/logs")
        assert newest.status_code == 200 and len(newest.content) == 4 * MIB
