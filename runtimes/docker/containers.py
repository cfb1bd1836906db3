"""What a sandbox's container is made from: its image, pulled when missing, and the
options `create` passes the engine (labels, mounts, limits, hardening, network)."""

from __future__ import annotations

import logging
import os
from typing import Any

from docker.errors import APIError, ImageNotFound
from docker.types import Mount
from docker.utils import parse_repository_tag

from opensandbox_emulator.runtimes.base import DEFAULT_ENV_FILE, SandboxSpec
from opensandbox_emulator.runtimes.docker import labels, tarstream
from opensandbox_emulator.runtimes.docker.egress import gated
from opensandbox_emulator.runtimes.docker.engine import Engine, explain, refused_as_invalid
from opensandbox_emulator.runtimes.docker.settings import DockerSettings
from opensandbox_emulator.runtimes.failures import (
    ImageUnavailable,
    InvalidArgument,
    RuntimeFailure,
    StartFailed,
    SubPathNotFound,
)
from opensandbox_emulator.runtimes.limits import Limits

log = logging.getLogger("opensandbox.runtime.docker")


def platform_of(spec: SandboxSpec) -> str | None:
    """`os/arch` of the request's `platform` (only linux: this server runs no Windows)."""
    if spec.platform is None:
        return None
    if spec.platform[0] != "linux":
        raise InvalidArgument(f"platform {spec.platform[0]}/{spec.platform[1]} is not supported "
                              "here: the docker runtime runs Linux containers only.",
                              field="platform")
    return "/".join(spec.platform)


async def ensure_image(engine: Engine, spec: SandboxSpec) -> None:
    """Pull the sandbox's image unless the engine has it (with `image.auth` if given); with
    a `platform`, pull it for that platform when the local one is of another."""
    client = engine.client
    platform = platform_of(spec)
    try:
        image = await engine.call(client.images.get, spec.image)
        have = f"{image.attrs.get('Os', 'linux')}/{image.attrs.get('Architecture', '')}"
        if platform is None or have == platform or spec.snapshot_id is not None:
            return
    except ImageNotFound:
        pass
    except APIError as error:
        raise ImageUnavailable(spec.image, f"Inspecting image '{spec.image}' failed: "
                                           f"{explain(error)}") from error
    repository, tag = parse_repository_tag(spec.image)
    auth = None
    if spec.image_auth is not None:
        auth = {"username": spec.image_auth[0], "password": spec.image_auth[1]}
    log.info("pulling image %s", spec.image)
    try:
        await engine.call(client.images.pull, repository, tag=tag or "latest",
                          auth_config=auth, platform=platform)
    except APIError as error:
        raise ImageUnavailable(
            spec.image,
            f"Image '{spec.image}' is not on the Docker engine and pulling it failed: "
            f"{explain(error)}. Check the name and the registry credentials "
            "(image.auth), or load the image locally (docker pull / docker load).",
        ) from error


def container_options(spec: SandboxSpec, settings: DockerSettings, limits: Limits,
                      mounts: list[Mount], host_cpus: float) -> dict[str, Any]:
    """The keyword arguments of `containers.create` for the sandbox."""
    options: dict[str, Any] = {
        "name": labels.container_name(spec.sandbox_id),
        "entrypoint": list(spec.entrypoint),
        # EXECD_ENVS as upstream's bootstrap sets it, unless the request names another.
        "environment": [f"{k}={v}" for k, v in
                        {"EXECD_ENVS": DEFAULT_ENV_FILE, **spec.env}.items()],
        "labels": labels.make_labels(spec, settings.instance),
        "mounts": mounts,
        "security_opt": _security_options(settings) or None,
        "cap_drop": list(settings.drop_capabilities) or None,
        "pids_limit": settings.pids_limit,
        "init": settings.init,
        "detach": True,
    }
    if spec.network_policy is not None:
        # Held at a gate until its egress rules are in place (see egress.py).
        options["entrypoint"] = gated(spec.entrypoint)
        options["stdin_open"] = True
    if spec.platform is not None:
        options["platform"] = platform_of(spec)
    network = settings.network_mode or "bridge"
    if network == "host":
        options["network_mode"] = "host"
    else:
        options["network"] = network
        options["hostname"] = "sandbox-" + spec.sandbox_id.replace("-", "")[:12]
    if limits.nano_cpus is not None:
        # A laptop with fewer CPUs than asked for still runs the sandbox, on all it has.
        options["nano_cpus"] = min(limits.nano_cpus, int(host_cpus * 1e9))
    if limits.memory_bytes is not None:
        options["mem_limit"] = limits.memory_bytes
    return options


def _security_options(settings: DockerSettings) -> list[str]:
    options = []
    if settings.no_new_privileges:
        options.append("no-new-privileges:true")
    if settings.apparmor_profile:
        options.append(f"apparmor={settings.apparmor_profile}")
    seccomp = settings.seccomp_profile
    if seccomp:
        if seccomp != "unconfined" and os.path.isfile(seccomp):
            with open(seccomp, encoding="utf-8") as handle:  # the engine wants the JSON
                seccomp = handle.read()
        options.append(f"seccomp={seccomp}")
    return options


async def create_env_file(engine: Engine, container_id: str, path: str) -> None:
    """An empty env file before the entrypoint starts, as upstream's bootstrap makes; a
    path the engine refuses is only logged (upstream's bootstrap only warns)."""
    archive = (tarstream.file_header(path.lstrip("/"), 0, mode=0o644, uid=0, gid=0)
               + tarstream.END_OF_ARCHIVE)
    try:
        await engine.call(engine.api.put_archive, container_id, "/", archive)
    except APIError as error:
        log.warning("cannot create the env file %s: %s", path, explain(error))


def creation_failure(error: APIError) -> RuntimeFailure:
    """Why the engine would not create the container, as the failure a client acts on."""
    text = explain(error)
    if refused_as_invalid(error) and "bind source path does not exist" in text:
        return SubPathNotFound(None, "A volume's subPath does not exist in its Docker "
                                     f"volume: {text}")
    if refused_as_invalid(error):
        return InvalidArgument(f"The Docker engine refused the sandbox: {text}")
    return StartFailed(f"Failed to create or start container: {text}")
