"""`FakeRuntime`: sandboxes as bubblewrap views of this host, kept in memory.

Each sandbox gets a private root directory under the state directory. Every process of the
sandbox (its entrypoint and each execd command) is its own `bwrap` invocation over the same
mount table, so they all share one filesystem view, while `/tmp` and the rest stay private
to the sandbox. Processes share the host's network, so a sandbox's ports are on loopback.

Without bubblewrap (or without the privileges it needs), processes run directly on the
host with no isolation; the runtime says so loudly through `warnings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from opensandbox_emulator.runtimes.base import (
    DEFAULT_ENV_FILE,
    EntrypointOutput,
    ExitStatus,
    Phase,
    ResourceUsage,
    Runtime,
    RuntimeStatus,
    SandboxProcess,
    SandboxSpec,
    SnapshotSpec,
    SpawnRequest,
    StoredSnapshot,
)
from opensandbox_emulator.runtimes.failures import (
    ExecutableNotFound,
    InvalidArgument,
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
from opensandbox_emulator.runtimes.fake.filesystem import FakeFilesystem
from opensandbox_emulator.runtimes.fake.layout import Mount, SandboxLayout
from opensandbox_emulator.runtimes.fake.processes import (
    LocalProcess,
    processes_of,
    signal_all,
    start_process,
    stat_fields,
)
from opensandbox_emulator.runtimes.fake.snapshots import SnapshotStore
from opensandbox_emulator.runtimes.fake.terminal import (
    CONTROLLING_TERMINAL,
    PseudoTerminal,
    TerminalProcess,
)
from opensandbox_emulator.runtimes.output_tail import OutputTail

log = logging.getLogger("opensandbox.runtime.fake")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PIPE_LIMIT = 64 * 1024  # per-stream read buffer; past it the pipe pushes back on the writer
ENTRYPOINT_OUTPUT_BYTES = 1024 * 1024  # the newest output of an entrypoint kept, for diagnostics


@dataclass
class FakeSandbox:
    spec: SandboxSpec
    directory: str
    layout: SandboxLayout
    env: dict[str, str]
    sessions: set[int] = field(default_factory=set)
    main: LocalProcess | None = None
    exit: ExitStatus | None = None
    finished_at: datetime | None = None
    paused: bool = False
    watcher: asyncio.Task[None] | None = None
    cpu_sample: tuple[float, float] | None = None  # (wall seconds, cpu seconds)
    output: OutputTail = field(default_factory=lambda: OutputTail(ENTRYPOINT_OUTPUT_BYTES))


class FakeRuntime(Runtime):
    name = "fake"

    def __init__(self, *, state_dir: str | None = None, volumes_root: str | None = None,
                 isolation: str = "auto"):
        if isolation not in ("auto", "bubblewrap", "none"):
            raise ValueError("isolation must be 'auto', 'bubblewrap' or 'none'")
        self._own_state_dir = state_dir is None
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="opensandbox-emulator-")
        self.volumes_root = volumes_root or os.path.join(self.state_dir, "volumes")
        self._isolation_wanted = isolation
        self._bwrap: str | None = None
        self._warnings: list[str] = []
        self._sandboxes: dict[str, FakeSandbox] = {}
        self.snapshots = SnapshotStore(self.state_dir)

    # --- start-up and shutdown -------------------------------------------------------------

    @property
    def isolation(self) -> str:
        return "bubblewrap" if self._bwrap else "none"

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings)

    async def start(self) -> list[SandboxSpec]:
        os.makedirs(os.path.join(self.state_dir, "sandboxes"), exist_ok=True)
        os.makedirs(self.volumes_root, exist_ok=True)
        if self._isolation_wanted != "none":
            problem = await self._probe_bubblewrap()
            if problem is None:
                self._bwrap = shutil.which("bwrap")
            elif self._isolation_wanted == "bubblewrap":
                raise Unavailable(f"bubblewrap isolation was required but {problem}")
            else:
                self._warnings.append(
                    f"NO ISOLATION: {problem}. Sandbox processes run directly on this host and "
                    "see its whole filesystem. Install bubblewrap (apt-get install bubblewrap) "
                    "for private /tmp and working directories.")
        else:
            self._warnings.append("NO ISOLATION: [fake] isolation = \"none\" was configured.")
        return []

    async def _probe_bubblewrap(self) -> str | None:
        """None when bwrap can build a sandbox view here, else why it cannot."""
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            return "bubblewrap (bwrap) is not installed"
        probe_root = tempfile.mkdtemp(prefix="probe-", dir=self.state_dir)
        try:
            layout = SandboxLayout.build(os.path.join(probe_root, "root"), [])
            process = await asyncio.create_subprocess_exec(
                bwrap, *layout.bubblewrap_args(), "--", "/bin/sh", "-c", "echo ok",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL)
            out, err = await process.communicate()
            if process.returncode != 0 or out.strip() != b"ok":
                return f"bubblewrap cannot create a sandbox here: {err.decode().strip()}"
            return None
        finally:
            shutil.rmtree(probe_root, ignore_errors=True)

    async def close(self) -> None:
        # All at once: one /proc scan per round for every sandbox, not several per sandbox
        # (with a thousand sandboxes, one by one took minutes).
        sandboxes = list(self._sandboxes.values())
        self._sandboxes.clear()
        await self._teardown(sandboxes)
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

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
        if spec.snapshot_id is not None and not self._bwrap:
            raise Unsupported("Restoring a snapshot needs bubblewrap isolation (a private "
                              "root to restore into), which this server does not have.")
        directory = os.path.join(self.state_dir, "sandboxes", spec.sandbox_id)
        if self._bwrap:
            volumes = []
            for volume in spec.volumes:
                source = volume.source
                if volume.kind == "pvc":
                    source = await self.resolve_named_volume(volume.source, volume.sub_path)
                volumes.append(Mount(volume.mount_path, source, volume.read_only))
            try:
                layout = SandboxLayout.build(os.path.join(directory, "root"), volumes)
                if spec.snapshot_id is not None:
                    await self.snapshots.restore(spec.snapshot_id, layout.root)
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
        else:
            if spec.volumes:
                raise VolumesUnsupported("Volumes need bubblewrap isolation, which this server "
                                         "does not have; install bubblewrap or drop the "
                                         "volumes.")
            os.makedirs(directory, exist_ok=True)
            layout = SandboxLayout.identity()
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8",
               "HOSTNAME": _hostname(spec.sandbox_id)}
        env.update(spec.env)
        env.setdefault("EXECD_ENVS", DEFAULT_ENV_FILE if layout.isolated else
                       os.path.join(directory, "opensandbox.env"))
        _touch(layout, env["EXECD_ENVS"])
        sandbox = FakeSandbox(spec=spec, directory=directory, layout=layout, env=env)
        self._sandboxes[spec.sandbox_id] = sandbox
        try:
            sandbox.main = await self._start(sandbox, SpawnRequest(argv=list(spec.entrypoint)))
        except SpawnFailed as error:
            await self.destroy(spec.sandbox_id)
            raise StartFailed(f"Failed to start the entrypoint: {error.message}") from error
        sandbox.watcher = asyncio.create_task(self._watch_main(sandbox))

    async def _watch_main(self, sandbox: FakeSandbox) -> None:
        assert sandbox.main is not None

        # The entrypoint's output is read as it comes (so it never blocks on a pipe) and its
        # newest bytes kept for diagnostics.
        async def drain(stream: object) -> None:
            if stream is None:
                return
            while chunk := await stream.read(PIPE_LIMIT):  # type: ignore[attr-defined]
                sandbox.output.write(chunk)

        # Record the exit as soon as the entrypoint itself ends: a child it left running may
        # hold the pipes open for much longer (`sh -c "daemon & exit 0"`), and the sandbox
        # must not look Running meanwhile. Keep draining until that child lets go.
        drains = asyncio.gather(drain(sandbox.main.stdout), drain(sandbox.main.stderr))
        try:
            sandbox.exit = await sandbox.main.wait()
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
        sandbox = self._get(sandbox_id)
        if request.terminal is None:
            return await self._start(sandbox, request)
        tty = PseudoTerminal(request.terminal)
        try:
            wrapper = await self._start(sandbox, request, tty)
        except BaseException:
            tty.release()
            raise
        tty.release_slave()
        return TerminalProcess(wrapper, tty)

    async def _start(self, sandbox: FakeSandbox, request: SpawnRequest,
                     tty: PseudoTerminal | None = None) -> LocalProcess:
        env = {**sandbox.env, **request.env}
        cwd = request.cwd or "/"
        layout = sandbox.layout
        if not cwd.startswith("/"):
            cwd = "/" + cwd
        if not layout.is_dir(cwd):
            raise SpawnFailed(f"working directory {cwd} does not exist in the sandbox: "
                              "no such file or directory")
        if not request.argv:
            raise SpawnFailed("empty command")
        program = request.argv[0]
        if layout.find_executable(program, env.get("PATH", DEFAULT_PATH)) is None:
            raise ExecutableNotFound(program)
        argv = list(request.argv)
        if tty is not None:
            if layout.find_executable(CONTROLLING_TERMINAL[0], DEFAULT_PATH) is None:
                raise SpawnFailed("a terminal needs util-linux's setsid in the sandbox")
            argv = [*CONTROLLING_TERMINAL, *argv]
        if request.uid is not None or request.gid is not None:
            ids = []
            if request.uid is not None:
                ids.append(f"--reuid={request.uid}")
            ids.append(f"--regid={request.gid if request.gid is not None else request.uid}")
            argv = ["setpriv", *ids, "--clear-groups", "--", *argv]
        if self._bwrap:
            command = [self._bwrap, *layout.bubblewrap_args(), "--unshare-ipc",
                       "--unshare-uts", "--hostname", env["HOSTNAME"], "--die-with-parent",
                       "--chdir", cwd, "--", *argv]
            host_cwd = None
        else:
            command = argv
            host_cwd = layout.resolve(cwd).host_path
        stderr = asyncio.subprocess.STDOUT if request.merge_stderr else asyncio.subprocess.PIPE
        stdio: dict[str, int] = tty.stdio() if tty is not None else {
            "stdin": asyncio.subprocess.PIPE if request.stdin else asyncio.subprocess.DEVNULL,
            "stdout": asyncio.subprocess.PIPE, "stderr": stderr}
        try:
            process = await start_process(
                *command, **stdio, env=env, cwd=host_cwd, start_new_session=True,
                limit=PIPE_LIMIT, wrapped=self._bwrap is not None)
        except OSError as error:
            raise SpawnFailed(f"fork/exec {program}: {error.strerror}") from error
        sandbox.sessions.add(process.pid)
        return process

    def _live_sessions(self, sandbox: FakeSandbox) -> set[int]:
        """Forget sessions with no process left, so a reused pid is never mistaken for ours."""
        live = processes_of(sandbox.sessions)
        alive_sessions = {sid for sid in sandbox.sessions if _session_of_any(sid, live)}
        sandbox.sessions = alive_sessions
        return alive_sessions

    def _signal_everything(self, sandbox: FakeSandbox, sig: int) -> bool:
        """Signal every process of the sandbox; False when there was none.

        Its sessions (and their descendants) are most of it; with isolation, so is every
        process whose root directory is the sandbox's private root, which also catches a
        daemon that left its session (`setsid`) and was orphaned to init."""
        sessions = self._live_sessions(sandbox)
        signal_all(sessions, sig)
        strays = _rooted_in(_roots_of([sandbox]))
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        return bool(sessions or strays)

    async def pause(self, sandbox_id: str) -> None:
        sandbox = self._get(sandbox_id)
        self._signal_everything(sandbox, signal.SIGSTOP)
        sandbox.paused = True

    async def resume(self, sandbox_id: str) -> None:
        sandbox = self._get(sandbox_id)
        self._signal_everything(sandbox, signal.SIGCONT)
        sandbox.paused = False

    async def destroy(self, sandbox_id: str) -> None:
        sandbox = self._sandboxes.pop(sandbox_id, None)
        if sandbox is not None:
            await self._teardown([sandbox])

    async def _teardown(self, sandboxes: list[FakeSandbox]) -> None:
        """Kill every process of `sandboxes` (frozen ones too) and remove their roots."""
        sessions = set().union(*(sandbox.sessions for sandbox in sandboxes))
        roots = _roots_of(sandboxes)
        for _ in range(5):
            # Members of the sessions and their descendants, plus whatever else runs with a
            # sandbox's root as its root (a daemon that left its session and was orphaned).
            victims = processes_of(sessions) | _rooted_in(roots)
            if not victims:
                break
            for pid in victims:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    os.kill(pid, signal.SIGCONT)
            await asyncio.sleep(0.01)
        watchers = [s.watcher for s in sandboxes if s.watcher is not None]
        if watchers:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.gather(*watchers, return_exceptions=True),
                                       timeout=5)

        # In parallel: each rmdir waits on the disk (tens of ms per root on a disk mounted
        # with `discard`), so a thousand roots one after another took a minute.
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=min(16, len(sandboxes) or 1)) as pool:
            await asyncio.gather(*(loop.run_in_executor(pool, shutil.rmtree, s.directory, True)
                                   for s in sandboxes))

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
        """Copy the sandbox's private root, its processes stopped meanwhile (as `docker
        commit` pauses a container) so the copy is of one moment."""
        sandbox = self._get(sandbox_id)
        if not sandbox.layout.isolated:
            raise Unsupported("Snapshots need bubblewrap isolation (a private root to copy), "
                              "which this server does not have; see GET /health.")
        freeze = not sandbox.paused
        if freeze:
            self._signal_everything(sandbox, signal.SIGSTOP)
        try:
            await self.snapshots.capture(sandbox.layout.root, spec)
        finally:
            if freeze and not sandbox.paused and self._sandboxes.get(sandbox_id) is sandbox:
                self._signal_everything(sandbox, signal.SIGCONT)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self.snapshots.delete(snapshot_id)

    def layout(self, sandbox_id: str) -> SandboxLayout:
        """The sandbox's mount table (the execd filesystem operations map paths with it)."""
        return self._get(sandbox_id).layout

    def environment(self, sandbox_id: str) -> dict[str, str]:
        return dict(self._get(sandbox_id).env)

    def filesystem(self, sandbox_id: str) -> FakeFilesystem:
        sandbox = self._get(sandbox_id)
        return FakeFilesystem(sandbox.layout, home=sandbox.env.get("HOME", "/root"))

    async def port_address(self, sandbox_id: str, port: int) -> tuple[str, int]:
        self._get(sandbox_id)
        return "127.0.0.1", port

    async def usage(self, sandbox_id: str) -> ResourceUsage:
        sandbox = self._get(sandbox_id)
        cpu_count = float(os.cpu_count() or 1)
        mem_total = _mem_total_mib()
        wall, cpu, rss = _sample(self._live_sessions(sandbox))
        previous = sandbox.cpu_sample
        if previous is None or wall - previous[0] > 10:
            await asyncio.sleep(0.2)
            previous = (wall, cpu)
            wall, cpu, rss = _sample(self._live_sessions(sandbox))
        sandbox.cpu_sample = (wall, cpu)
        elapsed = max(wall - previous[0], 1e-6)
        percent = (cpu - previous[1]) / elapsed / cpu_count * 100
        return ResourceUsage(cpu_count=cpu_count, cpu_used_pct=round(min(max(percent, 0), 100), 2),
                             mem_total_mib=round(mem_total, 1),
                             mem_used_mib=round(min(rss / 1048576, mem_total), 1))


def _touch(layout: SandboxLayout, sandbox_path: str) -> None:
    """Create the env file (and its directory), as upstream's bootstrap does: a path the
    sandbox cannot write is only logged, the variable still names it."""
    try:
        target = layout.resolve(sandbox_path)
        target.require_writable()
        os.makedirs(os.path.dirname(target.host_path), exist_ok=True)
        with open(target.host_path, "a"):
            pass
    except (OSError, RuntimeFailure) as error:
        log.warning("cannot create the env file %s: %s", sandbox_path, error)


def _host_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _hostname(sandbox_id: str) -> str:
    return "sandbox-" + sandbox_id.replace("-", "")[:12]


def _roots_of(sandboxes: list[FakeSandbox]) -> set[tuple[int, int]]:
    """(device, inode) of the private roots of the isolated ones among `sandboxes`."""
    roots = set()
    for sandbox in sandboxes:
        if sandbox.layout.isolated:
            with contextlib.suppress(OSError):
                info = os.stat(sandbox.layout.root)
                roots.add((info.st_dev, info.st_ino))
    return roots


def _rooted_in(roots: set[tuple[int, int]]) -> set[int]:
    """Live pids whose root directory is one of `roots` (a bind mount keeps the inode)."""
    if not roots:
        return set()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            info = os.stat(f"/proc/{entry}/root")
        except OSError:  # gone, a zombie, or not ours to look at
            continue
        if (info.st_dev, info.st_ino) in roots:
            found.add(int(entry))
    return found


def _session_of_any(sid: int, pids: set[int]) -> bool:
    for pid in pids:
        try:
            if os.getsid(pid) == sid:
                return True
        except OSError:
            continue
    return False


def _sample(sessions: set[int]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds used, resident bytes) of the sessions' processes."""
    ticks = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    cpu = 0.0
    rss = 0
    for pid in processes_of(sessions) if sessions else set():
        fields = stat_fields(pid)
        if fields is None:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / ticks
        rss += int(fields[21]) * page
    return time.monotonic(), cpu, rss


def _mem_total_mib() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    return 0.0
