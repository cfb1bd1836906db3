"""Sandbox access through the official SDKs: create (health check on), connect, pause, resume, kill.

Each SDK runs the same lifecycle with `use_server_proxy` off and on, against the default
server and against a locked-down one (API key, per-sandbox execd tokens, gateway in
`header` mode), where the SDK has to send the endpoint's `headers` to reach execd.
Python `opensandbox==0.1.5` runs in-process; the JS SDK runs under node (tests/js/access.mjs).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from opensandbox import Sandbox
from opensandbox.config import ConnectionConfig
from opensandbox.exceptions import SandboxApiException

from tests.helpers import ROOT
from tests.helpers.servers import ServerProcess, launch

EXECD = 44772
API_KEY = "sdk-key"
JS_DIR = ROOT / "tests" / "js"


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """API key on, execd tokens on, gateway endpoints in header mode."""
    running = launch({"server": {"api_key": API_KEY}, "execd": {"access_token": True},
                      "gateway": {"mode": "header"}}, tmp_path_factory.mktemp("locked"))
    yield running
    running.stop()


def pick(request: pytest.FixtureRequest, locked: bool) -> tuple[ServerProcess, str | None]:
    if locked:
        return request.getfixturevalue("locked_server"), API_KEY
    return request.getfixturevalue("server"), None


def sandbox_state(server: ServerProcess, api_key: str | None, sandbox_id: str) -> int:
    headers = {"OPEN-SANDBOX-API-KEY": api_key} if api_key else {}
    return httpx.get(f"{server.url}/v1/sandboxes/{sandbox_id}", headers=headers).status_code


def check_endpoint(server: ServerProcess, endpoint: dict[str, Any], sandbox_id: str,
                   use_proxy: bool, locked: bool) -> None:
    headers = dict(endpoint.get("headers") or {})
    if use_proxy:
        assert endpoint["endpoint"] == f"{server.domain}/sandboxes/{sandbox_id}/proxy/{EXECD}"
    elif locked:
        assert endpoint["endpoint"] == f"{server.host}:{server.gateway_port}"
        assert headers.pop("OpenSandbox-Ingress-To") == f"{sandbox_id}-{EXECD}"
    else:
        assert endpoint["endpoint"] == f"{server.host}:{server.gateway_port}/{sandbox_id}/{EXECD}"
    if locked:
        assert headers.pop("X-EXECD-ACCESS-TOKEN")
    assert headers == {}


# --- Python ----------------------------------------------------------------------------------


async def python_lifecycle(domain: str, use_proxy: bool, api_key: str | None) -> dict[str, Any]:
    config = ConnectionConfig(domain=domain, use_server_proxy=use_proxy, api_key=api_key,
                              request_timeout=timedelta(seconds=30))
    out: dict[str, Any] = {}
    sandbox = await Sandbox.create("python:3.11", connection_config=config,
                                   resource={"cpu": "1", "memory": "1Gi"},
                                   ready_timeout=timedelta(seconds=30))
    try:
        out["id"] = sandbox.id
        endpoint = await sandbox.get_endpoint(EXECD)
        out["endpoint"] = {"endpoint": endpoint.endpoint, "headers": endpoint.headers}
        out["healthy_after_create"] = await sandbox.is_healthy()

        connected = await Sandbox.connect(sandbox.id, connection_config=config,
                                          connect_timeout=timedelta(seconds=30))
        out["healthy_after_connect"] = await connected.is_healthy()
        await connected.close()

        await sandbox.pause()
        state = None
        for _ in range(400):
            state = (await sandbox.get_info()).status.state
            if state == "Paused":
                break
            await asyncio.sleep(0.05)
        out["state_after_pause"] = state
        out["healthy_while_paused"] = await sandbox.is_healthy()

        resumed = await Sandbox.resume(sandbox.id, connection_config=config,
                                       resume_timeout=timedelta(seconds=30))
        out["healthy_after_resume"] = await resumed.is_healthy()
        out["state_after_resume"] = (await resumed.get_info()).status.state
        await resumed.close()

        await sandbox.kill()
        try:
            await sandbox.get_info()
            out["after_kill"] = "still there"
        except SandboxApiException as error:
            out["after_kill"] = error.status_code
        out["healthy_after_kill"] = await sandbox.is_healthy()
    finally:
        await sandbox.close()
    return out


@pytest.mark.parametrize("use_proxy", [False, True], ids=["direct", "server-proxy"])
@pytest.mark.parametrize("locked", [False, True], ids=["open", "locked"])
def test_python_sdk_lifecycle(request: pytest.FixtureRequest, use_proxy: bool,
                              locked: bool) -> None:
    server, api_key = pick(request, locked)
    out = asyncio.run(python_lifecycle(server.domain, use_proxy, api_key))
    check_endpoint(server, out["endpoint"], out["id"], use_proxy, locked)
    assert out["healthy_after_create"] is True
    assert out["healthy_after_connect"] is True
    assert out["state_after_pause"] == "Paused"
    assert out["healthy_while_paused"] is False
    assert out["healthy_after_resume"] is True
    assert out["state_after_resume"] == "Running"
    assert out["after_kill"] == 404
    assert out["healthy_after_kill"] is False
    assert sandbox_state(server, api_key, out["id"]) == 404


# --- JavaScript ------------------------------------------------------------------------------


def run_js(domain: str, use_proxy: bool, api_key: str | None) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "@alibaba-group" / "opensandbox").is_dir():
        pytest.fail("node and the JS SDK are needed: run tests/setup.sh")
    argv = [node, "access.mjs", domain]
    if use_proxy:
        argv.append("--proxy")
    if api_key:
        argv.append(f"--api-key={api_key}")
    done = subprocess.run(argv, cwd=JS_DIR, capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output from node (exit {done.returncode}):\n{done.stderr}"
    out: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in out, (out, done.stderr)
    return out


@pytest.mark.parametrize("use_proxy", [False, True], ids=["direct", "server-proxy"])
@pytest.mark.parametrize("locked", [False, True], ids=["open", "locked"])
def test_js_sdk_lifecycle(request: pytest.FixtureRequest, use_proxy: bool, locked: bool) -> None:
    server, api_key = pick(request, locked)
    out = run_js(server.domain, use_proxy, api_key)
    check_endpoint(server, out["endpoint"], out["id"], use_proxy, locked)
    assert out["healthyAfterCreate"] is True
    assert out["pingAfterCreate"] is True
    assert out["healthyAfterConnect"] is True
    assert out["stateAfterPause"] == "Paused"
    assert out["healthyWhilePaused"] is False
    paused = out["pingWhilePaused"]
    assert (paused["statusCode"], paused["code"]) == (503, "SANDBOX::PAUSED"), paused
    assert out["healthyAfterResume"] is True
    assert out["stateAfterResume"] == "Running"
    assert out["afterKill"]["statusCode"] == 404, out["afterKill"]
    assert out["pingAfterKill"]["statusCode"] == 404, out["pingAfterKill"]
    assert sandbox_state(server, api_key, out["id"]) == 404
