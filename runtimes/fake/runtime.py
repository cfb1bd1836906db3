"""`FakeRuntime`: sandboxes as containers of this host's system, kept in memory.

Each sandbox gets a private root directory under the state directory and a container of its
own (see `launch.py` and `oci.py`): its own user, PID, mount, network, IPC, UTS and cgroup
namespaces, Docker's default capabilities and seccomp profile, cgroup limits, and a network
with a way out through slirp4netns. Its first process is an init of ours, which starts every
other process of the sandbox (the entrypoint, execd commands, code interpreters) inside those
namespaces on the server's request, and hands back connections to the sandbox's ports.

How much of that a host allows is decided at start-up (`isolation.py`); without any of it,
processes run directly on the host with no isolation, and the runtime says so loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opensandbox_emulator.runtimes.base import (
    DEFAULT_ENV_FILE,
    EntrypointOutput,
    ExitStatus,
    Phase,
    ProcessOutput,
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
from opensandbox_emulator.runtimes.egress.enforcement import (
    EgressEnforcer,
    EgressSettings,
    SandboxEgress,
)
from opensandbox_emulator.runtimes.egress.policy import EgressPolicy
from opensandbox_emulator.runtimes.failures import (
    EntrypointNotFound,
    ExecutableNotFound,
    InvalidArgument,
    PortUnreachable,
    RuntimeFailure,
    SandboxMissing,
    SpawnFailed,
    StartFailed,
    SubPathNotFound,
    SubPathOutside,
    Unavailable,
    Unsupported,
    VolumeNotFound,
    VolumesUnsupported,
)
from opensandbox_emulator.runtimes.fake import sandbox_init as wire
from opensandbox_emulator.runtimes.fake.control import ChannelClosed, InitFailure
from opensandbox_emulator.runtimes.fake.filesystem import FakeFilesystem
from opensandbox_emulator.runtimes.fake.isolation import Plan, normalise, plan
from opensandbox_emulator.runtimes.fake.launch import (
    Box,
    Launcher,
    LaunchFailed,
    LaunchRequest,
    remove_directories,
)
from opensandbox_emulator.runtimes.fake.layout import Mount
from opensandbox_emulator.runtimes.fake.oci import Resources
from opensandbox_emulator.runtimes.fake.offered import OfferedFiles
from opensandbox_emulator.runtimes.fake.processes import (
    InitProcess,
    PipeOutput,
    descendants,
    in_namespace_of,
    output_pipe,
    sample,
    write_pipe,
)
from opensandbox_emulator.runtimes.fake.snapshots import SnapshotStore
from opensandbox_emulator.runtimes.fake.terminal import PseudoTerminal, TerminalControl
from opensandbox_emulator.runtimes.limits import parse_limits
from opensandbox_emulator.runtimes.output_tail import OutputTail

log = logging.getLogger("opensandbox.runtime.fake")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENTRYPOINT_OUTPUT_BYTES = 1024 * 1024  # the newest output of an entrypoint kept, for diagnostics
DEFAULT_PIDS_LIMIT = 512
READ_SIZE = 64 * 1024  # bytes of an entrypoint's output read at once
# Files of /etc that name the sandbox: a restored sandbox keeps its own, not its source's.
IDENTITY_FILES = ("hostname", "hosts", "resolv.conf")


@dataclass
class FakeSandbox:
    spec: SandboxSpec
    directory: str
    box: Box
    env: dict[str, str]
    resources: Resources
    main: InitProcess | None = None
    exit: ExitStatus | None = None
    finished_at: datetime | None = None
    paused: bool = False
    watcher: asyncio.Task[None] | None = None
    cpu_sample: tuple[float, float] | None = None  # (wall seconds, cpu seconds)
    output: OutputTail = field(default_factory=lambda: OutputTail(ENTRYPOINT_OUTPUT_BYTES))
    egress: SandboxEgress | None = None  # its egress policy's enforcement, if it has one


class FakeRuntime(Runtime):
    name = "fake"

    def __init__(self, *, state_dir: str | None = None, volumes_root: str | None = None,
                 isolation: str = "auto", pids_limit: int | None = DEFAULT_PIDS_LIMIT,
                 egress: EgressSettings | None = None,
                 offered_files: Mapping[str, str] | None = None):
        """`offered_files`: sandbox path -> host file, files every sandbox sees read-only
        (see `offered.py`)."""
        normalise(isolation)  # a bad level fails here, before anything is created
        self._own_state_dir = state_dir is None
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="opensandbox-emulator-")
        self.volumes_root = volumes_root or os.path.join(self.state_dir, "volumes")
        self._isolation_wanted = isolation
        self._pids_limit = pids_limit or None
        self._plan: Plan | None = None
        self._sandboxes: dict[str, FakeSandbox] = {}
        self.snapshots = SnapshotStore(self.state_dir)
        self._offered_sources = dict(offered_files or {})
        self._offered = OfferedFiles()
        self.egress = EgressEnforcer(egress)

    # --- start-up and shutdown -------------------------------------------------------------

    @property
    def isolation(self) -> str:
        return self._plan.isolation["mode"] if self._plan is not None else "none"

    def health(self) -> dict[str, Any]:
        if self._plan is None:
            return super().health()
        return {"isolation": self._plan.isolation, "network": self._plan.network,
                "limits": self._plan.limits}

    @property
    def warnings(self) -> list[str]:
        return list(self._plan.warnings) if self._plan is not None else []

    async def start(self) -> list[SandboxSpec]:
        os.makedirs(os.path.join(self.state_dir, "sandboxes"), exist_ok=True)
        os.chmod(self.state_dir, 0o711)
        os.makedirs(self.volumes_root, exist_ok=True)
        self._offered = await asyncio.to_thread(OfferedFiles.stage, self.state_dir,
                                                self._offered_sources)
        self._plan = await plan(self._isolation_wanted, self.state_dir,
                                pids_limit=self._pids_limit)
        await asyncio.to_thread(self.egress.problem)  # tried once, now, not at a create
        return []

    @property
    def _launcher(self) -> Launcher:
        if self._plan is None:
            raise Unavailable("the fake runtime has not been started")
        return self._plan.launcher

    async def close(self) -> None:
        sandboxes = list(self._sandboxes.values())
        self._sandboxes.clear()
        await self._teardown(sandboxes)
        if self._plan is not None:
            await self._plan.launcher.close()
        self.egress.close()
        if self._own_state_dir:
            await asyncio.to_thread(shutil.rmtree, self.state_dir, True)

    # --- provisioning --------------------------------------------------------------------

    async def resolve_named_volume(self, claim_name: str, sub_path: str | None) -> str:
        base = os.path.join(self.volumes_root, claim_name)
        if not os.path.isdir(base):
            raise VolumeNotFound(
                claim_name, f"Named volume '{claim_name}' does not exist. Create the directory "
                f"{base} (the fake runtime's volumes root) first.")
        if not sub_path:
            return base
        target = os.path.realpath(os.path.join(base, sub_path))
        if not (target == os.path.realpath(base) or
                target.startswith(os.path.realpath(base) + "/")):
            raise SubPathOutside(sub_path, f"subPath '{sub_path}' escapes volume '{claim_name}'.")
        if not os.path.isdir(target):
            raise SubPathNotFound(sub_path, f"subPath '{sub_path}' does not exist in volume "
                                  f"'{claim_name}'.")
        return target

    async def create_named_volume(self, claim_name: str, sub_path: str | None) -> None:
        base = os.path.join(self.volumes_root, claim_name)
        os.makedirs(base, exist_ok=True)
        if sub_path:
            await self.resolve_named_volume(claim_name, None)
            target = os.path.realpath(os.path.join(base, sub_path))
            if target.startswith(os.path.realpath(base) + "/"):
                os.makedirs(target, exist_ok=True)

    async def remove_named_volume(self, claim_name: str) -> None:
        await asyncio.to_thread(shutil.rmtree, os.path.join(self.volumes_root, claim_name), True)

    async def create(self, spec: SandboxSpec) -> None:
        if spec.platform is not None and spec.platform != ("linux", _host_arch()):
            raise InvalidArgument(
                f"platform {spec.platform[0]}/{spec.platform[1]} cannot be satisfied: the fake "
                f"runtime runs sandboxes on this host, which is linux/{_host_arch()}. Leave "
                "platform out, or ask for linux/" + _host_arch() + ".", field="platform")
        if spec.snapshot_id is not None and self.isolation == "none":
            raise Unsupported("Restoring a snapshot needs isolation (a private root to restore "
                              "into), which this server does not have; see GET /health.")
        limits = parse_limits(spec.resource_limits)
        resources = Resources(memory_bytes=limits.memory_bytes, nano_cpus=limits.nano_cpus,
                              pids=self._pids_limit)
        directory = os.path.join(self.state_dir, "sandboxes", spec.sandbox_id)
        volumes = []
        for volume in spec.volumes:
            source = volume.source
            if volume.kind == "pvc":
                source = await self.resolve_named_volume(volume.source, volume.sub_path)
            volumes.append(Mount(volume.mount_path, source, volume.read_only))
        if volumes and self.isolation == "none":
            raise VolumesUnsupported("Volumes need isolation, which this server does not have "
                                     "(see GET /health); drop the volumes or give the server "
                                     "runc.")
        if spec.network_policy is not None:
            self.require_egress()
        hostname = _hostname(spec.sandbox_id)
        try:
            box = await self._launcher.launch(LaunchRequest(
                sandbox_id=spec.sandbox_id, directory=directory, volumes=volumes,
                resources=resources, hostname=hostname, offered=self._offered.mounts))
        except RuntimeFailure:
            await asyncio.to_thread(shutil.rmtree, directory, True)
            raise
        except LaunchFailed as error:
            await asyncio.to_thread(shutil.rmtree, directory, True)
            raise StartFailed(f"Failed to start the sandbox: {error}") from error
        egress = None
        try:
            if spec.snapshot_id is not None:
                await self._restore(spec.snapshot_id, box)
            if spec.network_policy is not None:
                # Before the entrypoint: nothing of the sandbox runs unenforced.
                egress = await self.egress.attach(box.network_namespace or "",
                                                  spec.network_policy)
        except BaseException:
            await self._launcher.end([box])
            await asyncio.to_thread(shutil.rmtree, directory, True)
            raise
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "HOSTNAME": hostname}
        env.update(spec.env)
        env.setdefault("EXECD_ENVS", DEFAULT_ENV_FILE if box.pid_namespace else
                       os.path.join(directory, "opensandbox.env"))
        await asyncio.to_thread(_touch, box, env["EXECD_ENVS"])
        sandbox = FakeSandbox(spec=spec, directory=directory, box=box, env=env,
                              resources=resources, egress=egress)
        self._sandboxes[spec.sandbox_id] = sandbox
        try:
            sandbox.main = await self._start(sandbox, SpawnRequest(argv=list(spec.entrypoint)))
        except BaseException as error:
            # Whatever went wrong, a sandbox that did not start leaves nothing behind.
            await self.destroy(spec.sandbox_id)
            message = f"Failed to start the entrypoint: {getattr(error, 'message', error)}"
            if isinstance(error, ExecutableNotFound):
                raise EntrypointNotFound(error.program, message) from error
            if isinstance(error, SpawnFailed):
                raise StartFailed(message) from error
            raise
        sandbox.watcher = asyncio.create_task(self._watch_main(sandbox))

    async def _watch_main(self, sandbox: FakeSandbox) -> None:
        assert sandbox.main is not None
        main = sandbox.main

        # The entrypoint's output is read as it comes (so it never blocks on a pipe) and its
        # newest bytes kept for diagnostics.
        async def drain(stream: ProcessOutput | None) -> None:
            if stream is None:
                return
            with contextlib.suppress(OSError, ValueError):
                while chunk := await stream.read(READ_SIZE):
                    sandbox.output.write(chunk)

        # Record the exit as soon as the entrypoint itself ends: a child it left running may
        # hold the pipes open for much longer (`sh -c "daemon & exit 0"`), and the sandbox
        # must not look Running meanwhile. Keep draining until that child lets go. If the
        # init itself goes (killed from outside), the sandbox has ended too.
        drains = asyncio.gather(drain(main.stdout), drain(main.stderr))
        try:
            waiting = asyncio.ensure_future(main.wait())
            await asyncio.wait({waiting, sandbox.box.ended}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                sandbox.exit = waiting.result()
            else:
                waiting.cancel()
                sandbox.exit = ExitStatus(signal=signal.SIGKILL,
                                          reason="the sandbox's init ended")
            sandbox.finished_at = datetime.now(UTC)
            await drains
        finally:
            drains.cancel()

    # --- processes -------------------------------------------------------------------------

    def _get(self, sandbox_id: str) -> FakeSandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            raise SandboxMissing(sandbox_id)
        return sandbox

    async def spawn(self, sandbox_id: str, request: SpawnRequest) -> SandboxProcess:
        return await self._start(self._get(sandbox_id), request)

    async def _start(self, sandbox: FakeSandbox, request: SpawnRequest) -> InitProcess:
        if not request.argv:
            raise SpawnFailed("empty command")
        if sandbox.paused:
            raise SpawnFailed("the sandbox is paused; resume it first", wrong_state=True)
        argv = list(request.argv)
        if not sandbox.box.layout.isolated:  # the host's tree: an offered path is its copy
            argv[0] = self._offered.host_copy(argv[0]) or argv[0]
        env = {**sandbox.env, **request.env}
        check_process_inputs(request.argv, env, request.cwd)
        cwd = request.cwd or "/"
        if not cwd.startswith("/"):
            cwd = "/" + cwd
        tty = PseudoTerminal(request.terminal) if request.terminal is not None else None
        ours: list[int] = []  # the server's ends, closed if the spawn fails
        if tty is not None:
            in_r, out_w, err_w = tty.slave_copies()
        else:
            out_r, out_w = output_pipe()
            err_r, err_w = output_pipe() if not request.merge_stderr else (None, None)
            in_r, in_w = os.pipe() if request.stdin else (None, None)
            ours = [fd for fd in (out_r, err_r, in_w) if fd is not None]
        box = sandbox.box
        oom_before = box.cgroup.oom_kills() if box.cgroup is not None else 0
        try:
            pid, exited = await box.channel.spawn(
                argv=argv, env=env, cwd=cwd, uid=request.uid, gid=request.gid,
                stdin=in_r, stdout=out_w, stderr=err_w, tty=tty is not None)
        except (InitFailure, ChannelClosed) as error:
            for fd in ours:
                os.close(fd)
            if tty is not None:
                tty.release()
            if isinstance(error, InitFailure):
                raise _spawn_failure(error, request, cwd) from None
            raise SpawnFailed("the sandbox is not running (its init has ended)",
                              wrong_state=True) from None

        def explain_kill() -> str | None:
            cgroup = box.cgroup
            if cgroup is None or cgroup.oom_kills() <= oom_before:
                return None
            limit = sandbox.resources.memory_bytes
            return ("out of memory: the sandbox reached its memory limit"
                    + (f" of {_size(limit)}" if limit else ""))

        if tty is not None:
            tty.release_slave()  # the process holds it now: reads end when it goes
            return InitProcess(box.channel, pid, exited, stdout=tty, stderr=None, stdin=tty,
                               frozen=lambda: sandbox.paused, explain_kill=explain_kill,
                               terminal=TerminalControl(tty))
        return InitProcess(box.channel, pid, exited, stdout=PipeOutput(out_r),
                           stderr=PipeOutput(err_r) if err_r is not None else None,
                           stdin=await write_pipe(in_w) if in_w is not None else None,
                           frozen=lambda: sandbox.paused, explain_kill=explain_kill)

    async def pause(self, sandbox_id: str) -> None:
        sandbox = self._get(sandbox_id)
        sandbox.paused = True
        await self._launcher.pause(sandbox.box)

    async def resume(self, sandbox_id: str) -> None:
        sandbox = self._get(sandbox_id)
        await self._launcher.resume(sandbox.box)
        sandbox.paused = False

    async def destroy(self, sandbox_id: str) -> None:
        sandbox = self._sandboxes.pop(sandbox_id, None)
        if sandbox is not None:
            await self._teardown([sandbox])

    async def _teardown(self, sandboxes: list[FakeSandbox]) -> None:
        """Kill every process of `sandboxes` (frozen ones too) and remove their roots."""
        if not sandboxes:
            return
        for sandbox in sandboxes:
            if sandbox.egress is not None:
                await sandbox.egress.close()
        await self._launcher.end([s.box for s in sandboxes])
        watchers = [s.watcher for s in sandboxes if s.watcher is not None]
        if watchers:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.gather(*watchers, return_exceptions=True),
                                       timeout=5)

        def left_behind(path: str) -> None:
            log.warning("could not remove all of %s", path)

        await asyncio.to_thread(remove_directories, [s.directory for s in sandboxes],
                                on_error=left_behind)

    async def inspect(self, sandbox_id: str) -> RuntimeStatus:
        sandbox = self._get(sandbox_id)
        if sandbox.exit is not None:
            code = sandbox.exit.code if sandbox.exit.code is not None else 128 + (
                sandbox.exit.signal or 0)
            return RuntimeStatus(Phase.EXITED, exit_code=code, finished_at=sandbox.finished_at)
        if sandbox.paused:
            return RuntimeStatus(Phase.PAUSED)
        return RuntimeStatus(Phase.RUNNING)

    async def entrypoint_output(self, sandbox_id: str, max_bytes: int) -> EntrypointOutput:
        data, dropped = self._get(sandbox_id).output.read(max_bytes)
        return EntrypointOutput(data, dropped)

    # --- snapshots -------------------------------------------------------------------------

    async def stored_snapshots(self) -> list[StoredSnapshot]:
        return await self.snapshots.stored()

    async def capture_snapshot(self, sandbox_id: str, spec: SnapshotSpec) -> None:
        """Copy the sandbox's private root, frozen meanwhile (as `docker commit` pauses a
        container) so the copy is of one moment."""
        sandbox = self._get(sandbox_id)
        if self.isolation == "none":
            raise Unsupported("Snapshots need isolation (a private root to copy), which this "
                              "server does not have; see GET /health.")
        freeze = not sandbox.paused
        if freeze:
            await self._launcher.pause(sandbox.box)
        try:
            await self.snapshots.capture(sandbox.box.layout.root, spec)
        finally:
            if freeze and not sandbox.paused and self._sandboxes.get(sandbox_id) is sandbox:
                await self._launcher.resume(sandbox.box)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self.snapshots.delete(snapshot_id)

    async def _restore(self, snapshot_id: str, box: Box) -> None:
        """Copy a snapshot's files onto a new sandbox's private root, before its entrypoint
        starts. The files that name this sandbox (its hostname and addresses) stay its own."""
        etc = Path(box.layout.root, "etc")
        own = await asyncio.to_thread(_read_files, etc, IDENTITY_FILES)
        await self.snapshots.restore(snapshot_id, box.layout.root)
        await asyncio.to_thread(_write_files, etc, own)

    def environment(self, sandbox_id: str) -> dict[str, str]:
        return dict(self._get(sandbox_id).env)

    def filesystem(self, sandbox_id: str) -> FakeFilesystem:
        sandbox = self._get(sandbox_id)
        return FakeFilesystem(sandbox.box.layout, home=sandbox.env.get("HOME", "/root"),
                              ids=sandbox.box.ids)

    def network_namespace(self, sandbox_id: str) -> str | None:
        """The sandbox's network namespace, for rules the server applies from outside
        (None when it has none: no isolation)."""
        return self._get(sandbox_id).box.network_namespace

    # --- egress ------------------------------------------------------------------------------

    def egress_problem(self) -> str | None:
        if self._plan is not None and "network" not in self._plan.isolation.get(
                "namespaces", []):
            return ("this server's sandboxes have no network namespace of their own "
                    "(see isolation in GET /health), so there is nowhere to put the rules")
        return self.egress.problem()

    def egress_health(self) -> dict[str, Any]:
        return self.egress.health(self.egress_problem(), how=(
            "nftables rules in the sandbox's network namespace and a DNS forwarder, both "
            "held by the server"))

    async def egress_policy(self, sandbox_id: str) -> EgressPolicy | None:
        egress = self._get(sandbox_id).egress
        return egress.policy if egress is not None else None

    async def apply_egress(self, sandbox_id: str, policy: EgressPolicy) -> None:
        sandbox = self._get(sandbox_id)
        if sandbox.egress is not None:
            await sandbox.egress.apply(policy)
            return
        self.require_egress()
        egress = await self.egress.attach(sandbox.box.network_namespace or "", policy)
        if self._sandboxes.get(sandbox_id) is not sandbox:  # deleted meanwhile
            await egress.close()
            raise SandboxMissing(sandbox_id)
        sandbox.egress = egress

    async def connect(self, sandbox_id: str, port: int) -> socket.socket:
        sandbox = self._get(sandbox_id)
        if not sandbox.box.pid_namespace:
            return await _connect_locally(port)
        try:
            return await sandbox.box.channel.connect(port)
        except InitFailure as failure:
            raise PortUnreachable(port, failure.reason) from None
        except ChannelClosed:
            raise PortUnreachable(port, "the sandbox is not running") from None

    async def usage(self, sandbox_id: str) -> ResourceUsage:
        sandbox = self._get(sandbox_id)
        limits = sandbox.resources
        cpu_count = float(os.cpu_count() or 1)
        if limits.nano_cpus:
            cpu_count = min(cpu_count, limits.nano_cpus / 1e9)
        mem_total = _mem_total_mib()
        if limits.memory_bytes and sandbox.box.cgroup is not None:
            mem_total = min(mem_total, limits.memory_bytes / 1048576)
        wall, cpu, used = await asyncio.to_thread(_measure, sandbox.box)
        previous = sandbox.cpu_sample
        if previous is None or wall - previous[0] > 10:
            await asyncio.sleep(0.2)
            previous = (wall, cpu)
            wall, cpu, used = await asyncio.to_thread(_measure, sandbox.box)
        sandbox.cpu_sample = (wall, cpu)
        elapsed = max(wall - previous[0], 1e-6)
        percent = (cpu - previous[1]) / elapsed / cpu_count * 100
        return ResourceUsage(cpu_count=cpu_count, cpu_used_pct=round(min(max(percent, 0), 100), 2),
                             mem_total_mib=round(mem_total, 1),
                             mem_used_mib=round(min(used / 1048576, mem_total), 1))


def _touch(box: Box, sandbox_path: str) -> None:
    """Create the env file (and its directory), owned by root inside, as upstream's
    bootstrap does: a path the sandbox cannot write is only logged, the variable still
    names it."""
    try:
        target = box.layout.resolve(sandbox_path)
        target.require_writable()
        os.makedirs(os.path.dirname(target.host_path), exist_ok=True)
        with open(target.host_path, "a"):
            pass
        if not box.ids.is_identity and not box.layout._mount_for(target.sandbox_path).idmapped:
            os.chown(target.host_path, *box.ids.root)
    except (OSError, RuntimeFailure) as error:
        log.warning("cannot create the env file %s: %s", sandbox_path, error)


def _read_files(directory: Path, names: Sequence[str]) -> dict[str, bytes]:
    found = {}
    for name in names:
        with contextlib.suppress(OSError):
            found[name] = (directory / name).read_bytes()
    return found


def _write_files(directory: Path, files: Mapping[str, bytes]) -> None:
    for name, content in files.items():
        (directory / name).write_bytes(content)


def _host_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _spawn_failure(failure: InitFailure, request: SpawnRequest, cwd: str) -> SpawnFailed:
    program = request.argv[0]
    if failure.stage == wire.STAGE_CWD:
        if failure.errno == errno.ENOENT:
            return SpawnFailed(f"working directory {cwd} does not exist in the sandbox: "
                               "no such file or directory")
        return SpawnFailed(f"working directory {cwd}: {failure.reason}")
    if failure.stage == wire.STAGE_EXEC:
        if failure.errno == errno.ENOENT or (failure.errno == errno.EACCES
                                             and "/" not in program):
            return ExecutableNotFound(program)
        return SpawnFailed(f"fork/exec {program}: {failure.reason}")
    if failure.stage == wire.STAGE_CREDENTIALS:
        return SpawnFailed(f"cannot run {program} as uid {request.uid} / gid {request.gid}: "
                           f"{failure.reason} (the sandbox's user namespace maps ids 0-65535 "
                           "as root; other ids do not exist in it)")
    if failure.stage == wire.STAGE_FORK:
        return SpawnFailed(f"fork/exec {program}: {failure.reason} (is the sandbox at its "
                           "process limit?)")
    return SpawnFailed(f"could not start {program}: {failure.reason}")


async def _connect_locally(port: int) -> socket.socket:
    """A sandbox without a network of its own shares the host's: its ports are here."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 10)
    except (TimeoutError, OSError) as error:
        sock.close()
        raise PortUnreachable(port, os.strerror(error.errno).lower()
                              if isinstance(error, OSError) and error.errno else "timed out"
                              ) from None
    return sock


def _measure(box: Box) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, bytes of memory) used by the sandbox's processes."""
    cgroup = box.cgroup
    if cgroup is not None:
        cpu = cgroup.cpu_seconds()
        memory = cgroup.memory_used()
        if cpu is not None and memory is not None:
            return time.monotonic(), cpu, memory
    pids = in_namespace_of(box.init_pid) if box.pid_namespace else descendants(box.init_pid)
    return sample(pids)


def _size(size: int) -> str:
    for unit, power in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << power and size % (1 << power) == 0:
            return f"{size >> power} {unit}"
    return f"{size} bytes"


def _hostname(sandbox_id: str) -> str:
    return "sandbox-" + sandbox_id.replace("-", "")[:12]


def _mem_total_mib() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    return 0.0

