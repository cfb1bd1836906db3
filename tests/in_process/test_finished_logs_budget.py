"""The server-wide budget for finished commands' logs: oldest first, across sandboxes.

In this process over a real fake runtime, with `[execd] log_buffer_bytes = 4096` and a
budget of three such logs: each command prints 10,000 bytes (so holds 4,096), and the
fourth to finish pushes out the first, whichever sandbox it ran in. The evicted one then
answers 404 like an unknown command; `/health` counts what is held.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opensandbox_emulator.server.config import Config
from opensandbox_emulator.server.execd.commands.budget import FinishedLogs
from tests.helpers.contract import assert_error
from tests.helpers.in_process import InProcess, eventually, serve_in_process

LOG = 4096


async def run_in_background(emulator: InProcess, sandbox_id: str) -> str:
    execd = emulator.execd(sandbox_id)
    started = await emulator.client.post(f"{execd}/command", json={
        "command": "head -c 10000 /dev/zero | tr '\\0' x", "background": True})
    assert started.status_code == 200, started.text
    command_id: str = json.loads(started.text.split("\n\n")[0])["text"]

    async def finished() -> bool:
        status = await emulator.client.get(f"{execd}/command/status/{command_id}")
        return status.json()["running"] is False

    await eventually(finished, "the command to finish")
    return command_id


@pytest.mark.anyio
async def test_the_oldest_finished_log_goes_first_whatever_its_sandbox(tmp_path: Path) -> None:
    config = Config().replace("execd", log_buffer_bytes=LOG,
                              finished_logs_budget_bytes=3 * LOG)
    async with serve_in_process(tmp_path, config) as emulator:
        first, second = await emulator.new_sandbox(), await emulator.new_sandbox()
        ran = [(first, await run_in_background(emulator, first)),
               (second, await run_in_background(emulator, second)),
               (first, await run_in_background(emulator, first))]
        health = (await emulator.client.get("/health")).json()["finished_command_logs"]
        assert health == {"budget_bytes": 3 * LOG, "used_bytes": 3 * LOG,
                          "finished_commands": 3, "evicted_commands": 0}
        ran.append((second, await run_in_background(emulator, second)))

        oldest_sandbox, oldest = ran[0]
        execd = emulator.execd(oldest_sandbox)
        for path in (f"/command/status/{oldest}", f"/command/{oldest}/logs"):
            assert_error(await emulator.client.get(execd + path), 404, "NOT_FOUND", oldest)
        for sandbox_id, command_id in ran[1:]:
            logs = await emulator.client.get(
                f"{emulator.execd(sandbox_id)}/command/{command_id}/logs")
            assert logs.status_code == 200
            assert logs.content == b"x" * LOG
        health = (await emulator.client.get("/health")).json()["finished_command_logs"]
        assert health == {"budget_bytes": 3 * LOG, "used_bytes": 3 * LOG,
                          "finished_commands": 3, "evicted_commands": 1}

        # A sandbox that goes takes its commands out of the count.
        assert (await emulator.client.delete(f"/v1/sandboxes/{second}")).status_code == 204
        health = (await emulator.client.get("/health")).json()["finished_command_logs"]
        assert health["used_bytes"] == LOG and health["finished_commands"] == 1


class Held:
    def __init__(self, size: int):
        self.held_bytes = size


class Owner:
    def __init__(self) -> None:
        self.evicted: list[Held] = []

    def evict(self, command: Held) -> None:
        self.evicted.append(command)


def test_the_budget_counts_what_each_command_held_when_it_finished() -> None:
    budget, owner = FinishedLogs(100), Owner()
    commands = [Held(40), Held(0), Held(40), Held(30)]
    for command in commands:
        budget.add(command, owner)
    assert owner.evicted == [commands[0]]
    assert budget.used_bytes == 70 and len(budget) == 3
    budget.discard(commands[2])
    budget.discard(commands[2])  # twice is fine
    assert budget.used_bytes == 30 and len(budget) == 2
