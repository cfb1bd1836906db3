"""Resource limits, on both runtimes: a command over the memory limit is killed and the
stream says so; a fork bomb meets the pids limit and the server stays well.

Only where the server enforces limits (`/health` says which): a fork bomb without a pids
limit would take the host down with it.
"""

from __future__ import annotations

import shlex
import threading
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
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            try:
                answers.append(httpx.get(f"{server.url}/health", timeout=10).status_code)
            except httpx.HTTPError:
                answers.append(0)
            time.sleep(0.2)

    watcher = threading.Thread(target=keep_asking, daemon=True)
    watcher.start()
    try:
        # The bomb's processes are all in the command's process group, which its timeout
        # kills; until then they fork as fast as they can.
        events = command(base, "bomb() { bomb | bomb & }; bomb; sleep 1000", timeout=5000)
        ended = outcome(events)
        assert ended["type"] == "error", events
        assert ended["error"]["traceback"] == ["signal: killed"], ended
        # It met the limit: forks failed inside, and said so.
        assert any("Resource temporarily unavailable" in e.get("text", "") for e in events)
        stop.set()
        watcher.join()
        assert answers and set(answers) == {200}, answers
        if server.runtime == "docker":
            # The docker runtime signals a group with an exec inside the container, which
            # cannot start while the container is at its pids limit: the bomb lasts until
            # the sandbox goes (its deletion, below, kills the container).
            return
        # Once the bomb is gone the sandbox starts processes again.
        deadline = time.monotonic() + 30
        while outcome(command(base, "echo recovered"))["type"] != "execution_complete":
            assert time.monotonic() < deadline, "the sandbox never recovered"
            time.sleep(0.5)
    finally:
        stop.set()
        httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)
