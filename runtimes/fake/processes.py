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

from runtimes.base import ExitStatus, SandboxProcess


def _read_stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, session id, state) of a live process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode(errors="replace")
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
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


class LocalProcess(SandboxProcess):
    """An asyncio subprocess; its pid is also its process group and session id."""

    def __init__(self, process: asyncio.subprocess.Process):
        self._process = process
        self.pid = process.pid
        assert process.stdout is not None
        self.stdout = process.stdout
        self.stderr = process.stderr
        self._signalled: int | None = None

    async def wait(self) -> ExitStatus:
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
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
