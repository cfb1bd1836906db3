"""Starting and ending a sandbox's init: as a container (runc), or as a host process.

Every sandbox has one process model whatever the host allows: an init (`sandbox_init.py`)
that the server drives over a socket, and that starts every process of the sandbox. What
differs is where the init lives:

- `ContainerLauncher`: runc starts it as PID 1 of a container of its own (namespaces,
  mapped ids, capabilities, seccomp, cgroups), slirp4netns gives that container a way out,
  and the server, a child subreaper, reaps it when it ends.
- `HostLauncher`: it is an ordinary child of the server, without any isolation (the
  `none` level, or what `auto` falls back to on a host that can run no container).

Pause freezes the sandbox's cgroup where there is one; without, the init stops every other
process of its PID namespace (SIGSTOP); on the host, the server stops the init's
descendants itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opensandbox_emulator.runtimes.fake import idmap, network, oci
from opensandbox_emulator.runtimes.fake.cgroups import SandboxCgroup
from opensandbox_emulator.runtimes.fake.control import InitChannel
from opensandbox_emulator.runtimes.fake.ids import IdMap
from opensandbox_emulator.runtimes.fake.interpreter import InitProgram, base_interpreter
from opensandbox_emulator.runtimes.fake.layout import Mount, RootSetup, SandboxLayout
from opensandbox_emulator.runtimes.fake.oci import Resources
from opensandbox_emulator.runtimes.fake.processes import descendants, signal_pids
from opensandbox_emulator.runtimes.fake.runc import (
    SERVER_ANNOTATION,
    Runc,
    server_alive,
    server_identity,
    state_root,
)

log = logging.getLogger("opensandbox.runtime.fake")

READY_SECONDS = 20.0
END_SECONDS = 10.0
OOM_SCORE_ADJ = -998  # the init is the last thing the OOM killer picks in its sandbox
PARALLEL_DELETES = 8


class LaunchFailed(Exception):
    """The sandbox could not be started; the message says why (runc's own words)."""


@dataclass
class Box:
    """A started sandbox: its init, and what the host holds for it."""

    channel: InitChannel
    layout: SandboxLayout
    ids: IdMap
    init_pid: int  # on the host
    pid_namespace: bool
    ended: asyncio.Future[None]  # the init is gone
    container_id: str | None = None
    cgroup: SandboxCgroup | None = None
    outbound: Outbound | None = None
    frozen: bool = False
    stopped: set[int] = field(default_factory=set)  # host-launched: pids we SIGSTOPped

    @property
    def network_namespace(self) -> str | None:
        """The sandbox's network namespace (for rules the server applies from outside)."""
        return f"/proc/{self.init_pid}/ns/net" if self.pid_namespace else None


Outbound = network.Outbound


@dataclass(frozen=True)
class LaunchRequest:
    sandbox_id: str
    directory: str  # the sandbox's own directory on the host (removed with it)
    volumes: Sequence[Mount]
    resources: Resources
    hostname: str
    offered: Sequence[Mount] = ()  # read-only files every sandbox sees (`offered.py`)


class Launcher(ABC):
    @abstractmethod
    async def launch(self, request: LaunchRequest) -> Box: ...

    @abstractmethod
    async def end(self, boxes: Sequence[Box]) -> None:
        """Kill every process of `boxes` (frozen ones too) and release what they hold."""

    async def pause(self, box: Box) -> None:
        await _pause(box, True)

    async def resume(self, box: Box) -> None:
        await _pause(box, False)

    async def close(self) -> None:  # noqa: B027 - optional
        """Release what the launcher itself holds."""


async def _pause(box: Box, stop: bool) -> None:
    if box.cgroup is not None and box.cgroup.freezer is not None:
        await asyncio.to_thread(box.cgroup.freeze, stop)
    elif box.pid_namespace:
        box.channel.freeze(stop)
    else:
        if stop:
            box.stopped = descendants(box.init_pid)
            signal_pids(box.stopped, signal.SIGSTOP)
        else:
            signal_pids(box.stopped | descendants(box.init_pid), signal.SIGCONT)
            box.stopped = set()
    box.frozen = stop


# --- containers --------------------------------------------------------------------------


def become_subreaper() -> None:
    """Orphans of this process's children (a container's init, once `runc run` exits)
    become its children, so it reaps them itself instead of leaving that to the host's init.
    The server program does this; a server embedded in another process (the test kit's
    in-process one) leaves that process's orphans alone, and the host's init reaps them.
    Either way the runtime learns of an init's end through a pidfd."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


@dataclass
class ContainerLauncher(Launcher):
    runc: Runc
    ids: IdMap
    init: InitProgram
    seccomp: dict[str, Any] | None
    cgroups: bool  # put the sandbox in cgroups of its own (with its limits)
    outbound: bool  # give it slirp4netns
    userns_fd: int | None = None  # a user namespace with `ids`, for idmapped volumes
    cgroup_parent: str = "/opensandbox-emulator"
    token: str = field(default_factory=lambda: secrets.token_hex(4))

    def container_id(self, sandbox_id: str) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sandbox_id)
        return f"osb-{self.token}-{safe}"[:1024]

    async def launch(self, request: LaunchRequest) -> Box:
        container_id = self.container_id(request.sandbox_id)
        bundle = os.path.join(request.directory, "bundle")
        server, inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        started_pid: int | None = None
        box: Box | None = None
        try:
            layout, staged = await asyncio.to_thread(self._prepare, request, container_id,
                                                     bundle)
            prefix: list[str] = []
            keep: list[int] = []
            if staged:
                prefix = idmap.helper_command(base_interpreter(), self.userns_fd, staged)
                keep = [self.userns_fd] if self.userns_fd is not None else []
            started_pid = await asyncio.to_thread(
                self.runc.run_detached, bundle, container_id, inside.fileno(),
                os.path.join(bundle, "init.pid"), prefix=prefix, keep_fds=keep)
            inside.close()
            channel = InitChannel(server)
            box = Box(channel=channel, layout=layout, ids=self.ids, init_pid=started_pid,
                      pid_namespace=True, ended=_reaper(started_pid),
                      container_id=container_id)
            # The network helper needs only the namespace, which exists already: it comes
            # up while the init's Python starts.
            async with asyncio.TaskGroup() as both:
                both.create_task(_ready(channel, box.ended))
                if self.outbound:
                    outbound = both.create_task(network.attach(
                        started_pid, log_path=os.path.join(bundle, "slirp4netns.log"),
                        join_user_namespace=os.geteuid() != 0))
            if self.outbound:
                box.outbound = outbound.result()
            if os.geteuid() == 0:
                _lower_oom_score(started_pid)
            if self.cgroups:
                box.cgroup = SandboxCgroup.of(started_pid)
            return box
        except BaseException as error:
            if isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
                error = error.exceptions[0]
            inside.close()
            if box is not None:
                await self.end([box])
            else:
                server.close()
                if started_pid is not None:
                    with contextlib.suppress(OSError):
                        os.kill(started_pid, signal.SIGKILL)
                await asyncio.to_thread(self.runc.delete, container_id)
                await asyncio.to_thread(shutil.rmtree, self._stage_dir(container_id), True)
            if isinstance(error, Exception) and not isinstance(error, LaunchFailed):
                raise LaunchFailed(str(error) or type(error).__name__) from error
            raise

    def _stage_dir(self, container_id: str) -> str:
        return os.path.join(stage_root(), container_id)

    def _prepare(self, request: LaunchRequest, container_id: str,
                 bundle: str) -> tuple[SandboxLayout, list[tuple[str, str, str]]]:
        """The private root and the bundle on disk (blocking). Returns the layout and what
        the mount helper must stage ((kind, source, target) entries, see `mount_helper`)."""
        os.makedirs(bundle, mode=0o700, exist_ok=True)
        volumes = [dataclasses.replace(volume, idmapped=True)
                   if self.userns_fd is not None
                   and idmap.supported(volume.host_path, self.userns_fd) else volume
                   for volume in request.volumes]
        layout = SandboxLayout.build(
            os.path.join(request.directory, "root"), volumes,
            RootSetup(self.ids, request.hostname,
                      network.ADDRESS if self.outbound else "127.0.1.1",
                      [network.NAMESERVER] if self.outbound else [],
                      [*self.init.mounts, *request.offered], self.init.script))
        layout, rootfs, staged = self._stage(layout, self._stage_dir(container_id))
        spec = oci.ContainerSpec(
            layout=layout, ids=self.ids, hostname=request.hostname, rootfs=rootfs,
            argv=self.init.command(3), env=self.init.env, seccomp=self.seccomp,
            cgroups_path=f"{self.cgroup_parent}/{container_id}" if self.cgroups else None,
            resources=request.resources if self.cgroups else Resources(),
            annotations={SERVER_ANNOTATION: server_identity()})
        with open(os.path.join(bundle, "config.json"), "w") as handle:
            json.dump(oci.config(spec), handle)
        return layout, staged

    def _stage(self, layout: SandboxLayout, stage: str
               ) -> tuple[SandboxLayout, str, list[tuple[str, str, str]]]:
        """runc mounts from inside the sandbox's user namespace, as the sandbox's root,
        who may not be allowed through the directories above a path (a home directory,
        pytest's private temporary directories). Those paths, and idmapped volumes, are
        staged: attached by the mount helper under `stage` (a directory of empty mount
        points on the host's tmpfs, reachable by anyone) in a private mount namespace."""
        uid, gid = self.ids.root
        staged: list[tuple[str, str, str]] = []
        if os.geteuid() != 0:  # no mount namespace to stage in; nothing needs one either
            return layout, layout.root, staged

        def place(name: str, directory: bool) -> str:
            target = os.path.join(stage, name)
            if not os.path.isdir(stage):
                # Made under another name and renamed once it says whose it is, so that a
                # server sweeping orphans never takes it for one.
                making = os.path.join(os.path.dirname(stage), MAKING + os.path.basename(stage))
                _reachable_directory(making)
                with open(os.path.join(making, OWNER_FILE), "w") as owner:
                    owner.write(server_identity())
                os.rename(making, stage)
            if directory:
                os.mkdir(target, 0o755)
            else:
                with open(target, "w"):
                    pass
            return target

        mounts: list[Mount] = []
        for index, mount in enumerate(layout.mounts):
            kind = None
            if mount.kind == "bind" and mount.sandbox_path != "/":
                if mount.idmapped:
                    kind = "idmap"
                elif not reachable(mount.host_path, uid, gid):
                    kind = "bind"
            if kind is None:
                mounts.append(mount)
                continue
            target = place(str(index), os.path.isdir(mount.host_path))
            staged.append((kind, mount.host_path, target))
            mounts.append(dataclasses.replace(mount, bind_source=target))
        rootfs = layout.root
        if not reachable(rootfs, uid, gid):
            rootfs = place("rootfs", True)
            staged.append(("bind", layout.root, rootfs))
        return SandboxLayout(layout.root, mounts), rootfs, staged

    async def end(self, boxes: Sequence[Box]) -> None:
        for box in boxes:
            if not box.ended.done():
                with contextlib.suppress(OSError):
                    os.kill(box.init_pid, signal.SIGKILL)
            if box.frozen and box.cgroup is not None:
                # A v1 freezer holds the kill until the group thaws.
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(box.cgroup.freeze, False, wait=0.5)
        # Everything dies at once; only the cleanup that starts processes or waits on the
        # disk is done a few at a time.
        for box in boxes:
            if box.outbound is not None:
                box.outbound.kill()
        await asyncio.gather(*(_ended_within(box.ended, END_SECONDS) for box in boxes),
                             *(box.outbound.stop() for box in boxes if box.outbound is not None))
        for box in boxes:
            box.channel.close()
        gate = asyncio.Semaphore(PARALLEL_DELETES)

        async def clean(box: Box) -> None:
            if box.container_id is None:
                return
            async with gate:
                directories = box.cgroup.every if box.cgroup is not None else []
                if not (box.ended.done() and directories and await asyncio.to_thread(
                        self.runc.forget, box.container_id, directories)):
                    await asyncio.to_thread(self.runc.delete, box.container_id)
                await asyncio.to_thread(shutil.rmtree, self._stage_dir(box.container_id), True)

        await asyncio.gather(*(clean(box) for box in boxes))

    async def close(self) -> None:
        if self.userns_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.userns_fd)
            self.userns_fd = None
        for controller_root in _cgroup_roots():
            with contextlib.suppress(OSError):
                os.rmdir(controller_root + self.cgroup_parent)


OWNER_FILE = ".server"  # in a stage directory: the pid and start time of its server
MAKING = ".making-"  # a stage directory being made


def stage_root() -> str:
    return os.path.join(os.path.dirname(state_root()), "stage")


def remove_orphan_stages() -> list[str]:
    """Remove the stage directories of servers that are gone (they crashed); only empty
    mount points, since nothing is ever mounted on them in the host's namespace. Returns
    their names."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(stage_root()):
            try:
                with open(os.path.join(entry.path, OWNER_FILE)) as handle:
                    owner = handle.read().strip()
            except OSError:
                owner = ""
            if entry.name.startswith(MAKING):
                with contextlib.suppress(OSError):
                    if time.time() - entry.stat().st_mtime < 600:
                        continue  # being made right now, by a server starting a sandbox
            elif server_alive(owner):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _reachable_directory(path: str) -> None:
    """Create `path` (under this server's runtime directory) and whatever is missing above
    it, and make each of them, ours, passable by anyone (0711) but not listable."""
    base = os.path.dirname(stage_root())
    os.makedirs(path, exist_ok=True)
    current = path
    while current.startswith(base):
        os.chmod(current, 0o711)
        current = os.path.dirname(current)


def reachable(path: str, uid: int, gid: int) -> bool:
    """Whether a process with `uid`/`gid` (and no capability over these directories) may
    look up `path`: search permission on every directory above it."""
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            info = os.stat(parent)
        except OSError:
            return False
        if info.st_uid == uid:
            allowed = info.st_mode & 0o100
        elif info.st_gid == gid:
            allowed = info.st_mode & 0o010
        else:
            allowed = info.st_mode & 0o001
        if not allowed:
            return False
        if parent == "/":
            return True
        parent = os.path.dirname(parent)


async def _ended_within(ended: asyncio.Future[None], seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(ended), seconds)


def _lower_oom_score(pid: int) -> None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/oom_score_adj", "w") as handle:
        handle.write(str(OOM_SCORE_ADJ))


def _cgroup_roots() -> list[str]:
    roots = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            if right.startswith(("cgroup ", "cgroup2 ")):
                roots.append(left.split()[4])
    return roots


def _reaper(pid: int) -> asyncio.Future[None]:
    """A future that resolves once `pid` (a child of the server's, or a process it may not
    reap) has ended; the server reaps it when it is its child."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        ended.set_result(None)
        return ended

    def on_exit() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(pidfd, on_exit)
    return ended


async def _ready(channel: InitChannel, ended: asyncio.Future[None]) -> None:
    ready = asyncio.ensure_future(asyncio.shield(channel.ready))
    try:
        await asyncio.wait({ready, ended}, timeout=READY_SECONDS,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
    if not channel.ready.done() or channel.ready.exception() is not None:
        raise LaunchFailed("the sandbox's init did not start" + (
            " (it exited)" if ended.done() else f" within {READY_SECONDS:.0f} s"))


# --- on the host -------------------------------------------------------------------------


@dataclass
class HostLauncher(Launcher):
    init: InitProgram

    async def launch(self, request: LaunchRequest) -> Box:
        os.makedirs(request.directory, exist_ok=True)
        server, inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = await asyncio.create_subprocess_exec(
                *self.init.command(inside.fileno()), pass_fds=[inside.fileno()],
                env=self.init.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True)
        except OSError as error:
            server.close()
            raise LaunchFailed(f"could not start the sandbox's init: {error}") from error
        finally:
            inside.close()
        ended = asyncio.ensure_future(_wait_process(process))
        channel = InitChannel(server)
        box = Box(channel=channel, layout=SandboxLayout.identity(), ids=IdMap.identity(),
                  init_pid=process.pid, pid_namespace=False, ended=ended)
        try:
            await _ready(channel, ended)
        except BaseException:
            await self.end([box])
            raise
        return box

    async def end(self, boxes: Sequence[Box]) -> None:
        for _ in range(5):
            victims: set[int] = set()
            for box in boxes:
                victims |= descendants(box.init_pid)
            if not victims:
                break
            signal_pids(victims, signal.SIGKILL)
            signal_pids(victims, signal.SIGCONT)
            await asyncio.sleep(0.01)
        for box in boxes:
            with contextlib.suppress(OSError):
                os.kill(box.init_pid, signal.SIGKILL)
        for box in boxes:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(box.ended), END_SECONDS)
            box.channel.close()


async def _wait_process(process: asyncio.subprocess.Process) -> None:
    await process.wait()


def remove_directories(directories: Sequence[str], *, workers: int = 16,
                       on_error: Callable[[str], None] | None = None) -> None:
    """rm -rf each of `directories` (blocking; a thread pool, since each waits on disk)."""
    from concurrent.futures import ThreadPoolExecutor

    def remove(path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)
        if os.path.exists(path) and on_error is not None:
            on_error(path)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(directories)))) as pool:
        list(pool.map(remove, directories))

