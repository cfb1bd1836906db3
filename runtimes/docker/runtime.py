"""`DockerRuntime`: each sandbox is a container of a real image on a Docker engine.

Nothing is installed into the image: the embedded execd runs in the server and reaches
into the container through the engine (exec for commands, archive and small exec'd
helpers for files, stats for metrics). The engine is the source of truth for the state of a
sandbox: `inspect` reads it on every call, so a container that died or was removed behind
the server's back shows as Terminated, Failed or gone (404).

Restart safety: containers carry their sandbox in labels (`labels.py`) and outlive the
server. At start-up the runtime hands back every container of its `[docker] instance`, with
creation and expiry times restored, and the lifecycle service re-arms the expiry (removing
those already expired). `close()` releases the server's connections only.

Ports: sandboxes join `[docker] network_mode` (the default `bridge` or a user-defined
network) and the server reaches an application port at the container's own address on that
network. Publishing to the host's loopback was the alternative, but Docker publishes ports
only when a container is created, while a sandbox's ports are asked for afterwards (any
port, any time); the container's address reaches them all, with no host ports to allocate
or leak. An application bound to the container's own loopback is reached through a relay
exec'd inside the sandbox (`relay.py`). With `network_mode = "host"` the sandbox shares the
host's network and its ports are on loopback.

Helpers: short operations inside the container (stat, mkdir, kill…) go through one
long-lived helper shell per sandbox (`helpers.py`), not one exec each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import replace
from datetime import datetime
from typing import Any

from docker.errors import APIError, ImageNotFound, NotFound
from docker.types import Mount
from docker.utils import parse_repository_tag

from opensandbox_emulator.runtimes.base import (
    Phase,
    ResourceUsage,
    Runtime,
    RuntimeStatus,
    SandboxProcess,
    SandboxSpec,
    SpawnRequest,
)
from opensandbox_emulator.runtimes.docker import labels
from opensandbox_emulator.runtimes.docker.engine import (
    Engine,
    RawStream,
    explain,
    refused_as_invalid,
    wrong_state,
)
from opensandbox_emulator.runtimes.docker.execs import (
    open_exec,
    send_pending_signals,
    spawn_process,
)
from opensandbox_emulator.runtimes.docker.expiry import ExpiryStore, default_state_dir
from opensandbox_emulator.runtimes.docker.filesystem import DockerFilesystem
from opensandbox_emulator.runtimes.docker.limits import parse_limits
from opensandbox_emulator.runtimes.docker.relay import RELAY_ENV, LoopbackRelay, relay_argv
from opensandbox_emulator.runtimes.docker.sandbox import (
    CpuSample,
    DockerSandbox,
    inspect_container,
)
from opensandbox_emulator.runtimes.docker.settings import DockerSettings
from opensandbox_emulator.runtimes.docker.volumes import NamedVolume, sub_path_source, to_mount
from opensandbox_emulator.runtimes.failures import (
    ImageUnavailable,
    InvalidArgument,
    NetworkNotFound,
    NoNetworkAddress,
    PauseFailed,
    QueryFailed,
    RemoveFailed,
    ResumeFailed,
    RuntimeFailure,
    SandboxMissing,
    StartFailed,
    SubPathNotFound,
    VolumeNotFound,
    VolumeQueryFailed,
)

log = logging.getLogger("opensandbox.runtime.docker")

class DockerRuntime(Runtime):
    name = "docker"

    def __init__(self, *, settings: DockerSettings | None = None, engine: Engine | None = None):
        settings = settings or DockerSettings()
        self.settings = settings
        self.network = settings.network_mode or "bridge"
        self.engine = engine or Engine()
        self.expiry = ExpiryStore(settings.state_dir or default_state_dir(), settings.instance)
        self._sandboxes: dict[str, DockerSandbox] = {}
        self._host_cpus = float(os.cpu_count() or 1)

    @property
    def isolation(self) -> str:
        return "docker"

    # --- start-up and shutdown -------------------------------------------------------------

    async def start(self) -> list[SandboxSpec]:
        await self.engine.connect()
        info = await self.engine.call(self.engine.client.info)
        self._host_cpus = float(info.get("NCPU") or self._host_cpus)
        if self.network != "host":
            try:
                await self.engine.call(self.engine.client.networks.get, self.network)
            except NotFound as error:
                raise NetworkNotFound(
                    self.network,
                    f"[docker] network_mode: Docker network '{self.network}' does not exist; "
                    f"create it (docker network create {self.network}) or use \"bridge\".",
                ) from error
        await self.expiry.load()
        containers = await self.engine.call(
            self.engine.client.containers.list, all=True,
            filters={"label": [labels.ID, f"{labels.INSTANCE}={self.settings.instance}"]})
        specs = []
        for container in containers:
            sandbox_id = container.attrs["Config"]["Labels"][labels.ID]
            renewed, when = self.expiry.get(sandbox_id)
            spec = labels.spec_from_container(container.attrs)
            if renewed:
                spec = replace(spec, expires_at=when)
            specs.append(spec)
            self._track(sandbox_id, spec.env.get("HOME", "/root"))
        await self.expiry.forget(keep_only=set(self._sandboxes))
        if specs:
            log.info("adopted %d sandbox container(s) of instance %r", len(specs),
                     self.settings.instance)
        return specs

    async def close(self) -> None:
        """Stop reading the outputs of running execs and drop the engine connection. The
        containers stay (restart safety); so do the commands running in them."""
        for sandbox_id in list(self._sandboxes):
            await self._forget(sandbox_id)
        await self.engine.close()

    # --- the sandboxes this runtime holds ------------------------------------------------

    def _track(self, sandbox_id: str, home: str) -> DockerSandbox:
        """The one place a `DockerSandbox` is made: a container created or adopted."""
        sandbox = self._sandboxes[sandbox_id] = DockerSandbox(sandbox_id, home=home or "/root")
        return sandbox

    async def _forget(self, sandbox_id: str) -> None:
        """The one place a `DockerSandbox` is dropped (and what it holds released)."""
        sandbox = self._sandboxes.pop(sandbox_id, None)
        if sandbox is not None:
            await sandbox.close()

    def _sandbox(self, sandbox_id: str) -> DockerSandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            raise SandboxMissing(sandbox_id)
        return sandbox

    # --- provisioning ------------------------------------------------------------------------

    async def _named_volume(self, claim_name: str) -> NamedVolume:
        try:
            volume = await self.engine.call(self.engine.client.volumes.get, claim_name)
        except NotFound as error:
            raise VolumeNotFound(claim_name, f"Docker volume '{claim_name}' does not exist; "
                                 f"create it first (docker volume create {claim_name}).") \
                from error
        except APIError as error:
            raise VolumeQueryFailed(claim_name, f"Inspecting Docker volume '{claim_name}' "
                                    f"failed: {explain(error)}") from error
        attrs = volume.attrs
        return NamedVolume(claim_name, attrs.get("Driver", ""), attrs.get("Mountpoint", ""))

    async def resolve_named_volume(self, claim_name: str, sub_path: str | None) -> str:
        volume = await self._named_volume(claim_name)
        if sub_path:
            return sub_path_source(volume, sub_path)
        return volume.name

    async def _ensure_image(self, spec: SandboxSpec) -> None:
        client = self.engine.client
        try:
            await self.engine.call(client.images.get, spec.image)
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
            await self.engine.call(client.images.pull, repository, tag=tag or "latest",
                                   auth_config=auth)
        except APIError as error:
            raise ImageUnavailable(
                spec.image,
                f"Image '{spec.image}' is not on the Docker engine and pulling it failed: "
                f"{explain(error)}. Check the name and the registry credentials "
                "(image.auth), or load the image locally (docker pull / docker load).",
            ) from error

    def _security_options(self) -> list[str]:
        options = []
        if self.settings.no_new_privileges:
            options.append("no-new-privileges:true")
        if self.settings.apparmor_profile:
            options.append(f"apparmor={self.settings.apparmor_profile}")
        seccomp = self.settings.seccomp_profile
        if seccomp:
            if seccomp != "unconfined" and os.path.isfile(seccomp):
                with open(seccomp, encoding="utf-8") as handle:  # the engine wants the JSON
                    seccomp = handle.read()
            options.append(f"seccomp={seccomp}")
        return options

    async def create(self, spec: SandboxSpec) -> None:
        limits = parse_limits(spec.resource_limits)
        mounts: list[Mount] = []
        for volume in spec.volumes:
            named = await self._named_volume(volume.source) if volume.kind == "pvc" else None
            mounts.append(to_mount(volume, named))
        await self._ensure_image(spec)
        options: dict[str, Any] = {
            "name": labels.container_name(spec.sandbox_id),
            "entrypoint": list(spec.entrypoint),
            "environment": [f"{k}={v}" for k, v in spec.env.items()],
            "labels": labels.make_labels(spec, self.settings.instance),
            "mounts": mounts,
            "security_opt": self._security_options() or None,
            "cap_drop": list(self.settings.drop_capabilities) or None,
            "pids_limit": self.settings.pids_limit,
            "init": self.settings.init,
            "detach": True,
        }
        if self.network == "host":
            options["network_mode"] = "host"
        else:
            options["network"] = self.network
            options["hostname"] = "sandbox-" + spec.sandbox_id.replace("-", "")[:12]
        if limits.nano_cpus is not None:
            # A laptop with fewer CPUs than asked for still runs the sandbox, on all it has.
            options["nano_cpus"] = min(limits.nano_cpus, int(self._host_cpus * 1e9))
        if limits.memory_bytes is not None:
            options["mem_limit"] = limits.memory_bytes
        client = self.engine.client
        try:
            container = await self.engine.call(client.containers.create, spec.image, **options)
        except APIError as error:
            raise self._create_failure(spec, error) from error
        env = (container.attrs.get("Config") or {}).get("Env") or []
        homes = [item[5:] for item in env if item.startswith("HOME=")]
        self._track(spec.sandbox_id, homes[-1] if homes else "/root")
        try:
            await self.engine.call(container.start)
        except APIError as error:
            with contextlib.suppress(APIError):
                await self.engine.call(container.remove, force=True)
            await self._forget(spec.sandbox_id)
            raise StartFailed(f"Failed to create or start container: {explain(error)}") \
                from error

    def _create_failure(self, spec: SandboxSpec, error: APIError) -> RuntimeFailure:
        text = explain(error)
        if refused_as_invalid(error) and "bind source path does not exist" in text:
            return SubPathNotFound(None, "A volume's subPath does not exist in its Docker "
                                         f"volume: {text}")
        if refused_as_invalid(error):
            return InvalidArgument(f"The Docker engine refused the sandbox: {text}")
        return StartFailed(f"Failed to create or start container: {text}")

    # --- state -------------------------------------------------------------------------------

    async def inspect(self, sandbox_id: str) -> RuntimeStatus:
        state = (await inspect_container(self.engine, sandbox_id)).get("State") or {}
        status = state.get("Status", "")
        if state.get("Paused") or status == "paused":
            return RuntimeStatus(Phase.PAUSED)
        if state.get("Running") or status in ("running", "restarting"):
            return RuntimeStatus(Phase.RUNNING)
        if status == "created":
            return RuntimeStatus(Phase.STARTING)
        if status in ("exited", "dead"):
            return RuntimeStatus(Phase.EXITED, exit_code=int(state.get("ExitCode") or 0),
                                 finished_at=labels.parse_time(state.get("FinishedAt")))
        return RuntimeStatus(Phase.UNKNOWN)

    async def pause(self, sandbox_id: str) -> None:
        await self._lifecycle_call(sandbox_id, self.engine.api.pause, PauseFailed)

    async def resume(self, sandbox_id: str) -> None:
        await self._lifecycle_call(sandbox_id, self.engine.api.unpause, ResumeFailed)
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is not None:
            await send_pending_signals(self.engine, sandbox)

    async def _lifecycle_call(self, sandbox_id: str, action: Any,
                              failure: type[PauseFailed | ResumeFailed]) -> None:
        try:
            await self.engine.call(action, labels.container_name(sandbox_id))
        except NotFound as error:
            raise SandboxMissing(sandbox_id) from error
        except APIError as error:
            raise failure(sandbox_id, explain(error), wrong_state=wrong_state(error)) \
                from error

    async def destroy(self, sandbox_id: str) -> None:
        name = labels.container_name(sandbox_id)
        api = self.engine.api
        try:
            await self.engine.call(api.kill, name)
        except NotFound:
            pass
        except APIError as error:
            if not wrong_state(error):  # not running: removing it is all that is left
                log.warning("killing sandbox %s: %s", sandbox_id, explain(error))
        try:
            await self.engine.call(api.remove_container, name, force=True, v=False)
        except NotFound:
            pass
        except APIError as error:
            if "already in progress" not in explain(error):
                raise RemoveFailed(sandbox_id, explain(error)) from error
        await self._forget(sandbox_id)
        await self.expiry.forget({sandbox_id})

    async def set_expiry(self, sandbox_id: str, expires_at: datetime | None) -> None:
        await self.expiry.set(sandbox_id, expires_at)

    # --- processes ---------------------------------------------------------------------------

    async def spawn(self, sandbox_id: str, request: SpawnRequest) -> SandboxProcess:
        return await spawn_process(self.engine, self._sandbox(sandbox_id), request)

    # --- ports and metrics -----------------------------------------------------------------

    async def port_address(self, sandbox_id: str, port: int) -> tuple[str, int]:
        """The container's address on its network when something listens there; else (an
        application bound to the container's loopback) a relay on the server's loopback."""
        sandbox = self._sandbox(sandbox_id)
        attrs = await inspect_container(self.engine, sandbox_id)
        if self.network == "host":
            return "127.0.0.1", port
        networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
        address = (networks.get(self.network) or {}).get("IPAddress")
        if not address:  # joined by hand to another network, say
            address = next((n.get("IPAddress") for n in networks.values()
                            if n.get("IPAddress")), None)
        if not address:
            raise NoNetworkAddress(sandbox_id, self.network)
        if await _accepts(address, port):
            return address, port
        if port not in sandbox.relays:
            relay = LoopbackRelay(port, lambda p: self._open_relay(sandbox, p))
            sandbox.relays[port] = (relay, await relay.start())
        return "127.0.0.1", sandbox.relays[port][1]

    async def _open_relay(self, sandbox: DockerSandbox, port: int) -> RawStream:
        _, stream = await open_exec(self.engine, sandbox, relay_argv(port), stdin=True,
                                    environment=RELAY_ENV)
        return stream

    async def _cpu_sample(self, sandbox_id: str) -> tuple[CpuSample, dict[str, Any]]:
        name = labels.container_name(sandbox_id)
        try:
            stats = await self.engine.call(self.engine.api.stats, name, stream=False,
                                           one_shot=True)
        except NotFound as error:
            raise SandboxMissing(sandbox_id) from error
        except APIError as error:
            raise QueryFailed(sandbox_id, f"Reading the stats of sandbox {sandbox_id} failed: "
                              f"{explain(error)}") from error
        cpu = stats.get("cpu_stats") or {}
        sample = CpuSample(at=time.monotonic(),
                           cpu_ns=int((cpu.get("cpu_usage") or {}).get("total_usage") or 0),
                           system_ns=cpu.get("system_cpu_usage"))
        return sample, stats

    async def usage(self, sandbox_id: str) -> ResourceUsage:
        """From one-shot stats (no 1 s sampling wait): CPU is the usage between this sample
        and the previous one of the same sandbox; the first call takes two, 0.2 s apart."""
        sandbox = self._sandbox(sandbox_id)
        attrs = await inspect_container(self.engine, sandbox_id)
        current, stats = await self._cpu_sample(sandbox_id)
        previous = sandbox.cpu_sample
        if previous is None or current.at - previous.at > 10:
            await asyncio.sleep(0.2)
            previous = current
            current, stats = await self._cpu_sample(sandbox_id)
        sandbox.cpu_sample = current
        cpu = stats.get("cpu_stats") or {}
        online = float(cpu.get("online_cpus") or self._host_cpus)
        nano = int((attrs.get("HostConfig") or {}).get("NanoCpus") or 0)
        cpu_count = nano / 1e9 if nano else online
        used_ns = max(current.cpu_ns - previous.cpu_ns, 0)
        if current.system_ns and previous.system_ns and current.system_ns > previous.system_ns:
            cores = used_ns / (current.system_ns - previous.system_ns) * online
        else:
            elapsed = max(current.at - previous.at, 1e-6)
            cores = used_ns / 1e9 / elapsed
        percent = cores / cpu_count * 100 if cpu_count else 0.0
        memory = stats.get("memory_stats") or {}
        details = memory.get("stats") or {}
        inactive = details.get("total_inactive_file", details.get("inactive_file", 0)) or 0
        used = max(int(memory.get("usage") or 0) - int(inactive), 0)
        total = int(memory.get("limit") or 0)
        return ResourceUsage(cpu_count=round(cpu_count, 2),
                             cpu_used_pct=round(min(max(percent, 0.0), 100.0), 2),
                             mem_total_mib=round(total / 1048576, 1),
                             mem_used_mib=round(min(used, total or used) / 1048576, 1))

    # --- files ---------------------------------------------------------------------------------

    def filesystem(self, sandbox_id: str) -> DockerFilesystem:
        return DockerFilesystem(self._sandbox(sandbox_id), self.engine)


async def _accepts(address: str, port: int) -> bool:
    """Whether something accepts TCP connections at address:port (refused at once when
    nothing listens; a silent host gets one second)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


__all__ = ["DockerRuntime"]
