"""`DockerSandbox`: what the Docker runtime keeps for one sandbox, in one object.

The container itself lives on the engine; this is the server's side of it: the execs it
reads, the helper agents, the relays to loopback ports, the mount table and the last CPU
sample. `DockerRuntime` makes one when a sandbox is created or adopted and forgets it when
the sandbox is destroyed or the server stops, and `close` releases all it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from docker.errors import APIError, NotFound

from opensandbox_emulator.runtimes.docker import labels
from opensandbox_emulator.runtimes.docker.engine import Engine, explain
from opensandbox_emulator.runtimes.docker.helpers import AgentPool
from opensandbox_emulator.runtimes.docker.mounts import MountEntry
from opensandbox_emulator.runtimes.docker.processes import ExecProcess
from opensandbox_emulator.runtimes.docker.relay import LoopbackRelay
from opensandbox_emulator.runtimes.failures import QueryFailed, SandboxMissing


@dataclass(frozen=True)
class CpuSample:
    at: float  # monotonic seconds
    cpu_ns: int
    system_ns: int | None


@dataclass(eq=False)
class DockerSandbox:
    sandbox_id: str
    # The container's Config.Env (the image's and the create request's variables), with
    # the HOME the engine gives its processes when the image sets none.
    environment: dict[str, str] = field(default_factory=dict)
    processes: set[ExecProcess] = field(default_factory=set)
    agents: AgentPool | None = None  # made on the first helper operation
    # Sandbox port: its relay and the relay's port on the server's loopback.
    relays: dict[int, tuple[LoopbackRelay, int]] = field(default_factory=dict)
    mounts: list[MountEntry] | None = None  # read on the first file operation
    cpu_sample: CpuSample | None = None
    # Signals sent while the container was paused (it runs nothing, not even `kill`): sent
    # on resume, as (process group, signal).
    pending_signals: list[tuple[int, int]] = field(default_factory=list)
    # Programs a spawn found missing (bash in a busybox image, say): checked again through
    # an agent (~1 ms) instead of another exec (~40 ms) before each retry.
    missing_programs: set[str] = field(default_factory=set)
    closed: bool = False

    @classmethod
    def from_attrs(cls, sandbox_id: str, attrs: dict[str, Any]) -> DockerSandbox:
        pairs = (attrs.get("Config") or {}).get("Env") or []
        environment = dict(item.partition("=")[::2] for item in pairs)
        environment.setdefault("HOME", "/root")  # root's, as the sandbox runs as root
        return cls(sandbox_id, environment=environment)

    @property
    def home(self) -> str:
        """HOME of the container's root user, for `~` in file paths."""
        return self.environment.get("HOME") or "/root"

    @property
    def container(self) -> str:
        return labels.container_name(self.sandbox_id)

    async def close(self) -> None:
        """Stop reading its execs and drop its agents and relays. The container and the
        commands running in it are left alone."""
        self.closed = True
        for process in list(self.processes):
            await process.close()
        self.processes.clear()
        agents, self.agents = self.agents, None
        if agents is not None:
            await agents.close()
        relays, self.relays = self.relays, {}
        for relay, _ in relays.values():
            await relay.close()


async def inspect_container(engine: Engine, sandbox_id: str) -> dict[str, Any]:
    """The engine's view of the sandbox's container; `SandboxMissing` when there is none
    (or the container of that name is not this sandbox's)."""
    try:
        attrs = await engine.inspect_container(labels.container_name(sandbox_id))
    except NotFound as error:
        raise SandboxMissing(sandbox_id) from error
    except APIError as error:
        raise QueryFailed(sandbox_id, f"Inspecting sandbox {sandbox_id} failed: "
                                      f"{explain(error)}") from error
    if (attrs.get("Config", {}).get("Labels") or {}).get(labels.ID) != sandbox_id:
        raise SandboxMissing(sandbox_id)
    return attrs
