"""The Docker engine the docker runtime's tests and benchmark need.

Docker tests skip when no engine answers (or the local test images are missing), unless
OPENSANDBOX_REQUIRE_DOCKER=1 (CI sets it), which turns every such skip into a failure.
The images come from `tests/docker/build-images.sh` (which `tests/setup.sh` runs when an
engine answers), built from local material only.

Not named `docker.py`: a script run from this directory (the sandboxes' `sandbox_app.py`)
would then find it instead of the Docker SDK.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from tests.helpers.servers import ServerProcess

DOCKER_BUSYBOX_IMAGE = "opensandbox-test/busybox:1"
DOCKER_DEBIAN_IMAGE = "opensandbox-test/debian:bookworm"
# The Debian image plus a JDK, Go, Node.js with typescript and the code-interpreter scripts;
# also tagged with the code-interpreter image names the SDKs document.
DOCKER_CODE_IMAGE = "opensandbox-test/code:bookworm"
CODE_INTERPRETER_IMAGES = ("opensandbox/code-interpreter:latest",
                           "opensandbox/code-interpreter:v1.1.0")
DOCKER_IMAGES = (DOCKER_BUSYBOX_IMAGE, DOCKER_DEBIAN_IMAGE, DOCKER_CODE_IMAGE,
                 *CODE_INTERPRETER_IMAGES)
_problem: list[str | None] = []


def docker_problem() -> str | None:
    """Why the docker runtime cannot be tested here (no engine, images missing), or None
    when it can. Asked of the engine once."""
    if not _problem:
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
        _problem.append(problem)
    return _problem[0]


def unavailable(message: str) -> NoReturn:
    """Skip the calling test for `message`, or fail it where every part the tests use must
    be there (OPENSANDBOX_REQUIRE_DOCKER=1, as CI sets)."""
    if os.environ.get("OPENSANDBOX_REQUIRE_DOCKER") == "1":
        pytest.fail(f"{message} (required here: OPENSANDBOX_REQUIRE_DOCKER=1)")
    pytest.skip(message)


def require_docker() -> None:
    """Skip the calling test (or fail it when OPENSANDBOX_REQUIRE_DOCKER=1) without Docker."""
    reason = docker_problem()
    if reason is not None:
        unavailable(f"docker runtime tests need Docker: {reason}")


@contextlib.contextmanager
def docker_client() -> Iterator[Any]:
    """The Docker SDK's client of the engine the tests use (after `require_docker`)."""
    require_docker()
    import docker

    client = docker.from_env(timeout=60)
    try:
        yield client
    finally:
        client.close()


def docker_sections(workdir: Path, *, instance: str | None = None,
                    allowed_host_paths: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Config sections for a docker-runtime test server: its own instance label (so test
    servers sharing the engine never adopt each other's sandboxes) and state directory.
    Host volumes are allowed anywhere unless `allowed_host_paths` is given."""
    sections: dict[str, dict[str, Any]] = {
        "runtime": {"type": "docker"},
        "docker": {"instance": instance or f"test-{uuid.uuid4().hex[:12]}",
                   "state_dir": str(workdir / "docker-state")}}
    if allowed_host_paths is not None:
        sections["storage"] = {"allowed_host_paths": allowed_host_paths}
    return sections


def remove_docker_sandboxes(instance: str) -> None:
    """Remove every container and snapshot image a test server of `instance` left behind."""
    if docker_problem() is not None:
        return
    import docker
    from docker.errors import APIError

    client = docker.from_env(timeout=30)
    try:
        for container in client.containers.list(
                all=True, filters={"label": f"opensandbox.io/instance={instance}"}):
            container.remove(force=True)
        for image in client.images.list(filters={
                "label": ["opensandbox.io/snapshot-of", f"opensandbox.io/instance={instance}"]}):
            for tag in image.tags:
                with contextlib.suppress(APIError):
                    client.images.remove(tag, force=True)
    finally:
        client.close()


def docker_host_dir(server: ServerProcess) -> Path:
    """A scratch directory for host volumes of the `docker_server` fixture's server."""
    return server.config_path.parent / "host"


def containers_of(server: ServerProcess) -> set[str]:
    """Ids of the containers (any state) labelled with `server`'s `[docker] instance`."""
    import tomllib

    import docker

    with open(server.config_path, "rb") as handle:
        instance = tomllib.load(handle)["docker"]["instance"]
    client = docker.from_env(timeout=30)
    try:
        return {container.id for container in client.containers.list(
            all=True, filters={"label": f"opensandbox.io/instance={instance}"})}
    finally:
        client.close()
