"""Shared fixtures: a real server process (uvicorn, bubblewrap), raw HTTP and SDK clients.

`server` is one session-wide server on the default config; `start_server(**sections)`
starts another with config overrides, e.g. `start_server(execd={"access_token": True})`.
Each server runs `python -m opensandbox_emulator` on ports the kernel picks, and is stopped
(and checked to leave no sandbox process behind) at the end.

Both runtimes: `execd_server` is the session server of the fake runtime, then of the docker
runtime (ids `fake` and `docker`). A module whose behaviour must hold on both overrides
`server` with it (see `tests/test_commands.py`); `server.image` is an image that runtime
can run, and `create_body(server)` uses it. `start_server(like=server, ...)` starts a
custom-config server on the same runtime.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SPECS = SHARED / "specs"
READY = re.compile(r"lifecycle API on http://(\S+):(\d+) .*sandbox gateway on port (\d+)")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    host: str
    port: int
    gateway_port: int
    config_path: Path
    state_dir: Path
    output: list[str]
    runtime: str = "fake"
    # An image this server's runtime can run, with sh, bash, python3 and coreutils: the fake
    # runtime ignores the name (its sandboxes see the host's /usr); the docker one needs a
    # local image (tests/docker/build-images.sh).
    image: str = "python:3.11"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def domain(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (the server then destroys its sandboxes); SIGKILL after `timeout` s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def launch(sections: dict[str, dict[str, Any]], workdir: Path) -> ServerProcess:
    merged: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": 0, "log_level": "INFO"},
        "gateway": {"port": 0},
        "fake": {"state_dir": str(workdir / "state"), "volumes_root": str(workdir / "volumes")},
    }
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    Path(merged["fake"]["state_dir"]).mkdir(parents=True, exist_ok=True)
    Path(merged["fake"]["volumes_root"]).mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.toml"
    write_config(config_path, merged)
    process = subprocess.Popen(
        [sys.executable, "-m", "opensandbox_emulator", "--config", str(config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    output: list[str] = []
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    match = None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        match = READY.search(line)
        if match:
            break
    if match is None:
        process.kill()
        raise RuntimeError("server did not start:\n" + "".join(output))
    runtime = str(merged.get("runtime", {}).get("type", "fake"))
    server = ServerProcess(process, match.group(1), int(match.group(2)), int(match.group(3)),
                           config_path, Path(merged["fake"]["state_dir"]), output, runtime,
                           DOCKER_DEBIAN_IMAGE if runtime == "docker" else "python:3.11")
    # Keep draining output so the server never blocks on a full pipe.
    import threading

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError("server never became healthy:\n" + "".join(output))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = launch({}, tmp_path_factory.mktemp("server"))
    yield running
    running.stop()


RUNTIMES = ("fake", "docker")


@pytest.fixture(scope="session", params=RUNTIMES, ids=RUNTIMES)
def execd_server(request: pytest.FixtureRequest) -> ServerProcess:
    """The session server of each runtime in turn: `server` (fake), then `docker_server`
    (skipped without an engine, failed with OPENSANDBOX_REQUIRE_DOCKER=1)."""
    name = "docker_server" if request.param == "docker" else "server"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def fake_only(server: ServerProcess, reason: str) -> None:
    """Skip the calling test on any runtime but the fake one, saying why it cannot hold
    there (kept for checks that only exist on the fake runtime)."""
    if server.runtime != "fake":
        pytest.skip(f"fake runtime only: {reason}")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """`start_server(**sections)`: a server with config overrides, stopped at the end of
    the test. `like=server` puts it on `server`'s runtime (docker: its own instance label,
    and its containers removed at the end)."""
    started: list[ServerProcess] = []
    instances: list[str] = []

    def start(*, like: ServerProcess | None = None,
              **sections: dict[str, Any]) -> ServerProcess:
        workdir = Path(tempfile.mkdtemp(dir=tmp_path))
        if like is not None and like.runtime == "docker":
            require_docker()
            merged = docker_sections(workdir)
            for section, values in sections.items():
                merged.setdefault(section, {}).update(values)
            instances.append(merged["docker"]["instance"])
            sections = merged
        running = launch(sections, workdir)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
    for instance in instances:
        remove_docker_sandboxes(instance)


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def create_body(server: ServerProcess | None = None, /, **overrides: Any) -> dict[str, Any]:
    """A create request for a sandbox that stays up; with `server`, of an image that
    server's runtime can run."""
    image = server.image if server is not None else "python:3.11"
    body: dict[str, Any] = {"image": {"uri": image}, "timeout": 600,
                            "resourceLimits": {"cpu": "1", "memory": "1Gi"},
                            "entrypoint": ["tail", "-f", "/dev/null"]}
    body.update(overrides)
    return body


@pytest.fixture
def sandbox_id(server: ServerProcess, http: httpx.Client) -> Iterator[str]:
    """A fresh running sandbox, deleted afterwards."""
    response = http.post("/v1/sandboxes", json=create_body(server))
    assert response.status_code == 202, response.text
    created = response.json()["id"]
    yield created
    http.delete(f"/v1/sandboxes/{created}")


