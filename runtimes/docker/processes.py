"""Processes inside a container, through the exec API, each in its own process group.

Every `docker exec` process already leads its own session and process group inside the
container (runc starts it with `setsid`), so a command's group is the pid the exec has
inside the container. We learn that pid from a tiny `/bin/sh` wrapper, which also checks the
working directory and the program before starting the command, so a missing one is reported
the way the fake runtime reports it. The wrapper speaks first, on stderr, one line:

    OSB:pid <pid> [piped]   the command is about to start (`piped`: see below)
    OSB:nocwd               the working directory is missing
    OSB:noexec              the program is not on PATH (or not executable)

The command does not get the exec's own stdout and stderr: it writes into pipes that `cat`s
of the wrapper copy there, and the wrapper lives until those pipes close. This matters
because of how the engine ends an exec: when an exec's process exits while something still
holds its output (a child the command left running, `server &`), dockerd waits some 4 s for
that output to end, and handles no other exit of the same container meanwhile, so every
command finishing in those seconds would be reported seconds late. With the pipes in
between, only the wrapper holds the exec's output, and it ends with it. The command's exit
status then comes from the wrapper (whose own is its last `cat`'s), in-band: once the
command exited, the wrapper writes an exit line into each pipe the command wrote to, behind
what the command wrote there, so a command counts as ended only once all its output is in.
The line is tagged per exec and starts with two NUL bytes (which text output does not hold):

    <NUL><NUL>OSB:exit <tag> <status><LF>

The plumbing ignores the signals a command's group gets (INT, TERM, HUP, QUIT), so what the
command writes while it handles one still arrives, and the status is still reported; the
command itself gets them with their default actions. SIGKILL takes the plumbing down too:
the status then comes from the exec (`exec inspect`), as in an image without `cat`, where
the wrapper `exec`s the command directly. With `merge_stderr` the command's stderr goes into
its stdout pipe (`2>&1`), so both keep their write order exactly, as the fake runtime's do.
Signals reach the whole group through another exec: `kill -<sig> -<pgid>`.

The engine sends stdout and stderr multiplexed in 8-byte-header frames; `OutputPump` splits
them into two bounded buffers. A full buffer stops the pump, and so pushes back on the
command, like a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as signals
from collections.abc import Awaitable, Callable

from opensandbox_emulator.runtimes.base import ExitStatus, SandboxProcess
from opensandbox_emulator.runtimes.docker.engine import RawStream, frames
from opensandbox_emulator.runtimes.failures import ExecutableNotFound, SpawnFailed

BUFFER_LIMIT = 64 * 1024
# How long the end of a piped exec's stream may lag behind the end of its process.
EOF_AFTER_EXIT = 5.0
MARKER = b"OSB:"

# $1 = working directory ("" keeps the container's), $2 = 1 to merge stderr, $3 = the tag
# of the exit line, then argv. The plumbing ignores the interrupting signals, fd 3 is the
# exec's stderr, fd 4 the command's stdout pipe, and the plumbing's own stderr (a shell's
# "Terminated") goes nowhere. The piped handshake comes from the command's own subshell once
# it takes signals again, so a signal sent to the group as soon as the pid is known is never
# lost to the plumbing's ignoring it.
WRAPPER = r"""
if [ -n "$1" ] && ! cd -- "$1" 2>/dev/null; then echo "OSB:nocwd" >&2; exit 127; fi
merge=$2; tag=$3; shift 3
case "$1" in
  */*) [ -f "$1" ] && [ -x "$1" ] ;;
  *) command -v -- "$1" >/dev/null 2>&1 ;;
esac || { echo "OSB:noexec" >&2; exit 127; }
if ! command -v cat >/dev/null 2>&1; then
  echo "OSB:pid $$" >&2
  if [ "$merge" = 1 ]; then exec "$@" 2>&1; fi
  exec "$@"
fi
trap '' INT TERM HUP QUIT
exec 3>&2 2>/dev/null
if [ "$merge" = 1 ]; then
  { (trap - INT TERM HUP QUIT; echo "OSB:pid $$ piped" >&3; exec "$@" 3>&-) 2>&1
    printf '\000\000OSB:exit %s %s\n' "$tag" "$?"; } | cat 3>&-
else
  { { (trap - INT TERM HUP QUIT; echo "OSB:pid $$ piped" >&3; exec "$@" 3>&- 4>&-) \
        2>&1 1>&4
      rc=$?
      printf '\000\000OSB:exit %s %s\n' "$tag" "$rc" >&4
      printf '\000\000OSB:exit %s %s\n' "$tag" "$rc"; } | cat 1>&3 3>&- 4>&-
  } 4>&1 | cat 3>&-
fi
"""


def wrap(argv: list[str], cwd: str | None, merge_stderr: bool, tag: str) -> list[str]:
    return ["/bin/sh", "-c", WRAPPER, "opensandbox-exec", cwd or "",
            "1" if merge_stderr else "0", tag, *argv]


class ExitLine:
    """Takes the wrapper's exit line out of one output stream and keeps the status.

    The line may arrive in pieces, and amid output a child the command left running still
    writes: bytes that could be the start of it are held back until the next ones show
    whether they are."""

    def __init__(self, tag: str, seen: asyncio.Event):
        self._token = b"\0\0OSB:exit " + tag.encode() + b" "
        self._held = b""
        self.status: int | None = None
        self._seen = seen

    def feed(self, data: bytes) -> bytes:
        """The command's bytes among `data`, in order."""
        if self.status is not None:
            return data
        data, self._held = self._held + data, b""
        at = data.find(self._token)
        if at >= 0:
            end = data.find(b"\n", at)
            if end < 0:
                self._held = data[at:]
                return data[:at]
            digits = data[at + len(self._token):end]
            self.status = int(digits) if digits.isdigit() else 255
            self._seen.set()
            return data[:at] + data[end + 1:]
        keep = next((n for n in range(min(len(data), len(self._token) - 1), 0, -1)
                     if self._token.startswith(data[-n:])), 0)
        if keep:
            self._held = data[-keep:]
            return data[:-keep]
        return data

    def rest(self) -> bytes:
        """At the end of the stream: what was held back was the command's after all."""
        held, self._held = self._held, b""
        return held


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
    """Reads the exec's framed stream; the first stderr line is the wrapper's, and so are
    the exit lines (`ExitLine`) further on in each stream the command writes to."""

    def __init__(self, stream: RawStream, merged: bool, tag: str):
        self.stream = stream
        self.stdout = OutputBuffer()
        self.stderr: OutputBuffer | None = None if merged else OutputBuffer()
        self.exit_seen = asyncio.Event()  # an exit line arrived (on one stream or another)
        self._exits = {1: ExitLine(tag, self.exit_seen)}
        if not merged:
            self._exits[2] = ExitLine(tag, self.exit_seen)
        self.handshake: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.eof = asyncio.Event()
        self._early = bytearray()  # stderr text before the handshake (the shell's complaints)
        self._early_out = bytearray()  # stdout before the handshake
        self._pending = bytearray()
        self._task = asyncio.create_task(self._run(), name="docker-exec-output")

    @property
    def exit_status(self) -> int | None:
        """The command's status, once the exit line came on every stream it writes to."""
        statuses = [line.status for line in self._exits.values()]
        return None if None in statuses else statuses[0]

    async def _frames(self) -> None:
        async for kind, payload in frames(self.stream):
            await self._deliver(kind, payload)

    async def _deliver(self, kind: int, payload: bytes) -> None:
        if not self.handshake.done():
            if kind != 2:
                # The command's stdout is another pipe than the handshake's stderr: its
                # first output (its exit line even) can overtake the handshake.
                self._early_out += payload
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
            if self._early_out:
                early, self._early_out = bytes(self._early_out), bytearray()
                await self._deliver(1, early)
            payload = rest
            if not payload:
                return
        exit_line = self._exits.get(kind)
        if exit_line is not None:
            payload = exit_line.feed(payload)
            if not payload:
                return
        target = self.stdout if kind != 2 or self.stderr is None else self.stderr
        await target.feed(payload)

    async def _run(self) -> None:
        try:
            await self._frames()
            if self.handshake.done():
                for kind, exit_line in self._exits.items():
                    rest = exit_line.rest()
                    if rest:
                        await (self.stderr if kind == 2 and self.stderr else self.stdout
                               ).feed(rest)
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken connection ends the output like EOF
            pass
        finally:
            await self._ended(bytes(self._early + self._pending + self._early_out))

    async def _ended(self, early: bytes) -> None:
        """The stream is over: fail a handshake still awaited (with what came instead),
        close the buffers and the connection."""
        if not self.handshake.done():
            self.handshake.set_result("eof " + early.decode(errors="replace").strip())
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
                 on_exit: Callable[[ExecProcess], None], *, stdin: bool = False,
                 piped: bool = False):
        self._pump = pump
        self._piped = piped  # the status comes in-band; the exec's own is a `cat`'s
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
        """The wrapper's exit line says when the command ended. Without one (the command
        and its plumbing were killed, or the image has no `cat`) the exec API is asked:
        it has no "wait", so `exec inspect` is polled, at once when the output ends and
        with a growing interval while a command runs on (the first time only after one
        interval: most commands' exit lines come before that, and an inspect costs the
        engine as much as a small exec's round trip)."""
        interval = 0.02
        code: int | None = None
        pump = self._pump
        first = True
        while not self._killed_while_paused.is_set():
            if pump.exit_status is not None:
                code = pump.exit_status
                break
            if first and not pump.eof.is_set():
                first = False
                await self._wait_for_output(interval)
                continue
            info = await self._inspect()
            if not info:  # the container (and so the exec) is gone
                code = 128 + signals.SIGKILL
                break
            if not info.get("Running") and isinstance(info.get("ExitCode"), int):
                if self._piped:
                    # The exit line was written before the wrapper ended; it may still be
                    # on its way, just ahead of the end of the stream.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(pump.eof.wait(), EOF_AFTER_EXIT)
                    if pump.exit_status is not None:
                        continue
                code = int(info["ExitCode"])  # type: ignore[call-overload]
                break
            await self._wait_for_output(interval)
            interval = 0.02 if pump.eof.is_set() else min(interval * 2, 1.0)
        if code is None or (self._signalled is not None and code == 128 + self._signalled):
            status = ExitStatus(signal=self._signalled or signals.SIGKILL)
        else:
            status = ExitStatus(code=code)
        self._status = status
        self._on_exit(self)
        return status

    async def _wait_for_output(self, seconds: float) -> None:
        """Until the exit line or the end of the output comes (or a kill of a paused
        sandbox), at most `seconds`."""
        pump = self._pump
        pump.exit_seen.clear()
        if pump.exit_status is not None:
            return
        waits = {asyncio.ensure_future(pump.eof.wait()),
                 asyncio.ensure_future(pump.exit_seen.wait()),
                 asyncio.ensure_future(self._killed_while_paused.wait())}
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()

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
        return ExecutableNotFound(program)
    detail = handshake.removeprefix("eof").strip()
    return SpawnFailed("could not start the command through docker exec; the image needs "
                       "/bin/sh for that" + (f": {detail}" if detail else ""))
