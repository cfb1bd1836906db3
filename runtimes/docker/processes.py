"""Processes inside a container, through the exec API, each in its own process group.

Every `docker exec` process already leads its own session and process group inside the
container (runc starts it with `setsid`), so a command's group is the pid it has inside the
container. We learn that pid from a tiny `/bin/sh` wrapper, which also checks the working
directory and the program before `exec`-ing the command, so a missing one is reported the
way the fake runtime reports it. The wrapper speaks first, on stderr, one line:

    OSB:pid <pid>      the command is about to start (then `exec`)
    OSB:nocwd          the working directory is missing
    OSB:noexec         the program is not on PATH (or not executable)

With `merge_stderr` the wrapper redirects the command's stderr into its stdout (`2>&1`), so
both streams share one pipe and keep their write order exactly, as the fake runtime's do.
Signals reach the whole group through another exec: `kill -<sig> -<pgid>`.

The engine sends stdout and stderr multiplexed in 8-byte-header frames; `OutputPump` splits
them into two bounded buffers. A full buffer stops the pump, and so pushes back on the
command, like a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as signals
import struct
from collections.abc import Awaitable, Callable

from runtimes.base import ExecutableNotFound, ExitStatus, SandboxProcess, SpawnFailed
from runtimes.docker.engine import RawStream

BUFFER_LIMIT = 64 * 1024
MARKER = b"OSB:"

# $1 = working directory ("" keeps the container's), $2 = 1 to merge stderr, then argv.
WRAPPER = r"""
if [ -n "$1" ] && ! cd -- "$1" 2>/dev/null; then echo "OSB:nocwd" >&2; exit 127; fi
merge=$2; shift 2
case "$1" in
  */*) [ -f "$1" ] && [ -x "$1" ] ;;
  *) command -v -- "$1" >/dev/null 2>&1 ;;
esac || { echo "OSB:noexec" >&2; exit 127; }
echo "OSB:pid $$" >&2
if [ "$merge" = 1 ]; then exec "$@" 2>&1; fi
exec "$@"
"""


def wrap(argv: list[str], cwd: str | None, merge_stderr: bool) -> list[str]:
    return ["/bin/sh", "-c", WRAPPER, "opensandbox-exec", cwd or "",
            "1" if merge_stderr else "0", *argv]


class OutputBuffer:
    """One output stream of a process: `read(n)` as from a pipe; bounded."""

    def __init__(self, limit: int = BUFFER_LIMIT):
        self._data = bytearray()
        self._limit = limit
        self._eof = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    async def read(self, max_bytes: int) -> bytes:
        while not self._data and not self._eof:
            self._readable.clear()
            await self._readable.wait()
        chunk = bytes(self._data[:max_bytes])
        del self._data[:max_bytes]
        if len(self._data) < self._limit:
            self._writable.set()
        return chunk

    async def feed(self, data: bytes) -> None:
        while len(self._data) >= self._limit and not self._eof:
            self._writable.clear()
            await self._writable.wait()
        self._data += data
        self._readable.set()

    def close(self) -> None:
        self._eof = True
        self._readable.set()
        self._writable.set()


class OutputPump:
    """Reads the exec's framed stream; the first stderr line is the wrapper's."""

    def __init__(self, stream: RawStream, merged: bool):
        self.stream = stream
        self.stdout = OutputBuffer()
        self.stderr: OutputBuffer | None = None if merged else OutputBuffer()
        self.handshake: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.eof = asyncio.Event()
        self._early = bytearray()  # stdout or stderr text seen before the handshake
        self._pending = bytearray()
        self._task = asyncio.create_task(self._run(), name="docker-exec-output")

    async def _frames(self) -> None:
        buffer = bytearray()
        while True:
            data = await self.stream.read(65536)
            if not data:
                return
            buffer += data
            while len(buffer) >= 8:
                kind, size = struct.unpack(">BxxxL", bytes(buffer[:8]))
                if len(buffer) < 8 + size:
                    break
                payload = bytes(buffer[8:8 + size])
                del buffer[:8 + size]
                await self._deliver(kind, payload)

    async def _deliver(self, kind: int, payload: bytes) -> None:
        if not self.handshake.done():
            if kind != 2:
                self._early += payload
                return
            self._pending += payload
            line, newline, rest = bytes(self._pending).partition(b"\n")
            if not newline:
                return
            self._pending.clear()
            if not line.startswith(MARKER):
                self._early += line + newline
                self._pending += rest
                return
            self.handshake.set_result(line[len(MARKER):].decode(errors="replace"))
            if self._early:  # cannot happen (the command starts after the marker)
                await self.stdout.feed(bytes(self._early))
                self._early.clear()
            payload = rest
            if not payload:
                return
        target = self.stdout if kind != 2 or self.stderr is None else self.stderr
        await target.feed(payload)

    async def _run(self) -> None:
        try:
            await self._frames()
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken connection ends the output like EOF
            pass
        finally:
            if not self.handshake.done():
                early = bytes(self._early + self._pending).decode(errors="replace").strip()
                self.handshake.set_result("eof " + early)
            self.stdout.close()
            if self.stderr is not None:
                self.stderr.close()
            self.eof.set()
            with contextlib.suppress(Exception):
                await self.stream.close()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


class ExecInput:
    """The process's stdin: the write side of the exec's connection. `close` half-closes
    it, and the engine then closes the process's stdin (end-of-file)."""

    def __init__(self, stream: RawStream):
        self._stream = stream
        self._closed = False

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise BrokenPipeError("stdin is closed")
        try:
            await self._stream.write(data)
        except (ConnectionError, RuntimeError) as error:
            raise BrokenPipeError(str(error)) from error

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self._stream.close_write()


Inspect = Callable[[], Awaitable[dict[str, object]]]
Signaller = Callable[[int, int], Awaitable[bool]]


class ExecProcess(SandboxProcess):
    """A process started through the exec API; `pgid` is its pid inside the container."""

    def __init__(self, pump: OutputPump, pgid: int, inspect: Inspect, signaller: Signaller,
                 on_exit: Callable[[ExecProcess], None], *, stdin: bool = False):
        self._pump = pump
        self.stdin = ExecInput(pump.stream) if stdin else None
        self.pgid = pgid
        self.stdout = pump.stdout
        self.stderr = pump.stderr
        self._inspect = inspect
        self._signaller = signaller
        self._on_exit = on_exit
        self._signalled: int | None = None
        self._status: ExitStatus | None = None
        self._waiting: asyncio.Task[ExitStatus] | None = None
        self._killed_while_paused = asyncio.Event()

    async def wait(self) -> ExitStatus:
        if self._status is not None:
            return self._status
        if self._waiting is None:
            self._waiting = asyncio.create_task(self._poll())
        return await asyncio.shield(self._waiting)

    async def _poll(self) -> ExitStatus:
        """The exec API has no "wait": poll `exec inspect`, at once when the output ends
        (the usual case) and with a growing interval while a command runs on."""
        interval = 0.02
        code: int | None = None
        while not self._killed_while_paused.is_set():
            info = await self._inspect()
            if not info:  # the container (and so the exec) is gone
                code = 128 + signals.SIGKILL
                break
            if not info.get("Running") and isinstance(info.get("ExitCode"), int):
                code = int(info["ExitCode"])  # type: ignore[call-overload]
                break
            wake = asyncio.ensure_future(self._pump.eof.wait())
            killed = asyncio.ensure_future(self._killed_while_paused.wait())
            await asyncio.wait({wake, killed}, timeout=interval,
                               return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()
            killed.cancel()
            interval = 0.02 if self._pump.eof.is_set() else min(interval * 2, 1.0)
        if code is None or (self._signalled is not None and code == 128 + self._signalled):
            status = ExitStatus(signal=self._signalled or signals.SIGKILL)
        else:
            status = ExitStatus(code=code)
        self._status = status
        self._on_exit(self)
        return status

    async def signal_group(self, sig: int) -> None:
        if sig in (signals.SIGKILL, signals.SIGTERM, signals.SIGINT, signals.SIGHUP):
            self._signalled = sig
        delivered = await self._signaller(self.pgid, sig)
        if not delivered and sig == signals.SIGKILL:
            # The sandbox is paused: the kill is queued for when it resumes, and the
            # command counts as killed now (a paused sandbox's timeouts still fire).
            self._killed_while_paused.set()

    async def close(self) -> None:
        """Stop reading (the runtime's shutdown); the process itself is left alone."""
        if self._waiting is not None:
            self._waiting.cancel()
        await self._pump.close()


def spawn_failure(handshake: str, program: str, cwd: str | None) -> SpawnFailed:
    if handshake == "nocwd":
        return SpawnFailed(f"working directory {cwd} does not exist in the sandbox: "
                           "no such file or directory")
    if handshake == "noexec":
        return ExecutableNotFound(f'exec: "{program}": executable file not found in $PATH')
    detail = handshake.removeprefix("eof").strip()
    return SpawnFailed("could not start the command through docker exec; the image needs "
                       "/bin/sh for that" + (f": {detail}" if detail else ""))
