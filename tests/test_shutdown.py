"""Stopping the server (SIGTERM) with streams open, on both runtimes.

Every open command stream, through the gateway and through the proxy route, gets a
terminal `error` event (`ServerStopping`) instead of being cut off; a `/metrics/watch`
stream ends; a terminal's WebSocket is closed; the sandboxes are torn down as always; the
process exits soon after that teardown (measured and printed; asserted only with a wide
margin) and logs no traceback.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime

import httpx
import pytest

from tests.helpers.pty_client import PtyClient
from tests.helpers.routes import ws_url
from tests.helpers.servers import (
    EXECD_PORT,
    ServerProcess,
    execd_url,
    new_sandbox,
    no_leftover_processes,
    wait_for,
)

TEARDOWN_LINE = "stopped: the runtime released"


@pytest.fixture(scope="session")
def server(execd_server: ServerProcess) -> ServerProcess:
    """Every test of this module runs on both runtimes."""
    return execd_server


class OpenStream(threading.Thread):
    """Reads one streamed response to its end, keeping its lines."""

    def __init__(self, method: str, url: str, **kwargs: object):
        super().__init__(daemon=True)
        self.method, self.url, self.kwargs = method, url, kwargs
        self.lines: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream(self.method, self.url, timeout=60,
                              **self.kwargs) as response:  # type: ignore[arg-type]
                for line in response.iter_lines():
                    if line:
                        self.lines.append(line)
        except BaseException as error:
            self.error = error

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines]


def test_sigterm_ends_open_streams_with_a_terminal_event(
        server: ServerProcess, start_server: Callable[..., ServerProcess]) -> None:
    stopping = start_server(like=server)
    sandbox_id = new_sandbox(stopping)
    gateway = execd_url(stopping, sandbox_id)
    proxied = f"{stopping.url}/sandboxes/{sandbox_id}/proxy/{EXECD_PORT}"
    commands = [OpenStream("POST", f"{base}/command", json={"command": "sleep 300"})
                for base in (gateway, proxied)]
    metrics = OpenStream("GET", f"{gateway}/metrics/watch")
    for stream in (*commands, metrics):
        stream.start()
    wait_for(lambda: all(any('"init"' in line for line in s.lines) for s in commands)
             and metrics.lines, "the streams to start")
    pty_id = httpx.post(f"{gateway}/pty", json={}, timeout=30).json()["session_id"]
    terminal = PtyClient(ws_url(gateway) + f"/pty/{pty_id}/ws")
    terminal.type(b"echo terminal-ready\r")
    terminal.wait_for(b"terminal-ready")

    signalled = time.monotonic()
    stopping.process.terminate()
    stopping.process.wait(timeout=60)
    exited_wall, exited = datetime.now(), time.monotonic()
    for stream in (*commands, metrics):
        stream.join(timeout=30)
        assert not stream.is_alive()
    deadline = time.monotonic() + 30
    while terminal.closed is None and time.monotonic() < deadline:
        terminal._take(0.2)
    assert terminal.closed is not None, "the terminal's WebSocket stayed open"

    for stream in commands:
        assert stream.error is None, stream.error
        last = stream.events()[-1]
        assert last["type"] == "error", stream.lines
        assert last["error"]["ename"] == "ServerStopping"  # type: ignore[index]
        assert "stopping" in last["error"]["evalue"]  # type: ignore[index]
    assert metrics.error is None, metrics.error

    output = "".join(stopping.output)
    assert "Traceback" not in output, output[-4000:]
    assert "CancelledError" not in output
    teardown = [line for line in stopping.output if TEARDOWN_LINE in line]
    assert teardown, output[-2000:]
    torn_down = datetime.strptime(teardown[-1][:23], "%Y-%m-%d %H:%M:%S,%f")
    after_teardown = (exited_wall - torn_down).total_seconds()
    print(f"\n[{stopping.runtime}] SIGTERM to exit: {exited - signalled:.2f} s; "
          f"last teardown to exit: {after_teardown:.2f} s")
    assert after_teardown < 5, "the process lingered after tearing its sandboxes down"
    if stopping.runtime == "fake":
        assert no_leftover_processes(stopping.state_dir) == []
