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
from dataclasses import dataclass, field
from datetime import UTC, datetime

from runtimes.base import (
    ExitStatus,
    Phase,
    ResourceUsage,
    Runtime,
    RuntimeFailure,
    RuntimeStatus,
    SandboxMissing,
    SandboxProcess,
    SandboxSpec,
    SpawnFailed,
    SpawnRequest,
)
from runtimes.fake.layout import Mount, SandboxLayout
from runtimes.fake.processes import LocalProcess, processes_of, signal_all

log = logging.getLogger("opensandbox.runtime.fake")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PIPE_LIMIT = 64 * 1024  # per-stream read buffer; past it the pipe pushes back on the writer


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
                raise RuntimeFailure(f"bubblewrap isolation was required but {problem}")
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
        for sandbox_id in list(self._sandboxes):
            await self.destroy(sandbox_id)
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    # --- provisioning --------------------------------------------------------------------

    async def resolve_named_volume(self, claim_name: str, sub_path: str | None) -> str:
        base = os.path.join(self.volumes_root, claim_name)
        if not os.path.isdir(base):
            raise RuntimeFailure(
                f"Named volume '{claim_name}' does not exist. Create the directory "
                f"{base} (the fake runtime's volumes root) first.",
                code="VOLUME::PVC_NOT_FOUND", status=400)
        if not sub_path:
            return base
        target = os.path.realpath(os.path.join(base, sub_path))
        if not (target == os.path.realpath(base) or
                target.startswith(os.path.realpath(base) + "/")):
            raise RuntimeFailure(f"subPath '{sub_path}' escapes volume '{claim_name}'.",
                                 code="VOLUME::INVALID_SUB_PATH", status=400)
        if not os.path.isdir(target):
            raise RuntimeFailure(f"subPath '{sub_path}' does not exist in volume "
                                 f"'{claim_name}'.", code="VOLUME::PVC_SUBPATH_NOT_FOUND",
                                 status=400)
        return target

    async def create(self, spec: SandboxSpec) -> None:
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
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
        else:
            if spec.volumes:
                raise RuntimeFailure("Volumes need bubblewrap isolation, which this server "
                                     "does not have; install bubblewrap or drop the volumes.",
                                     code="VOLUME::UNSUPPORTED", status=400)
            os.makedirs(directory, exist_ok=True)
            layout = SandboxLayout.identity()
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8",
               "HOSTNAME": _hostname(spec.sandbox_id)}
        env.update(spec.env)
        sandbox = FakeSandbox(spec=spec, directory=directory, layout=layout, env=env)
        self._sandboxes[spec.sandbox_id] = sandbox
        try:
            sandbox.main = await self._start(sandbox, SpawnRequest(argv=list(spec.entrypoint)))
        except SpawnFailed as error:
            await self.destroy(spec.sandbox_id)
            raise RuntimeFailure(f"Failed to start the entrypoint: {error.message}",
                                 code="DOCKER::SANDBOX_START_FAILED", status=500) from error
        sandbox.watcher = asyncio.create_task(self._watch_main(sandbox))

    async def _watch_main(self, sandbox: FakeSandbox) -> None:
        assert sandbox.main is not None
        # The entrypoint's output has nowhere to go; drain it so it never blocks on a pipe.
        async def drain(stream: object) -> None:
            if stream is None:
                return
            while await stream.read(PIPE_LIMIT):  # type: ignore[attr-defined]
                pass

        await asyncio.gather(drain(sandbox.main.stdout), drain(sandbox.main.stderr))
        sandbox.exit = await sandbox.main.wait()
        sandbox.finished_at = datetime.now(UTC)

    # --- processes -------------------------------------------------------------------------

    def _get(self, sandbox_id: str) -> FakeSandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            raise SandboxMissing(sandbox_id)
        return sandbox

    async def spawn(self, sandbox_id: str, request: SpawnRequest) -> SandboxProcess:
        return await self._start(self._get(sandbox_id), request)

    async def _start(self, sandbox: FakeSandbox, request: SpawnRequest) -> LocalProcess:
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
            raise SpawnFailed(f'exec: "{program}": executable file not found in $PATH')
        argv = list(request.argv)
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
        try:
            process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=stderr, env=env, cwd=host_cwd, start_new_session=True,
                limit=PIPE_LIMIT)
        except OSError as error:
            raise SpawnFailed(f"fork/exec {program}: {error.strerror}") from error
        sandbox.sessions.add(process.pid)
        return LocalProcess(process)

    def _live_sessions(self, sandbox: FakeSandbox) -> set[int]:
        """Forget sessions with no process left, so a reused pid is never mistaken for ours."""
        live = processes_of(sandbox.sessions)
        alive_sessions = {sid for sid in sandbox.sessions if _session_of_any(sid, live)}
        sandbox.sessions = alive_sessions
        return alive_sessions

    async def pause(self, sandbox_id: str) -> None:
        sandbox = self._get(sandbox_id)
        signal_all(self._live_sessions(sandbox), signal.SIGSTOP)
        sandbox.paused = True

    async def resume(self, sandbox_id: str) -> None:
        sandbox = self._get(sandbox_id)
        signal_all(self._live_sessions(sandbox), signal.SIGCONT)
        sandbox.paused = False

    async def destroy(self, sandbox_id: str) -> None:
        sandbox = self._sandboxes.pop(sandbox_id, None)
        if sandbox is None:
            return
        for _ in range(5):
            sessions = self._live_sessions(sandbox)
            if not sessions:
                break
            signal_all(sessions, signal.SIGKILL)
            signal_all(sessions, signal.SIGCONT)
            await asyncio.sleep(0.01)
        if sandbox.watcher is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(sandbox.watcher, timeout=5)
        await asyncio.to_thread(shutil.rmtree, sandbox.directory, True)

    async def inspect(self, sandbox_id: str) -> RuntimeStatus:
        sandbox = self._get(sandbox_id)
        if sandbox.exit is not None:
            code = sandbox.exit.code if sandbox.exit.code is not None else 128 + (
                sandbox.exit.signal or 0)
            return RuntimeStatus(Phase.EXITED, exit_code=code, finished_at=sandbox.finished_at)
        if sandbox.paused:
            return RuntimeStatus(Phase.PAUSED)
        return RuntimeStatus(Phase.RUNNING)

    def layout(self, sandbox_id: str) -> SandboxLayout:
        """The sandbox's mount table (the execd filesystem operations map paths with it)."""
        return self._get(sandbox_id).layout

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


def _hostname(sandbox_id: str) -> str:
    return "sandbox-" + sandbox_id.replace("-", "")[:12]


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
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                raw = handle.read().decode(errors="replace")
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2:].split()
        cpu += (int(fields[11]) + int(fields[12])) / ticks
        rss += int(fields[21]) * page
    return time.monotonic(), cpu, rss


def _mem_total_mib() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    return 0.0