def execd_url(server: ServerProcess, sandbox_id: str) -> str:
    """The sandbox's execd base URL through the gateway (uri mode)."""
    return f"{server.gateway_url}/{sandbox_id}/44772"


def spec_validator(name: str) -> Any:
    """An openapi-core `OpenAPI` for `../shared/specs/<name>`, or skip when it is absent."""
    path = SPECS / name
    if not path.exists():
        pytest.skip(f"{path} is not here (contract checks need ../shared)")
    from openapi_core import OpenAPI

    return OpenAPI.from_file_path(str(path))


def no_leftover_processes(state_dir: Path) -> list[str]:
    """Command lines of live processes that still mention `state_dir` (a leak)."""
    leaks = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(state_dir) in cmdline:
            leaks.append(cmdline)
    return leaks


def wait_for(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll `check` until it returns something truthy, and return that (not a timing
    assertion: the deadline only stops a broken server from hanging the suite)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


# --- the docker runtime ------------------------------------------------------------------------
# Docker tests skip when no engine answers (or the local test images are missing), unless
# OPENSANDBOX_REQUIRE_DOCKER=1 (CI sets it), which turns every such skip into a failure.

DOCKER_BUSYBOX_IMAGE = "opensandbox-test/busybox:1"
DOCKER_DEBIAN_IMAGE = "opensandbox-test/debian:bookworm"
DOCKER_IMAGES = (DOCKER_BUSYBOX_IMAGE, DOCKER_DEBIAN_IMAGE)
_docker_problem: list[str | None] = []


def docker_available() -> bool:
    """Whether a Docker engine answers and holds the test images (checked once)."""
    return _docker_unavailable_reason() is None


def _docker_unavailable_reason() -> str | None:
    if not _docker_problem:
        try:
            import docker

            client = docker.from_env(timeout=5)
            try:
                client.ping()
                missing = [name for name in DOCKER_IMAGES
                           if not client.images.list(name=name)]
            finally:
                client.close()
            problem = (f"test images {missing} are missing; build them with "
                       "`sh tests/docker/build-images.sh`" if missing else None)
        except Exception as error:
            problem = f"no Docker engine answers ({type(error).__name__}: {error})"
        _docker_problem.append(problem)
    return _docker_problem[0]


def require_docker() -> None:
    """Skip the calling test (or fail it when OPENSANDBOX_REQUIRE_DOCKER=1) without Docker."""
    reason = _docker_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("OPENSANDBOX_REQUIRE_DOCKER") == "1":
        pytest.fail(f"Docker is required (OPENSANDBOX_REQUIRE_DOCKER=1) but {reason}")
    pytest.skip(f"docker runtime tests need Docker: {reason}")


def docker_sections(workdir: Path, *, instance: str | None = None,
                    allowed_host_paths: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Config sections for a docker-runtime test server: its own instance label (so test
    servers sharing the engine never adopt each other's sandboxes) and state directory.
    Host volumes are allowed anywhere unless `allowed_host_paths` is given."""
    import uuid

    sections: dict[str, dict[str, Any]] = {
        "runtime": {"type": "docker"},
        "docker": {"instance": instance or f"test-{uuid.uuid4().hex[:12]}",
                   "state_dir": str(workdir / "docker-state")}}
    if allowed_host_paths is not None:
        sections["storage"] = {"allowed_host_paths": allowed_host_paths}
    return sections


def remove_docker_sandboxes(instance: str) -> None:
    """Remove every container a test server of `instance` left behind."""
    if _docker_unavailable_reason() is not None:
        return
    import docker

    client = docker.from_env(timeout=30)
    try:
        for container in client.containers.list(
                all=True, filters={"label": f"opensandbox.io/instance={instance}"}):
            container.remove(force=True)
    finally:
        client.close()


@pytest.fixture(scope="session")
def docker_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One session-wide server on the docker runtime (like `server`, host volumes may come
    from anywhere); `docker_host_dir(server)` is a scratch directory for them."""
    require_docker()
    workdir = tmp_path_factory.mktemp("docker-server")
    (workdir / "host").mkdir()
    sections = docker_sections(workdir)
    running = launch(sections, workdir)
    yield running
    running.stop()
    remove_docker_sandboxes(sections["docker"]["instance"])


def docker_host_dir(server: ServerProcess) -> Path:
    """A scratch directory for host volumes of the `docker_server`."""
    return server.config_path.parent / "host"


# --- the official Python SDK -------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    """The SDK is asyncio-based: async tests (marked `anyio`) run on asyncio."""
    return "asyncio"


@pytest.fixture
async def sdk_sandbox(server: ServerProcess) -> Any:
    """A sandbox made with the official SDK on `server` (health check on), killed after."""
    from datetime import timedelta

    from opensandbox import Sandbox
    from opensandbox.config import ConnectionConfig

    config = ConnectionConfig(domain=server.domain, request_timeout=timedelta(seconds=60))
    made = await Sandbox.create(server.image, connection_config=config,
                                entrypoint=["tail", "-f", "/dev/null"])
    try:
        yield made
    finally:
        await made.kill()
        await made.close()
