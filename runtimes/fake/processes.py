"""Processes of fake sandboxes: started in their own session, found again through /proc.

Each process the runtime starts leads a new session (and process group). A sandbox's
processes are every live process in one of its sessions, plus their descendants, so that
pause, resume and destroy reach children that a command left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

from opensandbox_emulator.runtimes.base import ExitStatus, SandboxProcess


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, session,
    …, see proc(5), less 3 in numbering), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode(errors="replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def _read_stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, session id, state) of a live process, or None when it is gone."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    return int(fields[1]), int(fields[3]), fields[0]


def processes_of(sessions: set[int]) -> set[int]:
    """Live pids in one of `sessions`, or descended from one of those."""
    table: dict[int, tuple[int, int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _read_stat(int(entry))
            if info is not None and info[2] != "Z":
                table[int(entry)] = info
    members = {pid for pid, (_, sid, _) in table.items() if sid in sessions}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, _) in table.items():
            if pid not in members and ppid in members:
                members.add(pid)
                grew = True
    return members


def signal_all(sessions: set[int], sig: int, *, rounds: int = 3) -> None:
    """Signal every process of the sessions; repeat to catch what was forked meanwhile."""
    seen: set[int] = set()
    for _ in range(rounds):
        pids = processes_of(sessions) - seen
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        seen |= pids


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _ExitProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Also resolves `exited` as soon as the process itself ends. (On Python 3.11,
    `Process.wait()` also waits for every pipe to close, which never happens while a
    child the command left running still holds its stdout.)"""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop):
        super().__init__(limit=limit, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


async def start_process(*command: str, limit: int, wrapped: bool = False,
                        **options: Any) -> LocalProcess:
    """`asyncio.create_subprocess_exec`, but with a `wait()` that ends when the process
    does, not when its pipes close. `wrapped`: the process is a wrapper (bwrap) that runs
    the real command as its child and exits with the child's status."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        lambda: _ExitProtocol(limit, loop), *command, **options)
    return LocalProcess(asyncio.subprocess.Process(transport, protocol, loop),
                        exited=protocol.exited, wrapped=wrapped)


def group_members(pgid: int) -> list[int]:
    """Live pids in process group `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        fields = stat_fields(int(entry)) if entry.isdigit() else None
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


class PipeInput:
    """A process's stdin pipe as a `ProcessInput`."""

    def __init__(self, writer: asyncio.StreamWriter):
        self._writer = writer

    async def write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise BrokenPipeError("the process's stdin is closed")
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class LocalProcess(SandboxProcess):
    """An asyncio subprocess; its pid is also its process group and session id."""

    def __init__(self, process: asyncio.subprocess.Process,
                 exited: asyncio.Future[None] | None = None, *, wrapped: bool = False):
        self._process = process
        self._exited = exited
        self._wrapped = wrapped
        self.pid = process.pid
        if process.stdout is not None:  # None on a terminal, which the caller reads
            self.stdout = process.stdout
        self.stderr = process.stderr
        self.stdin = PipeInput(process.stdin) if process.stdin is not None else None
        self._signalled: int | None = None

    async def wait(self) -> ExitStatus:
        if self._exited is not None:
            await asyncio.shield(self._exited)
            code = self._process.returncode
            assert code is not None
        else:
            code = await self._process.wait()
        if code < 0:
            return ExitStatus(signal=-code)
        # bwrap reports a child killed by signal N as 128+N; when we sent that signal
        # ourselves, report it as the signal it was.
        if self._signalled is not None and code == 128 + self._signalled:
            return ExitStatus(signal=self._signalled)
        return ExitStatus(code=code)

    async def signal_group(self, sig: int) -> None:
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            self._signalled = sig
        if self._wrapped and sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT):
            # A signal the command may handle (a TERM trap that cleans up) must not reach
            # bwrap, which would die of it and take the command down mid-handler. bwrap
            # exits by itself, with the command's status, once the command ends.
            for pid in group_members(self.pid):
                if pid != self.pid:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
