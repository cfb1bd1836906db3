"""`DockerRuntime`: each sandbox is a container of a real image on a Docker engine.

Nothing is installed into the image: the embedded execd runs in the server and reaches
into the container through the engine (exec for commands, archive and small exec'd
helpers for files, stats for metrics). The engine is the source of truth for the state of a
sandbox: `inspect` reads it on every call, so a container that died or was removed behind
the server's back shows as Terminated, Failed or gone (`SandboxMissing`).

Restart safety: containers carry their sandbox in labels (`labels.py`) and outlive the
server. At start-up the runtime hands back every container of its `[docker] instance`, with
creation and expiry times restored, and the lifecycle service re-arms the expiry (removing
those already expired). `close()` releases the server's connections only.

What the runtime keeps for each sandbox is one `DockerSandbox` (`sandbox.py`). The rest of
the work is done by one module a job: `containers.py` (image and create options),
`execs.py` (processes, helper operations, signals), `ports.py` (reaching a sandbox's
ports), `stats.py` (metrics) and `filesystem.py` (files); `engine.py` is the only one that
speaks the engine's HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from docker.errors import APIError, NotFound
from docker.types import Mount

from opensandbox_emulator.runtimes.base import (
    EntrypointOutput,
    Phase,
    ResourceUsage,
    Runtime,
    RuntimeStatus,
    SandboxProcess,
    SandboxSpec,
    SnapshotSpec,
    SpawnRequest,
    StoredSnapshot,
    check_process_inputs,
)
from opensandbox_emulator.runtimes.docker import labels, snapshots
from opensandbox_emulator.runtimes.docker.containers import (
    container_options,
    create_env_file,
    creation_failure,
    ensure_image,
)
from opensandbox_emulator.runtimes.docker.egress import PolicyStore, namespace_path, open_gate
from opensandbox_emulator.runtimes.docker.engine import Engine, explain, wrong_state
from opensandbox_emulator.runtimes.docker.execs import send_pending_signals, spawn_process
from opensandbox_emulator.runtimes.docker.expiry import (
    ExpiryStore,
    MetadataStore,
    default_state_dir,
)
from opensandbox_emulator.runtimes.docker.filesystem import DockerFilesystem
from opensandbox_emulator.runtimes.docker.logs import entrypoint_output
from opensandbox_emulator.runtimes.docker.ports import connect
from opensandbox_emulator.runtimes.docker.sandbox import DockerSandbox, inspect_container
from opensandbox_emulator.runtimes.docker.settings import DockerSettings
from opensandbox_emulator.runtimes.docker.stats import usage
from opensandbox_emulator.runtimes.docker.volumes import (
    create_volume,
    named_volume,
    remove_volume,
    sub_path_source,
    to_mount,
)
from opensandbox_emulator.runtimes.egress.enforcement import (
    EgressEnforcer,
    EgressSettings,
    SandboxEgress,
)
from opensandbox_emulator.runtimes.egress.policy import EgressPolicy
from opensandbox_emulator.runtimes.failures import (
    NetworkNotFound,
    PauseFailed,
    RemoveFailed,
    ResumeFailed,
    RuntimeFailure,
    SandboxMissing,
    StartFailed,
)
from opensandbox_emulator.runtimes.limits import parse_limits

log = logging.getLogger("opensandbox.runtime.docker")


class DockerRuntime(Runtime):
    name = "docker"

    def __init__(self, *, settings: DockerSettings | None = None, engine: Engine | None = None,
                 egress: EgressSettings | None = None):
        settings = settings or DockerSettings()
        self.settings = settings
        self.network = settings.network_mode or "bridge"
        self.engine = engine or Engine()
        self.expiry = ExpiryStore(settings.state_dir or default_state_dir(), settings.instance)
        self.metadata = MetadataStore(settings.state_dir or default_state_dir(),
                                      settings.instance)
        self.policies = PolicyStore(settings.state_dir or default_state_dir(),
                                    settings.instance)
        self.egress = EgressEnforcer(egress)
        self._engine_out_of_sight = False
        self._sandboxes: dict[str, DockerSandbox] = {}
        # Egress: the enforcement of each sandbox that has a policy, and the policies of
        # adopted sandboxes whose enforcement could not be started again (fail closed).
        self._egress: dict[str, SandboxEgress] = {}
        self._unenforced: dict[str, EgressPolicy] = {}
        self._host_cpus = float(os.cpu_count() or 1)

    @property
    def isolation(self) -> str:
        return "docker"

    def health(self) -> dict[str, Any]:
        return {"isolation": {"mode": "docker"}, "network": {"mode": self.network},
                "limits": {"mode": "docker", "memory": True, "cpu": True,
                           "pids": self.settings.pids_limit, "pause": "docker pause"}}

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
        await self.metadata.load()
        await self.policies.load()
        await asyncio.to_thread(self.egress.problem)
        self._engine_out_of_sight = await self.engine.call(self.engine.engine_out_of_sight)
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
            patched = self.metadata.get(sandbox_id)
            if patched is not None:
                spec = replace(spec, metadata=patched)
            policy = self.policies.get(sandbox_id) or spec.network_policy
            spec = replace(spec, network_policy=policy)
            specs.append(spec)
            self._track(sandbox_id, container.attrs)
            if policy is not None:
                await self._enforce_adopted(sandbox_id, policy)
        await self.expiry.forget(keep_only=set(self._sandboxes))
        await self.metadata.forget(keep_only=set(self._sandboxes))
        await self.policies.forget(keep_only=set(self._sandboxes))
        if specs:
            log.info("adopted %d sandbox container(s) of instance %r", len(specs),
                     self.settings.instance)
        return specs

    async def close(self) -> None:
        """Stop reading the outputs of running execs and drop the engine connection. The
        containers stay (restart safety); so do the commands running in them."""
        for sandbox_id in list(self._sandboxes):
            await self._forget(sandbox_id)
        self.egress.close()
        await self.engine.close()

    # --- the sandboxes this runtime holds ------------------------------------------------

    def _track(self, sandbox_id: str, attrs: dict[str, Any]) -> DockerSandbox:
        """The one place a `DockerSandbox` is made: a container created or adopted."""
        sandbox = self._sandboxes[sandbox_id] = DockerSandbox.from_attrs(sandbox_id, attrs)
        return sandbox

    async def _forget(self, sandbox_id: str) -> None:
        """The one place a `DockerSandbox` is dropped (and what it holds released)."""
        sandbox = self._sandboxes.pop(sandbox_id, None)
        if sandbox is not None:
            await sandbox.close()
        # The rules stay in the container's namespace: it keeps refusing what its policy
        # refuses while no server holds it.
        egress = self._egress.pop(sandbox_id, None)
        if egress is not None:
            await egress.close()
        self._unenforced.pop(sandbox_id, None)

    def _sandbox(self, sandbox_id: str) -> DockerSandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            raise SandboxMissing(sandbox_id)
        return sandbox

    # --- provisioning ------------------------------------------------------------------------

    async def resolve_named_volume(self, claim_name: str, sub_path: str | None) -> str:
        volume = await named_volume(self.engine, claim_name)
        if sub_path:
            return sub_path_source(volume, sub_path)
        return volume.name

    async def create_named_volume(self, claim_name: str, sub_path: str | None) -> None:
        await create_volume(self.engine, claim_name, sub_path)

    async def remove_named_volume(self, claim_name: str) -> None:
        await remove_volume(self.engine, claim_name)

    async def create(self, spec: SandboxSpec) -> None:
        check_process_inputs(spec.entrypoint, spec.env)
        if spec.network_policy is not None:
            self.require_egress()
        if spec.snapshot_id is not None:
            spec = replace(spec, image=await snapshots.require(self.engine, spec.snapshot_id))
        limits = parse_limits(spec.resource_limits)
        mounts: list[Mount] = []
        for volume in spec.volumes:
            named = await named_volume(self.engine, volume.source) \
                if volume.kind == "pvc" else None
            mounts.append(to_mount(volume, named))
        await ensure_image(self.engine, spec)
        options = container_options(spec, self.settings, limits, mounts, self._host_cpus)
        try:
            container = await self.engine.call(self.engine.client.containers.create,
                                               spec.image, **options)
        except APIError as error:
            raise creation_failure(error) from error
        self._track(spec.sandbox_id, container.attrs)
        try:
            await create_env_file(self.engine, container.id, self.env_file(spec.sandbox_id))
            await self.engine.call(container.start)
            if spec.network_policy is not None:
                await self._enforce(spec.sandbox_id, spec.network_policy)
                await open_gate(self.engine, container.id)
        except (APIError, RuntimeFailure) as error:
            with contextlib.suppress(APIError):
                await self.engine.call(container.remove, force=True)
            await self._forget(spec.sandbox_id)
            if isinstance(error, RuntimeFailure):
                raise
            raise StartFailed(f"Failed to create or start container: {explain(error)}") \
                from error

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
        await self.metadata.forget({sandbox_id})
        await self.policies.forget({sandbox_id})

    async def set_expiry(self, sandbox_id: str, expires_at: datetime | None) -> None:
        await self.expiry.set(sandbox_id, expires_at)

    async def set_metadata(self, sandbox_id: str, metadata: Mapping[str, str]) -> None:
        await self.metadata.set(sandbox_id, dict(metadata))

    async def entrypoint_output(self, sandbox_id: str, max_bytes: int) -> EntrypointOutput:
        return await entrypoint_output(self.engine, self._sandbox(sandbox_id), max_bytes)

    # --- snapshots -----------------------------------------------------------------------------

    async def stored_snapshots(self) -> list[StoredSnapshot]:
        return await snapshots.stored(self.engine, self.settings.instance)

    async def capture_snapshot(self, sandbox_id: str, spec: SnapshotSpec) -> None:
        self._sandbox(sandbox_id)
        await snapshots.commit(self.engine, sandbox_id, spec, self.settings.instance)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await snapshots.remove(self.engine, snapshot_id)

    # --- egress ------------------------------------------------------------------------------

    def egress_problem(self) -> str | None:
        if self.network == "host":
            return ("[docker] network_mode is \"host\": sandboxes share the host's network, "
                    "whose traffic cannot be filtered for one sandbox (use \"bridge\")")
        if self._engine_out_of_sight:
            return ("the server runs in a container of its own (docker compose, say), from "
                    "where it cannot enter its sandboxes' network namespaces; run it on the "
                    "engine's host, as root")
        return self.egress.problem()

    def egress_health(self) -> dict[str, Any]:
        return self.egress.health(self.egress_problem(), how=(
            "nftables rules in the container's network namespace and a DNS forwarder, both "
            "held by the server (no sidecar, no NET_ADMIN)"))

    async def egress_policy(self, sandbox_id: str) -> EgressPolicy | None:
        self._sandbox(sandbox_id)
        egress = self._egress.get(sandbox_id)
        return egress.policy if egress is not None else self._unenforced.get(sandbox_id)

    async def apply_egress(self, sandbox_id: str, policy: EgressPolicy) -> None:
        self._sandbox(sandbox_id)
        egress = self._egress.get(sandbox_id)
        if egress is not None:
            await egress.apply(policy)
        else:
            self.require_egress()
            await self._enforce(sandbox_id, policy)
        await self.policies.set(sandbox_id, policy)

    async def _enforce(self, sandbox_id: str, policy: EgressPolicy) -> None:
        """Start enforcing `policy` in the (running) container's network namespace."""
        attrs = await inspect_container(self.engine, sandbox_id)
        egress = await self.egress.attach(namespace_path(attrs), policy)
        if sandbox_id not in self._sandboxes:  # deleted meanwhile
            await egress.close()
            raise SandboxMissing(sandbox_id)
        self._egress[sandbox_id] = egress
        self._unenforced.pop(sandbox_id, None)

    async def _enforce_adopted(self, sandbox_id: str, policy: EgressPolicy) -> None:
        """Put an adopted sandbox's policy back in force. Where that fails its rules still
        refuse what they refused (they outlived the server); only its names do not resolve
        until a policy change succeeds."""
        try:
            self.require_egress()
            if (await self.inspect(sandbox_id)).phase in (Phase.RUNNING, Phase.PAUSED):
                await self._enforce(sandbox_id, policy)
                return
        except RuntimeFailure as error:
            log.error("sandbox %s: its egress policy is not enforced again after the "
                      "restart: %s", sandbox_id, error.message)
        self._unenforced[sandbox_id] = policy

    # --- processes ---------------------------------------------------------------------------

    async def spawn(self, sandbox_id: str, request: SpawnRequest) -> SandboxProcess:
        check_process_inputs(request.argv, request.env, request.cwd)
        return await spawn_process(self.engine, self._sandbox(sandbox_id), request)

    # --- ports and metrics -----------------------------------------------------------------

    async def connect(self, sandbox_id: str, port: int) -> socket.socket:
        return await connect(self.engine, self._sandbox(sandbox_id), self.network, port)

    async def usage(self, sandbox_id: str) -> ResourceUsage:
        return await usage(self.engine, self._sandbox(sandbox_id), self._host_cpus)

    # --- files ---------------------------------------------------------------------------------

    def environment(self, sandbox_id: str) -> dict[str, str]:
        return dict(self._sandbox(sandbox_id).environment)

    def filesystem(self, sandbox_id: str) -> DockerFilesystem:
        return DockerFilesystem(self._sandbox(sandbox_id), self.engine)


__all__ = ["DockerRuntime"]
