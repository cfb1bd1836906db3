"""The code-interpreter flow as users write it, on both runtimes: each code-interpreter SDK
generation (0.1.1 on `opensandbox` 0.1.5, and 1.1.1 on 1.1.1) creates its sandboxes with
its README's call, unchanged (the image, the entrypoint, the version variables, and 1.1.1's
strict readiness check), then runs python, bash, java, go and typescript
(tests/compat/code_interpreter_sdk.py). Then the image's conventions over raw HTTP: both
entrypoint paths exist read-only, the script makes `127.0.0.1:$JUPYTER_PORT` accept
connections in the sandbox's own network, and says in its output which toolchains it chose.

On Docker the documented image names are the test image of tests/docker/build-images.sh
(which no registry serves here), whose scripts are the ones fake sandboxes are offered; an
image without them fails to start, as upstream.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import ROOT
from tests.helpers.code_api import error_of, stream
from tests.helpers.newer_sdks import NEXT_PYTHON, require, run_json
from tests.helpers.servers import ServerProcess, execd_url, new_sandbox

SCENARIO = str(ROOT / "tests" / "compat" / "code_interpreter_sdk.py")
# The SDK's strict check, as it sends it (code_interpreter/code_interpreter.py, 1.1.1).
STRICT_CHECK = ("bash -c 'exec 3<>/dev/tcp/127.0.0.1/${JUPYTER_PORT:-44771}' "
                "&& exit 0 || exit 1")
ENTRYPOINTS = ("/opt/code-interpreter/code-interpreter.sh",
               "/opt/opensandbox/code-interpreter.sh")
IMAGES = {"/opt/code-interpreter/code-interpreter.sh": "opensandbox/code-interpreter:v1.1.0",
          "/opt/opensandbox/code-interpreter.sh": "opensandbox/code-interpreter:latest"}


@pytest.fixture(scope="session")
def server(execd_server: ServerProcess) -> ServerProcess:
    """Every test of this module runs on both runtimes."""
    return execd_server


# --- through the SDKs ---------------------------------------------------------------------


@pytest.mark.parametrize("generation", ["0.1.1", "1.1.1"])
def test_the_documented_flow(server: ServerProcess, generation: str) -> None:
    python = sys.executable if generation == "0.1.1" else str(NEXT_PYTHON)
    if generation != "0.1.1":
        require(NEXT_PYTHON)
    out: dict[str, Any] = run_json([python, SCENARIO, server.domain])
    assert out["newest"] is (generation != "0.1.1")
    readme = out["readme_python"]
    assert readme["results"] == ["4"] and readme["stdout"].startswith("3.")
    assert out["default_python"]["results"] == ["42"]
    assert out["python_error"]["error"] == ["ZeroDivisionError", "division by zero"]
    assert out["bash"]["stdout"] == "hello from /tmp\n"

    assert out["readme_java"]["stdout"] == "Calculating sum...\nSum: 30\n"
    assert out["readme_java"]["results"] == ["30"]
    assert out["java_state"]["results"] == ["60"]
    assert out["java_error"]["error"][0] == "CompilationException"
    assert out["java_interrupt"]["error"][0] == "KeyboardInterrupt"
    assert out["java_after_interrupt"]["results"] == ["30"]

    assert out["readme_go"]["stderr"] == "Running in Go\n"
    assert out["go_state"]["stdout"] == "42\n"
    assert out["go_error"]["error"][0] == "CompileError"
    assert "undefined: undefinedName" in out["go_error"]["error"][1]
    assert out["go_interrupt"]["error"][0] == "KeyboardInterrupt"
    assert out["go_after_interrupt"]["stdout"] == "2\n"

    assert out["typescript"] == {"stdout": "typed\n", "stderr": "", "results": ["42"],
                                 "error": None}
    assert out["concurrent"] == ["python done\n", "java done\n", "go done\n", "bash done\n"]
    assert out["languages_listed"] == ["bash", "go", "java", "python", "typescript"]
    assert out["second_java"]["results"] == ["42"]


# --- the image's conventions over raw HTTP --------------------------------------------------


def lines(base: str, command: str) -> tuple[list[str], dict[str, Any] | None]:
    events = [e for e in stream(base, {"code": command}) if e["type"] != "ping"]
    return [e["text"] for e in events if e["type"] == "stdout"], error_of(events)


def wait_strictly_ready(base: str) -> None:
    """The SDK's strict check, polled as the SDK polls it (a deadline only stops a broken
    server from hanging the suite)."""
    deadline = time.monotonic() + 30
    while True:
        _, error = lines(base, STRICT_CHECK)
        if error is None:
            return
        assert time.monotonic() < deadline, f"the strict check never passed: {error}"
        time.sleep(0.2)


def entrypoint_output(server: ServerProcess, sandbox_id: str) -> str:
    response = httpx.get(f"{server.url}/v1/sandboxes/{sandbox_id}/diagnostics/logs",
                         params={"scope": "container"}, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["content"])


@pytest.fixture
def interpreter_sandboxes(server: ServerProcess) -> Iterator[list[str]]:
    """Two code-interpreter sandboxes at once, one per entrypoint path; their ids."""
    made = [new_sandbox(server, image={"uri": IMAGES[path]}, entrypoint=[path],
                        env={"JAVA_VERSION": "17", "GO_VERSION": "0.9"})
            for path in ENTRYPOINTS]
    yield made
    for sandbox_id in made:
        httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)


def test_both_entrypoints_serve_the_strict_check_in_their_own_network(
        server: ServerProcess, interpreter_sandboxes: list[str]) -> None:
    bases = [execd_url(server, sandbox_id) for sandbox_id in interpreter_sandboxes]
    for base in bases:
        wait_strictly_ready(base)
        # the scripts are there, at both paths; offered by the fake runtime, read-only (an
        # image's own files are the image's business)
        for path in ENTRYPOINTS:
            found, _ = lines(base, f"test -x {path} && echo runnable")
            assert found == ["runnable"]
            if server.runtime == "fake":
                _, refused = lines(base, f"echo changed > {path}")
                assert refused is not None
        # what listens answers that it is no Jupyter
        reply, _ = lines(base, "exec 3<>/dev/tcp/127.0.0.1/44771; "
                               "printf 'GET /api HTTP/1.0\\r\\n\\r\\n' >&3; head -n 1 <&3")
        assert [line.rstrip("\r") for line in reply] == ["HTTP/1.0 501 Not Implemented"]
    if server.runtime == "fake":
        # each listener is in its own sandbox's network: the host's loopback has none
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", 44771), timeout=2).close()


def test_the_script_says_which_toolchains_it_chose(server: ServerProcess,
                                                   interpreter_sandboxes: list[str]) -> None:
    for sandbox_id in interpreter_sandboxes:
        wait_strictly_ready(execd_url(server, sandbox_id))
        said = entrypoint_output(server, sandbox_id)
        assert "code-interpreter-env: java 17." in said
        assert "code-interpreter-env: go 0.9 not found; using go 1." in said
        assert "listening on 127.0.0.1:44771" in said
        # what it chose reaches new processes through the env file, as upstream
        base = execd_url(server, sandbox_id)
        env_file, _ = lines(base, 'cat "$EXECD_ENVS"')
        assert any(line.startswith("PATH=") for line in env_file)


def test_jupyter_port_moves_the_listener(server: ServerProcess) -> None:
    sandbox_id = new_sandbox(server, image={"uri": IMAGES[ENTRYPOINTS[0]]},
                             entrypoint=[ENTRYPOINTS[0]], env={"JUPYTER_PORT": "45123"})
    try:
        base = execd_url(server, sandbox_id)
        wait_strictly_ready(base)  # the check reads JUPYTER_PORT too
        _, refused = lines(base, "exec 3<>/dev/tcp/127.0.0.1/44771")
        assert refused is not None
    finally:
        httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)


def test_on_docker_an_image_without_the_script_fails_to_start(docker_server: ServerProcess
                                                             ) -> None:
    """(Every fake sandbox has the scripts: the fake runtime runs no image.)"""
    server = docker_server
    response = httpx.post(f"{server.url}/v1/sandboxes", timeout=60, json={
        "image": {"uri": server.image}, "timeout": 600,
        "resourceLimits": {"cpu": "1", "memory": "1Gi"},
        "entrypoint": [ENTRYPOINTS[0]]})
    if response.status_code == 202:  # started, then failed: the state says so
        sandbox_id = response.json()["id"]
        try:
            state = wait_state(server, sandbox_id)
            assert state["state"] == "Failed"
            assert "code-interpreter.sh" in state["message"]
        finally:
            httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)
    else:
        assert response.status_code == 500, response.text
        assert "code-interpreter.sh" in response.json()["message"]


def wait_state(server: ServerProcess, sandbox_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        status = httpx.get(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=30
                           ).json()["status"]
        if status["state"] != "Running" or time.monotonic() > deadline:
            return status  # type: ignore[no-any-return]
        time.sleep(0.2)


def test_on_the_fake_runtime_without_isolation_the_scripts_run_from_the_host(
        start_server: Any) -> None:
    bare = start_server(fake={"isolation": "none"})
    with socket.socket() as probe:  # the host's network: a port nothing else holds
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sandbox_id = new_sandbox(bare, image={"uri": IMAGES[ENTRYPOINTS[1]]},
                             entrypoint=[ENTRYPOINTS[1]], env={"JUPYTER_PORT": str(port)})
    base = execd_url(bare, sandbox_id)
    wait_strictly_ready(base)
    httpx.delete(f"{bare.url}/v1/sandboxes/{sandbox_id}", timeout=60)
