"""Processes of fake sandboxes on a pseudo-terminal.

The server opens the terminal pair; the slave side goes to the sandbox's init as the
process's stdin, stdout and stderr, and the init makes it the controlling terminal of the
new session the process leads (`TIOCSCTTY`), so job control, Ctrl-C and `stty size` work as
on a real login. The process is the session's leader itself, so signals for its group go
through the init as for any other process.

The master side stays in the server: reads are what the terminal shows, writes are typed
input, and a resize is `TIOCSWINSZ` on it (the kernel then sends SIGWINCH).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import struct
import termios

from opensandbox_emulator.runtimes.base import TerminalSize


def set_size(fd: int, size: TerminalSize) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))


class PseudoTerminal:
    """One terminal pair: the slave goes to the process, the master stays here. It is the
    process's output (`read`), its input (`write`) and its terminal (`resize`, `close`)."""

    def __init__(self, size: TerminalSize):
        self.master, self.slave = os.openpty()
        set_size(self.master, size)
        os.set_blocking(self.master, False)
        self._closed = False

    def slave_copies(self, count: int = 3) -> list[int]:
        """Descriptors of the slave side for the process's stdin, stdout and stderr (the
        init's channel closes each once sent)."""
        return [os.dup(self.slave) for _ in range(count)]

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
        """As the process's input: typing nothing more. A terminal has no end-of-file short
        of hanging up, which `release` does once the caller is done with the process."""

    def release(self) -> None:
        self.release_slave()
        if not self._closed:
            self._closed = True
            os.close(self.master)


class TerminalControl:
    """The `ProcessTerminal` of a process on `tty`: resize it, or hang it up and free it."""

    def __init__(self, tty: PseudoTerminal):
        self._tty = tty

    async def resize(self, size: TerminalSize) -> None:
        await self._tty.resize(size)

    async def close(self) -> None:
        self._tty.release()
