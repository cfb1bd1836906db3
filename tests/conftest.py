"""The fixtures: real servers (uvicorn, runc, a Docker engine), raw HTTP and SDK
clients, and the app in this process. What they are made with lives in `tests/helpers/`.

`server` is one server for the whole run on the default config; `start_server(**sections)`
starts another with config overrides, e.g. `start_server(execd={"access_token": True})`.
Each server runs `python -m opensandbox_emulator` on ports the kernel picks, and is stopped
at the end.

Both runtimes: `execd_server` is the run-wide server of the fake runtime, then of the docker
runtime (ids `fake` and `docker`). A module whose behaviour must hold on both overrides
`server` with it (see `tests/test_commands.py`); `server.image` is an image that runtime
can run, and `create_body(server)` uses it. `start_server(like=server, ...)` starts a
custom-config server on the same runtime.

`emulator` is the whole app in this process (`create_app`) over a real fake runtime, with a
clock and ids the test sets: for the parts whose behaviour needs no server process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.docker_engine import docker_sections, remove_docker_sandboxes, require_docker
from tests.helpers.in_process import InProcess, serve_in_process
from tests.helpers.servers import (
    ServerProcess,
    create_body,
    execd_url,
    launch,
    new_sandbox,
    wait_for,
)

# The sample user suite is its own pytest session (tests/test_user_suite.py runs it).
collect_ignore = ["user_suite"]

RUNTIMES = ("fake", "docker")
NOBODY = 65534

# --- servers -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = launch({}, tmp_path_factory.mktemp("server"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def docker_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One run-wide server on the docker runtime (like `server`, host volumes may come
    from anywhere); `docker_host_dir(server)` is a scratch directory for them."""
    require_docker()
    workdir = tmp_path_factory.mktemp("docker-server")
    (workdir / "host").mkdir()
    sections = docker_sections(workdir)
    running = launch(sections, workdir)
    yield running
    running.stop()
    remove_docker_sandboxes(sections["docker"]["instance"])


@contextlib.contextmanager
def passable_to_others(checkout: Path) -> Iterator[None]:
    """While the block runs, other users may pass through (not list) `checkout` and the
    directories above it that shut them out, so that a server run as nobody reaches this
    checkout's code and virtualenv wherever it was cloned (`mktemp -d` makes 0700)."""
    changed: list[tuple[Path, int]] = []
    for directory in (checkout, *checkout.parents):
        mode = stat.S_IMODE(directory.stat().st_mode)
        if not mode & stat.S_IXOTH:
            os.chmod(directory, mode | stat.S_IXOTH)
            changed.append((directory, mode))
    try:
        yield
    finally:
        for directory, mode in reversed(changed):
            os.chmod(directory, mode)


@pytest.fixture(scope="session")
def unprivileged_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A fake-runtime server run as a normal user (nobody, through `setpriv`) when the tests
    run as root: its sandboxes get what an unprivileged host allows (a user namespace
    mapping root inside to that user, no cgroups). Skipped where that cannot be had."""
    if os.geteuid() != 0:
        pytest.skip("the tests run as a normal user already: `server` is unprivileged")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is missing, so no server can run as a normal user")
    workdir = Path(tempfile.mkdtemp(prefix="opensandbox-unprivileged-"))
    os.chmod(workdir, 0o755)
    for name in ("state", "volumes"):
        (workdir / name).mkdir()
    for path in (workdir, workdir / "state", workdir / "volumes"):
        os.chown(path, NOBODY, NOBODY)
    user = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    with passable_to_others(Path(__file__).resolve().parent.parent):
        try:
            running = launch({}, workdir, prefix=user)
        except RuntimeError as error:
            shutil.rmtree(workdir, ignore_errors=True)
            pytest.skip(f"a server cannot run as nobody here: {error}")
        health = httpx.get(running.url + "/health", timeout=10).json()
        if health["isolation"]["mode"] != "container":
            running.stop()
            shutil.rmtree(workdir, ignore_errors=True)
            pytest.skip("a normal user gets no container here: "
                        f"{health['isolation'].get('reason', health)}")
        yield running
        running.stop()
    shutil.rmtree(workdir, ignore_errors=True)



@pytest.fixture(scope="session", params=(*RUNTIMES, "fake-unprivileged"))
def any_server(request: pytest.FixtureRequest) -> ServerProcess:
    """`execd_server`'s two, then a fake-runtime server run as a normal user."""
    name = {"fake": "server", "docker": "docker_server",
            "fake-unprivileged": "unprivileged_server"}[request.param]
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture(scope="session", params=RUNTIMES, ids=RUNTIMES)
def execd_server(request: pytest.FixtureRequest) -> ServerProcess:
    """The run-wide server of each runtime in turn: `server` (fake), then `docker_server`
    (skipped without an engine, failed with OPENSANDBOX_REQUIRE_DOCKER=1)."""
    name = "docker_server" if request.param == "docker" else "server"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


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


# --- raw HTTP ----------------------------------------------------------------------------------


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture
def sandbox_id(server: ServerProcess, http: httpx.Client) -> Iterator[str]:
    """A fresh running sandbox, deleted afterwards."""
    response = http.post("/v1/sandboxes", json=create_body(server))
    assert response.status_code == 202, response.text
    created = response.json()["id"]
    yield created
    http.delete(f"/v1/sandboxes/{created}")


@pytest.fixture(scope="module")
def module_execd(server: ServerProcess) -> Iterator[str]:
    """One running sandbox shared by a module's tests, deleted after them: its execd base
    URL (through the gateway)."""
    sandbox = new_sandbox(server)
    with server.client() as client:
        wait_for(lambda: client.get(f"/v1/sandboxes/{sandbox}").json()["status"]["state"]
                 == "Running", "the sandbox to run")
        yield execd_url(server, sandbox)
        client.delete(f"/v1/sandboxes/{sandbox}")


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


# --- the app in this process -------------------------------------------------------------------


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[InProcess]:
    """The app of `create_app` over a fake runtime (runc) whose state lives in
    `tmp_path`, its clock and ids set by the test; stopped (sandboxes destroyed) after."""
    async with serve_in_process(tmp_path) as running:
        yield running
