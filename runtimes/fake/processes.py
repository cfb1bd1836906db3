"""A fake sandbox's processes, seen from the server.

Each process is started by the sandbox's init (see `sandbox_init.py`), in a session and
process group of its own. The server holds the other ends of its pipes, so its output is
read here exactly as from a local child, with the pipe's backpressure; its end comes from
the init's report. Signals go through the init, to the whole group.

A frozen (paused) sandbox runs nothing, its init included: a SIGKILL sent meanwhile
counts at once (the command is reported killed, as a paused Docker container's is), and
takes effect at once or, under a v1 freezer, when the sandbox thaws.

Also here: the few /proc readings the server does from the host (descendants of a process,
resident memory and CPU time), for sandboxes without a cgroup of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import sys
import termios
import time
from collections.abc import Callable, Iterable

from opensandbox_emulator.runtimes.base import (
    ExitStatus,
    ProcessInput,
    ProcessOutput,
    ProcessTerminal,
    SandboxProcess,
)
from opensandbox_emulator.runtimes.fake.control import InitChannel


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


OUTPUT_PIPE_BYTES = 1024 * 1024  # the kernel's buffer of an output pipe (the default: 64 KiB)
SMALL_READ = 64 * 1024  # what a read asks for when the pipe says it holds nothing yet

# Capabilities that exempt a process from the per-user quota of pipe pages.
_CAP_SYS_ADMIN, _CAP_SYS_RESOURCE = 21, 24


def _exempt_from_pipe_quota() -> bool:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    effective = int(line.split()[1], 16)
                    return bool(effective >> _CAP_SYS_ADMIN & 1
                                or effective >> _CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError):
        pass
    return False


WIDE_PIPES = _exempt_from_pipe_quota()


def output_pipe() -> tuple[int, int]:
    """(read end, write end) of a pipe for a process's output, its buffer widened to
    `OUTPUT_PIPE_BYTES`: a process that prints fast is then read in large chunks, each
    costing the server one read and one framing instead of sixteen. The bound stays the
    pipe's: a writer nobody reads waits once it is full, and the kernel allocates a pipe's
    pages only as they fill. Only a server exempt from the per-user quota of pipe pages
    (`fs.pipe-user-pages-soft`, 64 MiB by default) widens them: past that quota the
    kernel would give every new pipe of the user a single page."""
    read_end, write_end = os.pipe()
    if WIDE_PIPES:
        with contextlib.suppress(OSError):
            fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, OUTPUT_PIPE_BYTES)
    return read_end, write_end


_FOUR_BYTES = bytes(4)


class PipeOutput:
    """The read end `fd` of a process's pipe as a `ProcessOutput` (it owns `fd` from now
    on): each read is one read(2) of what the pipe holds, straight into the bytes returned.
    There is no buffer of ours in between: the pipe's own (see `output_pipe`) is the bound,
    and while nobody reads, the writer waits on it (backpressure), as it would on any pipe.
    The descriptor is closed at the end of the stream, or when this object is dropped.

    A read asks the pipe how much it holds (FIONREAD) and takes exactly that: a read of
    a few bytes into a buffer of a mebibyte would cost a fresh mapping of that size (the
    allocator maps buffers this large), its page faults and its unmapping, every time."""

    def __init__(self, fd: int):
        os.set_blocking(fd, False)
        self._fd = fd
        self._loop = asyncio.get_running_loop()

    async def read(self, max_bytes: int) -> bytes:
        while self._fd >= 0:
            try:
                held = fcntl.ioctl(self._fd, termios.FIONREAD, _FOUR_BYTES)
                size = int.from_bytes(held, sys.byteorder) or SMALL_READ
                data = os.read(self._fd, min(size, max_bytes))
            except BlockingIOError:
                await self._readable()
                continue
            if not data:
                self.close()
            return data
        return b""

    async def _readable(self) -> None:
        fd = self._fd
        ready: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            self._loop.remove_reader(fd)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        self.close()


class _WriteProtocol(asyncio.streams.FlowControlMixin):
    """Flow control for a pipe we write to, and the close waiter `StreamWriter` needs."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        super().__init__(loop=loop)
        self._closed: asyncio.Future[None] = loop.create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self._closed.done():
            self._closed.set_result(None)

    def _get_close_waiter(self, stream: asyncio.StreamWriter) -> asyncio.Future[None]:
        return self._closed


async def write_pipe(fd: int) -> PipeInput:
    """An asyncio writer over the write end `fd` of a pipe (owned by it from now on)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(
        lambda: _WriteProtocol(loop), os.fdopen(fd, "wb", buffering=0))
    return PipeInput(asyncio.StreamWriter(transport, protocol, None, loop))


class InitProcess(SandboxProcess):
    """A process the sandbox's init started; `pid` is its pid inside the sandbox (also its
    process group and session)."""

    def __init__(self, channel: InitChannel, pid: int, exited: asyncio.Future[ExitStatus], *,
                 stdout: ProcessOutput, stderr: ProcessOutput | None,
                 stdin: ProcessInput | None, frozen: Callable[[], bool],
                 explain_kill: Callable[[], str | None] | None = None,
                 terminal: ProcessTerminal | None = None):
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = stdin
        self.terminal = terminal
        self._channel = channel
        self._exited = exited
        self._frozen = frozen
        self._explain_kill = explain_kill
        self._signalled: int | None = None
        self._killed_while_frozen = asyncio.Event()

    async def wait(self) -> ExitStatus:
        killed = asyncio.ensure_future(self._killed_while_frozen.wait())
        try:
            await asyncio.wait({asyncio.ensure_future(asyncio.shield(self._exited)), killed},
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            killed.cancel()
        if not self._exited.done():
            return ExitStatus(signal=signal.SIGKILL)
        status = self._exited.result()
        if status.signal == signal.SIGKILL and self._signalled != signal.SIGKILL \
                and self._explain_kill is not None:
            reason = self._explain_kill()
            if reason:
                return ExitStatus(signal=signal.SIGKILL, reason=reason)
        return status

    async def signal_group(self, sig: int) -> None:
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._signalled = sig
        if self._exited.done():
            return
        self._channel.signal(self.pid, sig)
        if sig == signal.SIGKILL and self._frozen():
            self._killed_while_frozen.set()


# --- reading /proc -------------------------------------------------------------------------


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, session,
    …, see proc(5), less 3 in numbering), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode(errors="replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def _parents() -> dict[int, int]:
    table: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields is not None and fields[0] != "Z":
                table[int(entry)] = int(fields[1])
    return table


def descendants(root: int) -> set[int]:
    """Live pids descended from `root` (not `root` itself)."""
    table = _parents()
    found: set[int] = set()
    grew = True
    while grew:
        grew = False
        for pid, parent in table.items():
            if pid not in found and (parent == root or parent in found):
                found.add(pid)
                grew = True
    return found


def in_namespace_of(init_pid: int) -> set[int]:
    """Host pids of the processes in the PID namespace whose init is `init_pid`."""
    try:
        wanted = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
    except OSError:
        return set()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/pid").st_ino == wanted:
                    found.add(int(entry))
    return found


def signal_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def sample(pids: Iterable[int]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds used, resident bytes) of `pids`."""
    ticks = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    cpu = 0.0
    rss = 0
    for pid in pids:
        fields = stat_fields(pid)
        if fields is None:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / ticks
        rss += int(fields[21]) * page
    return time.monotonic(), cpu, rss
