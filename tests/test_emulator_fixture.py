"""The in-process emulator and the pytest plugin themselves: what loading the plugin costs,
what starting and stopping the server leaves, the API key, and a start that fails.
(`tests/test_user_suite.py` runs the fixtures the way a user does.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from opensandbox_emulator.testing import (
    ControlError,
    EmulatorClient,
    EmulatorStartError,
    InProcessEmulator,
)
from tests.helpers.servers import ServerProcess, create_body, no_leftover_processes

HEAVY_MODULES = ("uvicorn", "fastapi", "httpx", "opensandbox", "opensandbox_emulator.server",
                 "opensandbox_emulator.testing")


def test_loading_the_plugin_imports_and_starts_nothing() -> None:
    probe = ("import sys, threading, json; import opensandbox_emulator.pytest_plugin; "
             f"print(json.dumps([[m for m in {list(HEAVY_MODULES)!r} if m in sys.modules], "
             "threading.active_count()]))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout) == [[], 1]


def test_a_session_that_asks_for_no_fixture_starts_no_server(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text(
        "import sys, threading\n"
        "def test_plain(request):\n"
        "    assert request.config.pluginmanager.has_plugin('opensandbox_emulator')\n"
        "    assert 'opensandbox_emulator.server' not in sys.modules\n"
        "    assert 'uvicorn' not in sys.modules\n"
        "    assert threading.active_count() == 1\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr


def test_stop_leaves_nothing_behind() -> None:
    threads = threading.active_count()
    with InProcessEmulator() as emulator:
        state_dir = Path(emulator.app.runtime.state_dir)  # type: ignore[attr-defined]
        lifecycle, gateway = emulator.config.server.port, emulator.gateway_port
        with httpx.Client(base_url=emulator.url, timeout=60) as client:
            for _ in range(2):
                body = create_body(entrypoint=["sh", "-c", "sleep 1000 & sleep 1000"])
                assert client.post("/v1/sandboxes", json=body).status_code == 202
            assert httpx.get(f"http://127.0.0.1:{gateway}/nowhere").status_code == 404
        assert no_leftover_processes(state_dir)  # the sandboxes run
        assert emulator.journal.entries(method="POST")[0].status == 202
    assert no_leftover_processes(state_dir) == []
    assert not state_dir.exists()
    # A worker thread the failed start used may take a moment to finish; none may stay.
    deadline = time.monotonic() + 10
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == threads
    for port in (lifecycle, gateway):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still listens"


def test_the_api_key_applies_and_the_client_sends_it() -> None:
    with InProcessEmulator({"server": {"api_key": "in-process-key"}}) as emulator:
        assert httpx.get(f"{emulator.url}/_emulator/faults").status_code == 401
        assert emulator.faults.list() == []  # the client sends the key
        assert emulator.connection_config().api_key == "in-process-key"
        tuned = emulator.connection_config(request_timeout=timedelta(seconds=5))
        assert (tuned.domain, tuned.api_key) == (emulator.domain, "in-process-key")
        with pytest.raises(ControlError) as refused:
            EmulatorClient(emulator.url, api_key="wrong").reset()
        assert (refused.value.status, refused.value.code) == (401, "INVALID_API_KEY")


def test_the_client_says_when_the_control_api_is_off(server: ServerProcess) -> None:
    client = EmulatorClient(server.url)
    try:
        with pytest.raises(ControlError, match="--control") as refused:
            client.journal.entries()
        assert refused.value.status == 404
    finally:
        client.close()


def test_a_start_that_fails_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    threads = threading.active_count()
    with pytest.raises(EmulatorStartError, match="Docker engine"):
        InProcessEmulator({"runtime": {"type": "docker"}})
    # A worker thread the failed start used may take a moment to finish; none may stay.
    deadline = time.monotonic() + 10
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == threads


def test_the_control_api_stays_on() -> None:
    with pytest.raises(ValueError, match="control"):
        InProcessEmulator({"control": {"enabled": False}})
