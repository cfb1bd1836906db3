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
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

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
    ExecStartError,
    RawStream,
    refused_as_invalid,
    wrong_state,
)
from opensandbox_emulator.runtimes.docker.expiry import ExpiryStore, default_state_dir
from opensandbox_emulator.runtimes.docker.helpers import (
    AGENT_ARGV,
    AGENT_ENV,
    Agent,
    AgentGone,
    AgentPool,
    HelperResult,
    agent_can_carry,
    one_shot_argv,
)
from opensandbox_emulator.runtimes.docker.limits import parse_limits
from opensandbox_emulator.runtimes.docker.processes import (
    ExecProcess,
    OutputPump,
    spawn_failure,
    wrap,
)
from opensandbox_emulator.runtimes.docker.relay import RELAY_ENV, LoopbackRelay, relay_argv
from opensandbox_emulator.runtimes.docker.settings import DockerSettings
from opensandbox_emulator.runtimes.docker.volumes import NamedVolume, sub_path_source, to_mount
from opensandbox_emulator.runtimes.failures import (
    HelperFailed,
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
    SpawnFailed,
    StartFailed,
    SubPathNotFound,
    TimedOut,
    VolumeNotFound,
    VolumeQueryFailed,
)

if TYPE_CHECKING:
    from opensandbox_emulator.runtimes.filesystem import SandboxFilesystem

log = logging.getLogger("opensandbox.runtime.docker")

HANDSHAKE_TIMEOUT = 30.0


@dataclass
class CpuSample:
    at: float  # monotonic seconds
    cpu_ns: int
    system_ns: int | None


