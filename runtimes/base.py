"""The contract between the server and a runtime.

A runtime provisions sandboxes and runs processes inside them. The lifecycle service uses
`create`/`pause`/`resume`/`destroy`/`inspect`, the snapshot methods and
`entrypoint_output`; the embedded execd uses `spawn`, `usage` and (for files) `filesystem`;
the access layer reaches a sandbox's ports with `connect`. Nothing here mentions HTTP:
failures are the small classes of `failures.py`, which carry facts; the server decides what
a client sees.
"""

from __future__ import annotations

import enum
import signal as signals
import socket
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

from opensandbox_emulator.runtimes.egress.policy import EgressPolicy
from opensandbox_emulator.runtimes.failures import (
    BadEnvironmentName,
    EgressUnenforceable,
    NulInArgument,
    Unsupported,
    VolumeNotFound,
    VolumesUnsupported,
)
from opensandbox_emulator.runtimes.filesystem import SandboxFilesystem

DEFAULT_ENV_FILE = "/opt/opensandbox/.env"  # where upstream's bootstrap puts EXECD_ENVS


# --- what a sandbox is made from ---------------------------------------------------------------


@dataclass(frozen=True)
class VolumeMount:
    """One volume of the create request, already validated by the server.

    `source` is the resolved host directory for `host` volumes (subPath applied, symlinks
    resolved) and the claim name for `pvc` volumes (the runtime resolves it).
    """

    name: str
    kind: str  # "host" | "pvc"
    source: str
    mount_path: str
    read_only: bool = False
    sub_path: str | None = None
    create_if_missing: bool = False  # pvc: make the named volume when it does not exist
    delete_with_sandbox: bool = False  # pvc: remove it with the sandbox, if made for it


@dataclass(frozen=True)
class SandboxSpec:
    """What a sandbox is made from. With `snapshot_id` its files start as that snapshot
    holds them (`image` then names what the runtime runs it from, if anything).
    `owned_volumes` are named volumes made for this sandbox, removed with it."""

    sandbox_id: str
    image: str
    entrypoint: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    resource_limits: Mapping[str, str] = field(default_factory=dict)
    volumes: Sequence[VolumeMount] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    expires_at: datetime | None = None
    image_auth: tuple[str, str] | None = None
    snapshot_id: str | None = None
    platform: tuple[str, str] | None = None  # (os, arch) when the request named one
    owned_volumes: Sequence[str] = ()
    extensions: Mapping[str, str] = field(default_factory=dict)
    # The token a secured sandbox's callers send (OpenSandbox-Secure-Access), kept here so
    # that a runtime whose sandboxes outlive the server keeps it too.
    secure_access_token: str | None = None
    # The egress policy to enforce from the start (None: unrestricted, `networkPolicy`
    # left out), and the token callers of the egress API send (OPENSANDBOX-EGRESS-AUTH).
    network_policy: EgressPolicy | None = None
    egress_token: str | None = None


@dataclass(frozen=True)
class SnapshotSpec:
    """A snapshot of a sandbox's files, as the runtime stores it (and finds it again after
    a restart)."""

    snapshot_id: str
    sandbox_id: str
    name: str | None
    created_at: datetime


@dataclass(frozen=True)
class StoredSnapshot:
    """A snapshot the runtime holds; `complete` is False when its capture was cut short
    (the server stopped half-way), so it cannot be restored."""

    spec: SnapshotSpec
    complete: bool = True


@dataclass(frozen=True)
class EntrypointOutput:
    """The newest bytes the sandbox's entrypoint wrote (stdout and stderr in write order,
    or as the runtime keeps them); `dropped` bytes before them are gone."""

    data: bytes
    dropped: int = 0


# --- what a runtime reports ----------------------------------------------------------------


