"""Processes of fake sandboxes on a pseudo-terminal.

The server opens the terminal pair; the process gets the slave side as stdin, stdout and
stderr, and `setsid --ctty` (util-linux, run inside the sandbox in front of the command)
makes the command a new session's leader with that terminal as its controlling terminal,
so job control, Ctrl-C and `stty size` work as on a real login. The session's leader is
found through /proc below the spawned process (bwrap, or `setsid` itself without
isolation), and signals for the process's group go to the leader's group.

The master side stays in the server: reads are what the terminal shows, writes are typed
input, and a resize is `TIOCSWINSZ` on it (the kernel then sends SIGWINCH).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import termios

from opensandbox_emulator.runtimes.base import ExitStatus, SandboxProcess, TerminalSize
from opensandbox_emulator.runtimes.fake.processes import LocalProcess, stat_fields

# In front of the command inside the sandbox: a new session with the terminal as its
# controlling terminal; `--wait` keeps the exit status when setsid has to fork first.
CONTROLLING_TERMINAL = ["setsid", "--wait", "--ctty"]


def set_size(fd: int, size: TerminalSize) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))


class PseudoTerminal:
    """One terminal pair: the slave goes to the process, the master stays here."""

    def __init__(self, size: TerminalSize):
        self.master, self.slave = os.openpty()
        set_size(self.master, size)
        os.set_blocking(self.master, False)
        self._closed = False

    def stdio(self) -> dict[str, int]:
        return {"stdin": self.slave, "stdout": self.slave, "stderr": self.slave}

    def release_slave(self) -> None:
        """After the spawn: only the process holds the slave, so reads end with it."""
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1

    async def read(self, max_bytes: int) -> bytes:
        loop = asyncio.get_running_loop()
        while not self._closed:
            try:
                return os.read(self.master, max_bytes)
            except BlockingIOError:
                pass
            except OSError as error:
                if error.errno == errno.EIO:  # every holder of the slave side is gone
                    return b""
                raise
            ready = loop.create_future()
            loop.add_reader(self.master, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(self.master)
        return b""

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            if self._closed:
                raise BrokenPipeError("the terminal is closed")
            try:
                view = view[os.write(self.master, view):]
                continue
            except BlockingIOError:
                pass
            ready = loop.create_future()
            loop.add_writer(self.master, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_writer(self.master)

    async def resize(self, size: TerminalSize) -> None:
        if not self._closed:
            set_size(self.master, size)

    async def close(self) -> None:
        """Typing nothing more: a terminal has no end-of-file short of hanging up, which
        `release` does once the caller is done with the process."""

    def release(self) -> None:
        self.release_slave()
        if not self._closed:
            self._closed = True
            os.close(self.master)


class TerminalProcess(SandboxProcess):
    """A `LocalProcess` (bwrap or setsid) whose command leads its own session on `tty`."""

    def __init__(self, wrapper: LocalProcess, tty: PseudoTerminal):
        self._wrapper = wrapper
        self._tty = tty
        self._leader: int | None = None
        self._signalled: int | None = None
        self.stdout = tty
        self.stderr = None
        self.stdin = tty
        self.terminal = self

    async def resize(self, size: TerminalSize) -> None:
        await self._tty.resize(size)

    async def wait(self) -> ExitStatus:
        status = await self._wrapper.wait()
        # The wrapper reports a command killed by signal N as 128+N; when we sent N, it is
        # the signal.
        if self._signalled is not None and status.code == 128 + self._signalled:
            return ExitStatus(signal=self._signalled)
        return status

    def _find_leader(self) -> int | None:
        """The session leader below the wrapper: the command itself."""
        if self._leader is not None:
            return self._leader
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            fields = stat_fields(int(entry)) if entry.isdigit() else None
            if fields is not None and fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
        pending = list(children.get(self._wrapper.pid, []))
        while pending:
            pid = pending.pop()
            with contextlib.suppress(OSError):
                if os.getsid(pid) == pid:
                    self._leader = pid
                    return pid
            pending.extend(children.get(pid, []))
        return None

    async def signal_group(self, sig: int) -> None:
        self._signalled = sig
        leader = await asyncio.to_thread(self._find_leader)
        if leader is None:  # not started yet, or gone: the wrapper's group is all there is
            await self._wrapper.signal_group(sig)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader, sig)

    async def close(self) -> None:
        self._tty.release()