class DockerRuntime(Runtime):
    name = "docker"

    def __init__(self, *, settings: DockerSettings | None = None, engine: Engine | None = None):
        settings = settings or DockerSettings()
        self.settings = settings
        self.network = settings.network_mode or "bridge"
        self.engine = engine or Engine()
        self.expiry = ExpiryStore(settings.state_dir or default_state_dir(), settings.instance)
        self._sandboxes: set[str] = set()
        self._homes: dict[str, str] = {}  # HOME of the container's root, for `~` in files
        self._processes: dict[str, set[ExecProcess]] = {}
        self._cpu_samples: dict[str, CpuSample] = {}
        self._agents: dict[str, AgentPool] = {}
        self.mount_tables: dict[str, Any] = {}  # sandbox id -> its mounts (filesystem.py)
        self._pending_signals: dict[str, list[tuple[int, int]]] = {}
        # Programs a spawn found missing (bash in a busybox image, say): checked again
        # through the agent (~1 ms) instead of another exec (~40 ms) before each retry.
        self._missing_programs: dict[str, set[str]] = {}
        self._relays: dict[str, dict[int, tuple[LoopbackRelay, int]]] = {}
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
                spec = _with_expiry(spec, when)
            specs.append(spec)
            self._sandboxes.add(sandbox_id)
            self._homes[sandbox_id] = spec.env.get("HOME", "/root")
        await self.expiry.forget(keep_only=set(self._sandboxes))
        if specs:
            log.info("adopted %d sandbox container(s) of instance %r", len(specs),
                     self.settings.instance)
        return specs

    async def close(self) -> None:
        """Stop reading the outputs of running execs and drop the engine connection. The
        containers stay (restart safety); so do the commands running in them."""
        for processes in list(self._processes.values()):
            for process in list(processes):
                await process.close()
        self._processes.clear()
        for pool in list(self._agents.values()):
            await pool.close()
        self._agents.clear()
        for sandbox_id in list(self._relays):
            await self._close_relays(sandbox_id)
        await self.engine.close()

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
                                    f"failed: {_explain(error)}") from error
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
                                   f"{_explain(error)}") from error
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
                f"{_explain(error)}. Check the name and the registry credentials "
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
        self._sandboxes.add(spec.sandbox_id)
        env = (container.attrs.get("Config") or {}).get("Env") or []
        homes = [item[5:] for item in env if item.startswith("HOME=")]
        self._homes[spec.sandbox_id] = homes[-1] if homes else "/root"
        try:
            await self.engine.call(container.start)
        except APIError as error:
            with contextlib.suppress(APIError):
                await self.engine.call(container.remove, force=True)
            self._sandboxes.discard(spec.sandbox_id)
            raise StartFailed(f"Failed to create or start container: {_explain(error)}") \
                from error

    def _create_failure(self, spec: SandboxSpec, error: APIError) -> RuntimeFailure:
        text = _explain(error)
        if refused_as_invalid(error) and "bind source path does not exist" in text:
            return SubPathNotFound(None, "A volume's subPath does not exist in its Docker "
                                         f"volume: {text}")
        if refused_as_invalid(error):
            return InvalidArgument(f"The Docker engine refused the sandbox: {text}")
        return StartFailed(f"Failed to create or start container: {text}")

    # --- state -------------------------------------------------------------------------------

    async def _attrs(self, sandbox_id: str) -> dict[str, Any]:
        try:
            attrs = await self.engine.call(self.engine.api.inspect_container,
                                           labels.container_name(sandbox_id))
        except NotFound as error:
            self._forget(sandbox_id)
            raise SandboxMissing(sandbox_id) from error
        except APIError as error:
            raise QueryFailed(sandbox_id, f"Inspecting sandbox {sandbox_id} failed: "
                              f"{_explain(error)}") from error
        if (attrs.get("Config", {}).get("Labels") or {}).get(labels.ID) != sandbox_id:
            raise SandboxMissing(sandbox_id)
        return attrs  # type: ignore[no-any-return]

    async def inspect(self, sandbox_id: str) -> RuntimeStatus:
        state = (await self._attrs(sandbox_id)).get("State") or {}
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
        for pgid, sig in self._pending_signals.pop(sandbox_id, []):
            await self.signal_group(sandbox_id, pgid, sig)

    async def _lifecycle_call(self, sandbox_id: str, action: Any,
                              failure: type[PauseFailed | ResumeFailed]) -> None:
        try:
            await self.engine.call(action, labels.container_name(sandbox_id))
        except NotFound as error:
            raise SandboxMissing(sandbox_id) from error
        except APIError as error:
            raise failure(sandbox_id, _explain(error), wrong_state=wrong_state(error)) \
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
                log.warning("killing sandbox %s: %s", sandbox_id, _explain(error))
        try:
            await self.engine.call(api.remove_container, name, force=True, v=False)
        except NotFound:
            pass
        except APIError as error:
            if "already in progress" not in _explain(error):
                raise RemoveFailed(sandbox_id, _explain(error)) from error
        for process in list(self._processes.pop(sandbox_id, ())):
            await process.close()
        pool = self._agents.pop(sandbox_id, None)
        if pool is not None:
            await pool.close()
        await self._close_relays(sandbox_id)
        self._forget(sandbox_id)
        await self.expiry.forget({sandbox_id})

    def _forget(self, sandbox_id: str) -> None:
        self._sandboxes.discard(sandbox_id)
        self._homes.pop(sandbox_id, None)
        self._cpu_samples.pop(sandbox_id, None)
        self._pending_signals.pop(sandbox_id, None)
        self.mount_tables.pop(sandbox_id, None)
        self._missing_programs.pop(sandbox_id, None)

    async def set_expiry(self, sandbox_id: str, expires_at: datetime | None) -> None:
        await self.expiry.set(sandbox_id, expires_at)

    # --- processes ---------------------------------------------------------------------------

    async def _exec_create(self, sandbox_id: str, argv: list[str], *, user: str = "",
                           environment: Mapping[str, str] | None = None,
                           stdin: bool = False) -> str:
        try:
            created = await self.engine.call(
                self.engine.api.exec_create, labels.container_name(sandbox_id), argv,
                stdout=True, stderr=True, stdin=stdin, user=user,
                environment=dict(environment or {}))
        except NotFound as error:
            self._forget(sandbox_id)
            raise SandboxMissing(sandbox_id) from error
        except APIError as error:
            raise SpawnFailed(f"the sandbox cannot run commands now: {_explain(error)}",
                              wrong_state=wrong_state(error)) from error
        return str(created["Id"])

    async def _attach(self, exec_id: str) -> RawStream:
        try:
            return await self.engine.attach_exec(exec_id)
        except (ExecStartError, OSError) as error:
            raise SpawnFailed(f"the sandbox cannot run commands now: {error}",
                              wrong_state=isinstance(error, ExecStartError) and error.wrong_state
                              ) from error

    async def spawn(self, sandbox_id: str, request: SpawnRequest) -> SandboxProcess:
        if not request.argv:
            raise SpawnFailed("empty command")
        user = ""
        if request.uid is not None or request.gid is not None:
            uid = request.uid if request.uid is not None else 0
            gid = request.gid if request.gid is not None else uid
            user = f"{uid}:{gid}"
        program = request.argv[0]
        cacheable = "/" not in program and "PATH" not in request.env
        missing = self._missing_programs.setdefault(sandbox_id, set())
        if cacheable and program in missing:
            if (await self.run_helper(sandbox_id, ["have", program])).exit_code != 0:
                raise spawn_failure("noexec", program, request.cwd)
            missing.discard(program)
        tag = secrets.token_hex(8)
        exec_id = await self._exec_create(
            sandbox_id, wrap(list(request.argv), request.cwd, request.merge_stderr, tag),
            user=user, environment=request.env, stdin=request.stdin)
        pump = OutputPump(await self._attach(exec_id), merged=request.merge_stderr, tag=tag)
        try:
            handshake = await asyncio.wait_for(asyncio.shield(pump.handshake),
                                               HANDSHAKE_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError):
            await pump.close()
            raise
        if not handshake.startswith("pid "):
            await pump.close()
            if handshake == "noexec" and cacheable:
                missing.add(program)
            raise spawn_failure(handshake, program, request.cwd)
        processes = self._processes.setdefault(sandbox_id, set())

        async def inspect() -> dict[str, Any]:
            try:
                info: dict[str, Any] = await self.engine.call(self.engine.api.exec_inspect,
                                                              exec_id)
            except NotFound:
                return {}
            return info

        async def signaller(pgid: int, sig: int) -> bool:
            return await self.signal_group(sandbox_id, pgid, sig)

        words = handshake.split()
        process = ExecProcess(pump, int(words[1]), inspect, signaller,
                              on_exit=processes.discard, stdin=request.stdin,
                              piped="piped" in words[2:])
        processes.add(process)
        return process

    async def signal_group(self, sandbox_id: str, pgid: int, sig: int) -> bool:
        """`kill -<sig> -<pgid>` inside the container, as root; a gone group is fine.

        A paused container runs nothing, not even `kill`: the signal is then queued and
        sent on resume, and False tells the caller it has not arrived yet."""
        try:
            attrs = await self._attrs(sandbox_id)
        except SandboxMissing:
            return True  # the container is gone, and with it the group
        state = attrs.get("State") or {}
        if state.get("Paused"):
            self._pending_signals.setdefault(sandbox_id, []).append((pgid, sig))
            return False
        if not state.get("Running"):
            return True
        try:
            await self.run_helper(sandbox_id, ["kill", str(int(sig)), str(int(pgid))])
        except (RuntimeFailure, OSError) as error:
            log.warning("signal %s to group %s of sandbox %s failed: %s", sig, pgid, sandbox_id,
                        error)
            return False
        return True

    async def _agent(self, sandbox_id: str) -> Agent:
        exec_id = await self._exec_create(sandbox_id, AGENT_ARGV, user="0", stdin=True,
                                          environment=AGENT_ENV)
        stream = await self._attach(exec_id)
        return Agent(stream, stream.write)

    async def run_helper(self, sandbox_id: str, args: list[str], *, payload: bytes = b"",
                         limit_seconds: float = 120.0) -> HelperResult:
        """One operation of `helpers.OPERATIONS`, as root, through the sandbox's agents
        (or a one-off exec for an argument the agent's line protocol cannot carry; a
        `payload` for `write` needs the agent)."""
        if sandbox_id not in self._sandboxes:
            raise SandboxMissing(sandbox_id)
        if not agent_can_carry(args):
            if payload:
                raise ValueError("a helper payload needs arguments the agent can carry")
            return await self._run_once(sandbox_id, one_shot_argv(args), limit_seconds)
        pool = self._agents.get(sandbox_id)
        if pool is None:
            pool = self._agents[sandbox_id] = AgentPool(lambda: self._agent(sandbox_id))
        try:
            async with asyncio.timeout(limit_seconds):
                return await pool.call(args, payload)
        except AgentGone:
            if payload:
                raise HelperFailed(sandbox_id, f"the helper of sandbox {sandbox_id} ended while "
                                   "receiving a file; is the sandbox still running?") from None
            # The agent died under the call (the container stopped or restarted, say);
            # a one-off exec either works or says why it cannot.
            return await self._run_once(sandbox_id, one_shot_argv(args), limit_seconds)
        except TimeoutError as error:
            raise TimedOut(limit_seconds, f"a helper in sandbox {sandbox_id} did not answer "
                                          f"within {limit_seconds:.0f} s; is the sandbox "
                                          "paused?") from error

    async def _run_once(self, sandbox_id: str, argv: list[str],
                        limit_seconds: float) -> HelperResult:
        exec_id = await self._exec_create(sandbox_id, argv, user="0")
        stream = await self._attach(exec_id)
        out = bytearray()
        err = bytearray()
        buffer = bytearray()
        try:
            async with asyncio.timeout(limit_seconds):
                while True:
                    data = await stream.read(65536)
                    if not data:
                        break
                    buffer += data
                    while len(buffer) >= 8:
                        size = int.from_bytes(buffer[4:8], "big")
                        if len(buffer) < 8 + size:
                            break
                        (err if buffer[0] == 2 else out).extend(buffer[8:8 + size])
                        del buffer[:8 + size]
                code = None
                delay = 0.005
                while code is None:
                    info = await self.engine.call(self.engine.api.exec_inspect, exec_id)
                    if not info.get("Running"):
                        code = info.get("ExitCode")
                    else:
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 0.2)
        except NotFound as error:
            raise SandboxMissing(sandbox_id) from error
        finally:
            await stream.close()
        return HelperResult(int(code or 0), bytes(out), bytes(err))

    # --- ports and metrics -----------------------------------------------------------------

    async def port_address(self, sandbox_id: str, port: int) -> tuple[str, int]:
        """The container's address on its network when something listens there; else (an
        application bound to the container's loopback) a relay on the server's loopback."""
        if self.network == "host":
            await self._attrs(sandbox_id)
            return "127.0.0.1", port
        networks = ((await self._attrs(sandbox_id)).get("NetworkSettings") or {}).get(
            "Networks") or {}
        address = (networks.get(self.network) or {}).get("IPAddress")
        if not address:  # joined by hand to another network, say
            address = next((n.get("IPAddress") for n in networks.values()
                            if n.get("IPAddress")), None)
        if not address:
            raise NoNetworkAddress(sandbox_id, self.network)
        if await _accepts(address, port):
            return address, port
        relays = self._relays.setdefault(sandbox_id, {})
        if port not in relays:
            relay = LoopbackRelay(port, lambda p: self._open_relay(sandbox_id, p))
            relays[port] = (relay, await relay.start())
        return "127.0.0.1", relays[port][1]

    async def _open_relay(self, sandbox_id: str, port: int) -> RawStream:
        exec_id = await self._exec_create(sandbox_id, relay_argv(port), stdin=True,
                                          environment=RELAY_ENV)
        return await self._attach(exec_id)

    async def _close_relays(self, sandbox_id: str) -> None:
        for relay, _ in self._relays.pop(sandbox_id, {}).values():
            await relay.close()

    async def _cpu_sample(self, sandbox_id: str) -> tuple[CpuSample, dict[str, Any]]:
        name = labels.container_name(sandbox_id)
        try:
            stats = await self.engine.call(self.engine.api.stats, name, stream=False,
                                           one_shot=True)
        except NotFound as error:
            raise SandboxMissing(sandbox_id) from error
        except APIError as error:
            raise QueryFailed(sandbox_id, f"Reading the stats of sandbox {sandbox_id} failed: "
                              f"{_explain(error)}") from error
        cpu = stats.get("cpu_stats") or {}
        sample = CpuSample(at=time.monotonic(),
                           cpu_ns=int((cpu.get("cpu_usage") or {}).get("total_usage") or 0),
                           system_ns=cpu.get("system_cpu_usage"))
        return sample, stats

    async def usage(self, sandbox_id: str) -> ResourceUsage:
        """From one-shot stats (no 1 s sampling wait): CPU is the usage between this sample
        and the previous one of the same sandbox; the first call takes two, 0.2 s apart."""
        attrs = await self._attrs(sandbox_id)
        current, stats = await self._cpu_sample(sandbox_id)
        previous = self._cpu_samples.get(sandbox_id)
        if previous is None or current.at - previous.at > 10:
            await asyncio.sleep(0.2)
            previous = current
            current, stats = await self._cpu_sample(sandbox_id)
        self._cpu_samples[sandbox_id] = current
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

    def filesystem(self, sandbox_id: str) -> SandboxFilesystem:
        if sandbox_id not in self._sandboxes:
            raise SandboxMissing(sandbox_id)
        from opensandbox_emulator.runtimes.docker.filesystem import DockerFilesystem

        return DockerFilesystem(self, sandbox_id, self._homes.get(sandbox_id, "/root"))


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


def _with_expiry(spec: SandboxSpec, when: datetime | None) -> SandboxSpec:
    from dataclasses import replace

    return replace(spec, expires_at=when)


def _explain(error: APIError) -> str:
    return str(error.explanation or error).strip()


__all__ = ["DockerRuntime"]