class Phase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    EXITED = "exited"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class RuntimeStatus:
    phase: Phase
    exit_code: int | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: an exit code, or the signal that killed it. `reason` says why
    when the runtime knows more than the signal (the kernel's OOM killer, say)."""

    code: int | None = None
    signal: int | None = None
    reason: str | None = None

    @property
    def exit_code(self) -> int:
        """The code execd reports: the exit code, or -1 for a signal (as Go does)."""
        return -1 if self.code is None else self.code

    @property
    def description(self) -> str:
        """Go's `ProcessState.String()` wording, which execd puts in `error`."""
        if self.signal is not None:
            names = {signals.SIGKILL: "killed", signals.SIGTERM: "terminated",
                     signals.SIGINT: "interrupt", signals.SIGHUP: "hangup"}
            sig = signals.Signals(self.signal)
            text = f"signal: {names.get(sig, sig.name.lower())}"
            return f"{text} ({self.reason})" if self.reason else text
        return f"exit status {self.code}"


@dataclass(frozen=True)
class ResourceUsage:
    cpu_count: float
    cpu_used_pct: float
    mem_total_mib: float
    mem_used_mib: float


@dataclass(frozen=True)
class TerminalSize:
    """A terminal's size in character cells."""

    cols: int = 80
    rows: int = 24


@dataclass(frozen=True)
class SpawnRequest:
    """A process to start inside a sandbox, in its own process group.

    `env` is added on top of the sandbox's own environment. With `merge_stderr` the process
    writes both streams into `stdout`, in write order (background commands need that).
    With `stdin` the process reads a pipe the caller writes through `SandboxProcess.stdin`
    (a code context's interpreter takes its requests that way); otherwise its stdin is
    empty (`/dev/null`).

    With `terminal` the process runs on a new pseudo-terminal of that size instead of pipes
    (an interactive shell, `vi`, `top`): it leads a new session whose controlling terminal
    that is, with stdin, stdout and stderr all on it. `SandboxProcess.stdout` then reads
    what the terminal shows, `stdin` types into it, and `terminal.resize` changes its size
    (the process gets SIGWINCH); `stderr` is None and `merge_stderr`/`stdin` are implied.
    """

    argv: Sequence[str]
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    uid: int | None = None
    gid: int | None = None
    merge_stderr: bool = False
    stdin: bool = False
    terminal: TerminalSize | None = None


def check_process_inputs(argv: Sequence[str], env: Mapping[str, str],
                         cwd: str | None = None) -> None:
    """Refuse what no `execve` takes, before anything starts: a NUL byte in an argument,
    the working directory or the environment, or an environment name that is empty or
    holds `=`. Raises `NulInArgument` / `BadEnvironmentName` (the server checks requests
    first; this keeps every runtime safe whoever calls it)."""
    if cwd is not None and "\x00" in cwd:
        raise NulInArgument("cwd")
    for index, argument in enumerate(argv):
        if "\x00" in argument:
            raise NulInArgument(f"argv[{index}]")
    for name, value in env.items():
        if not name or "=" in name or "\x00" in name:
            raise BadEnvironmentName(name)
        if "\x00" in value:
            raise NulInArgument(f"env[{name}]")


class ProcessOutput(Protocol):
    async def read(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` bytes, waiting for at least one; `b""` at end of stream."""
        ...


class ProcessInput(Protocol):
    async def write(self, data: bytes) -> None:
        """Write all of `data`, waiting while the pipe is full. Raises `BrokenPipeError`
        (or another `OSError`) once the process is gone."""
        ...

    async def close(self) -> None:
        """Close the pipe: the process reads end-of-file. Idempotent."""
        ...


class ProcessTerminal(Protocol):
    async def resize(self, size: TerminalSize) -> None:
        """Set the terminal's size; the process sees it (`stty size`) and gets SIGWINCH."""
        ...

    async def close(self) -> None:
        """The caller is done with the terminal: hang it up and free it. Idempotent."""
        ...


class SandboxProcess(ABC):
    """A process started with `Runtime.spawn`."""

    stdout: ProcessOutput
    stderr: ProcessOutput | None
    stdin: ProcessInput | None = None  # set when spawned with `SpawnRequest(stdin=True)`
    terminal: ProcessTerminal | None = None  # set when spawned with a `terminal`

    @abstractmethod
    async def wait(self) -> ExitStatus:
        """Wait for the process itself (not its group) to exit."""

    @abstractmethod
    async def signal_group(self, sig: int) -> None:
        """Send `sig` to the process's whole group; a group already gone is not an error."""


# --- the interface -----------------------------------------------------------------------


class Runtime(ABC):
    name: ClassVar[str]

    @property
    def isolation(self) -> str:
        """In a word, how sandboxes are isolated: "container" or "none"."""
        return "none"

    def health(self) -> dict[str, Any]:
        """What `/health` reports about the runtime's isolation, layer by layer:
        `isolation`, `network` and `limits`, each an object with a `mode` first."""
        return {"isolation": {"mode": self.isolation}, "network": {"mode": "host"},
                "limits": {"mode": "none"}}

    @property
    def warnings(self) -> list[str]:
        """Problems worth shouting about at start-up (and in `/health`)."""
        return []

    async def start(self) -> list[SandboxSpec]:
        """Called once when the server starts. Returns the sandboxes the runtime already
        holds (adopted after a restart); the default runtime holds none."""
        return []

    @abstractmethod
    async def close(self) -> None:
        """Stop every sandbox's processes and release what the runtime holds, except what
        must outlive the server (Docker containers survive a restart on purpose)."""

    async def resolve_named_volume(self, claim_name: str, sub_path: str | None) -> str:
        """Check that a `pvc` volume exists (and its subPath); return a description of it.
        Raises `VolumeNotFound` and the other volume failures of `failures.py`."""
        raise VolumeNotFound(claim_name, "This runtime has no named volumes.")

    async def create_named_volume(self, claim_name: str, sub_path: str | None) -> None:
        """Make the named volume `claim_name` (empty), with `sub_path` inside it where the
        runtime can make it; for `pvc.createIfNotExists`."""
        raise VolumesUnsupported(f"The {self.name} runtime cannot create named volumes.")

    async def remove_named_volume(self, claim_name: str) -> None:
        """Remove a named volume this server made (`deleteOnSandboxTermination`); a volume
        already gone is not an error."""
        raise VolumesUnsupported(f"The {self.name} runtime cannot remove named volumes.")

    @abstractmethod
    async def create(self, spec: SandboxSpec) -> None:
        """Provision the sandbox and start its entrypoint as the main process."""

    @abstractmethod
    async def pause(self, sandbox_id: str) -> None:
        """Freeze every process of the sandbox."""

    @abstractmethod
    async def resume(self, sandbox_id: str) -> None:
        """Continue what `pause` froze."""

    @abstractmethod
    async def destroy(self, sandbox_id: str) -> None:
        """Kill every process of the sandbox and remove what it owned. Idempotent."""

    @abstractmethod
    async def inspect(self, sandbox_id: str) -> RuntimeStatus:
        """The sandbox's current phase; raises `SandboxMissing` when it is gone."""

    async def set_expiry(self, sandbox_id: str, expires_at: datetime | None) -> None:  # noqa: B027
        """Record a new expiry where the runtime keeps one (Docker labels); optional."""

    async def set_metadata(self, sandbox_id: str, metadata: Mapping[str, str]) -> None:  # noqa: B027
        """Record the sandbox's new metadata where the runtime keeps it across a restart
        (Docker); optional."""

    async def entrypoint_output(self, sandbox_id: str, max_bytes: int) -> EntrypointOutput:
        """The newest `max_bytes` (at most) of what the entrypoint wrote."""
        raise Unsupported(f"The {self.name} runtime keeps no entrypoint output.")

    # --- snapshots -------------------------------------------------------------------------

    async def stored_snapshots(self) -> list[StoredSnapshot]:
        """The snapshots this runtime already holds (at start-up, after a restart)."""
        return []

    async def capture_snapshot(self, sandbox_id: str, spec: SnapshotSpec) -> None:
        """Store the sandbox's files (not its volumes, processes or memory) as `spec`.
        A running sandbox is frozen while they are read, then continues. Raises
        `SnapshotFailed`, `Unsupported` where the runtime cannot."""
        raise Unsupported(f"The {self.name} runtime cannot snapshot sandboxes.")

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Remove a snapshot and free its storage; one already gone is not an error.
        Raises `SnapshotInUse` when the runtime cannot let it go yet."""
        raise Unsupported(f"The {self.name} runtime cannot snapshot sandboxes.")

    @abstractmethod
    async def spawn(self, sandbox_id: str, request: SpawnRequest) -> SandboxProcess:
        """Start a process inside the sandbox, in its own process group.
        Raises `SpawnFailed` with a message that names what is missing."""

    @abstractmethod
    async def connect(self, sandbox_id: str, port: int) -> socket.socket:
        """A TCP connection to the sandbox's `port`, as a client inside the sandbox would
        open it (`127.0.0.1:<port>`, so applications bound to loopback are reached too).
        The socket is connected and non-blocking; the caller owns it. Raises
        `PortUnreachable` when nothing accepts there, `SandboxMissing`."""

    # --- egress ------------------------------------------------------------------------

    def egress_problem(self) -> str | None:
        """None when this runtime enforces egress policies, else why it cannot (a create
        with `networkPolicy` is then refused with that reason)."""
        return f"the {self.name} runtime does not enforce egress policies"

    def require_egress(self) -> None:
        """Raise `EgressUnenforceable` (with `egress_problem()`'s reason) unless this
        runtime enforces egress policies now."""
        problem = self.egress_problem()
        if problem is not None:
            raise EgressUnenforceable(problem)

    def egress_health(self) -> dict[str, Any]:
        """What `/health` says about egress enforcement."""
        problem = self.egress_problem()
        return {"enforced": False, "reason": problem} if problem else {"enforced": True}

    async def egress_policy(self, sandbox_id: str) -> EgressPolicy | None:
        """The policy the sandbox's egress is under; None for unrestricted (created without
        one and never given one). Raises `SandboxMissing`."""
        return None

    async def apply_egress(self, sandbox_id: str, policy: EgressPolicy) -> None:
        """Enforce `policy` on the sandbox from now on (new connections and DNS queries),
        starting enforcement if it had none. Raises `EgressUnenforceable`, `EgressFailed`
        (the previous policy then stays), `SandboxMissing`."""
        self.require_egress()
        raise EgressUnenforceable("not supported")

    @abstractmethod
    async def usage(self, sandbox_id: str) -> ResourceUsage:
        """CPU and memory of the sandbox's own processes, against what it may use."""

    def environment(self, sandbox_id: str) -> Mapping[str, str]:
        """The environment every process of the sandbox starts with (the image's and the
        create request's variables), as far as the runtime knows it."""
        return {}

    def env_file(self, sandbox_id: str) -> str:
        """Where the sandbox's env file (`EXECD_ENVS`) is, as a sandbox path. The runtime
        creates it with the sandbox and sets `EXECD_ENVS` to it for every process."""
        return self.environment(sandbox_id).get("EXECD_ENVS") or DEFAULT_ENV_FILE

    def filesystem(self, sandbox_id: str) -> SandboxFilesystem:
        """The sandbox's files as its processes see them (execd's /files and /directories).
        Raises `SandboxMissing`."""
        raise Unsupported(f"The {self.name} runtime gives no access to sandbox files.")
