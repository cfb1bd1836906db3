"""Resource limits, on both runtimes: a command over the memory limit is killed and the
stream says so; a fork bomb meets the pids limit and the server stays well.

Only where the server enforces limits (`/health` says which): a fork bomb without a pids
limit would take the host down with it.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

import httpx
import pytest

from tests.helpers.frames import split_frames
from tests.helpers.servers import ServerProcess, execd_url, new_sandbox


@pytest.fixture(scope="session")
def server(execd_server: ServerProcess) -> ServerProcess:
    """Every test of this module runs on both runtimes."""
    return execd_server


def limits_of(server: ServerProcess) -> dict[str, Any]:
    return dict(httpx.get(f"{server.url}/health", timeout=10).json()["limits"])


def command(base: str, script: str, **extra: Any) -> list[dict[str, Any]]:
    response = httpx.post(f"{base}/command", json={"command": script, **extra}, timeout=120)
    assert response.status_code == 200, response.text
    return split_frames(response.content)


def outcome(events: list[dict[str, Any]]) -> dict[str, Any]:
    return [e for e in events if e["type"] in ("error", "execution_complete")][-1]


def test_a_command_over_the_memory_limit_is_killed_and_the_stream_says_so(
        server: ServerProcess) -> None:
    if not limits_of(server).get("memory"):
        pytest.skip("this server enforces no memory limit (see /health)")
    sandbox_id = new_sandbox(server, resourceLimits={"cpu": "1", "memory": "128Mi"})
    base = execd_url(server, sandbox_id)
    try:
        hog = ("import sys; chunks = []\n"
               "for _ in range(2048):\n"
               "    chunks.append(bytearray(1 << 20)); chunks[-1][::4096] = b'x' * 256\n"
               "print('survived', flush=True)")
        events = command(base, "python3 -c " + shlex.quote(hog))
        ended = outcome(events)
        assert ended["type"] == "error", events
        assert "survived" not in [e.get("text") for e in events]
        if server.runtime == "fake":
            assert ended["error"]["traceback"][0].startswith("signal: killed"), ended
            assert "out of memory" in ended["error"]["traceback"][0], ended
        else:  # the engine reports the exec's status: killed by SIGKILL
            assert ended["error"]["evalue"] in ("137", "-1"), ended
        # The sandbox itself is fine, and so is the server.
        assert outcome(command(base, "echo still here"))["type"] == "execution_complete"
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    finally:
        httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)


def test_a_fork_bomb_meets_the_pids_limit_and_the_server_stays_well(
        server: ServerProcess) -> None:
    pids = limits_of(server).get("pids")
    if not pids:
        pytest.skip("this server enforces no pids limit (see /health)")
    sandbox_id = new_sandbox(server)
    base = execd_url(server, sandbox_id)
    answers: list[int] = []
    try:
        # In the background: its processes fork as fast as they can until stopped.
        started = httpx.post(f"{base}/command", timeout=60, json={
            "command": "bomb() { bomb | bomb & }; bomb; sleep 1000", "background": True})
        command_id = split_frames(started.content)[0]["text"]

        def met_the_limit() -> bool:
            answers.append(httpx.get(f"{server.url}/health", timeout=10).status_code)
            logs = httpx.get(f"{base}/command/{command_id}/logs", timeout=30)
            return "Resource temporarily unavailable" in logs.text  # forks failed inside

        deadline = time.monotonic() + 60
        while not met_the_limit():
            assert time.monotonic() < deadline, "the bomb never met the limit"
            time.sleep(0.2)
        for _ in range(10):  # the server keeps answering while the bomb runs on
            answers.append(httpx.get(f"{server.url}/health", timeout=10).status_code)
            time.sleep(0.1)
        assert set(answers) == {200}, answers
        if server.runtime == "docker":
            # The docker runtime signals a group with an exec inside the container, which
            # cannot start while the container is at its pids limit: the bomb lasts until
            # the sandbox goes (its deletion, below, kills the container).
            return
        # Interrupting it ends the whole group (the init signals without forking), and
        # the sandbox starts processes again.
        assert httpx.delete(f"{base}/command", params={"id": command_id},
                            timeout=60).status_code == 200
        assert outcome(command(base, "echo recovered"))["type"] == "execution_complete"
    finally:
        response = httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)
        assert response.status_code == 204
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
