"""One command: spawned through the runtime, its output pumped, its end recorded.

A command runs as `bash -c` (or `sh -c` where the sandbox has no bash) in its own process
group, through `Runtime.spawn`, so the same code drives every runtime. Its output is read
by one pump per pipe into the command's bounded `LogBuffer` and, for a foreground command,
into a small channel that the event stream reads. The channel holds a few chunks: when the
client reads slowly the pumps wait, the pipe fills, and the command itself is slowed down
(backpressure), so nothing grows without bound. When the client goes away the channel is
closed and the pumps keep going into the log alone: a disconnect never stops a command.

Timeouts and interrupts act on the whole process group, so children a command started
(`sleep 1 & sleep 100; wait`) go with it. A paused sandbox's commands are frozen (SIGSTOP)
but their timeouts keep counting wall-clock time and still fire while paused: SIGKILL
ends a stopped process too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from opensandbox_emulator.runtimes.base import (
    ExitStatus,
    ProcessOutput,
    Runtime,
    SandboxProcess,
    SpawnRequest,
)
from opensandbox_emulator.runtimes.failures import ExecutableNotFound, SpawnFailed
from opensandbox_emulator.server.clock import Clock, epoch_ms, rfc3339_nano
from opensandbox_emulator.server.execd.commands.logbuffer import LogBuffer
from opensandbox_emulator.server.execd.events import (
    Event,
    StreamItem,
    complete_event,
    encode_text_events,
    encode_text_lines,
    error_event,
    init_event,
)

log = logging.getLogger("opensandbox.execd.commands")

READ_SIZE = 1024 * 1024  # bytes a pump asks for at once (a fake sandbox's pipe holds as much)
CHANNEL_SLOTS = 4  # chunks in flight between the pumps and a slow stream
CHANNEL_BYTES = 256 * 1024  # ... and at most this many bytes of them
JOIN_LIMIT = 64 * 1024  # frames queued together are joined up to this many bytes
LINE_LIMIT = 1024 * 1024  # a line longer than this is streamed in pieces
DRAIN_IDLE = 0.05  # after exit: a pipe silent this long is considered drained
DRAIN_MAX = 2.0  # after exit: stop waiting for children that keep writing
CLOSE_WAIT = 5.0  # how long `close()` waits for a killed command to end
ENAME = "CommandExecError"
START_FAILURE_EXIT_CODE = 255  # what upstream records for a background start failure
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class CommandSpec:
    """A validated `POST /command` request."""

    command: str
    cwd: str | None = None
    background: bool = False
    timeout_ms: int | None = None
    envs: Mapping[str, str] = field(default_factory=dict)
    uid: int | None = None
    gid: int | None = None


def now_ns(clock: Clock) -> int:
    return ((clock.now() - _EPOCH) // timedelta(microseconds=1)) * 1000


# --- the stream channel ------------------------------------------------------------------


class Channel:
    """A small bounded queue between the pumps and one event stream. `put` waits while it
    is full (backpressure) and returns False once the reader has closed it. It is full at
    `capacity` items, or at `byte_limit` bytes of them (each `put` says its item's size)."""

    def __init__(self, capacity: int = CHANNEL_SLOTS, byte_limit: int | None = None):
        self._items: deque[tuple[Any, int]] = deque()
        self._capacity = capacity
        self._byte_limit = byte_limit
        self._bytes = 0
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = False

    def full(self) -> bool:
        return len(self._items) >= self._capacity or (
            self._byte_limit is not None and self._bytes >= self._byte_limit)

    async def put(self, item: Any, size: int = 0) -> bool:
        while not self.closed and self.full():
            self._writable.clear()
            await self._writable.wait()
        if self.closed:
            return False
        self._items.append((item, size))
        self._bytes += size
        self._readable.set()
        return True

    async def get(self) -> Any:
        """The next item, or None once the channel was closed (the command was dropped)."""
        while not self._items:
            if self.closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        item, size = self._items.popleft()
        self._bytes -= size
        self._writable.set()
        return item

    async def take(self) -> list[Any]:
        """Every item queued (at least one, waiting for it), or [] once closed: a reader
        that fell behind catches up in one step."""
        while not self._items:
            if self.closed:
                return []
            self._readable.clear()
            await self._readable.wait()
        items = [item for item, _ in self._items]
        self._items.clear()
        self._bytes = 0
        self._writable.set()
        return items

    def close(self) -> None:
        self.closed = True
        self._items.clear()
        self._bytes = 0
        self._writable.set()
        self._readable.set()


class LineSplitter:
    """Upstream's line rule: split on `\\n` or `\\r`, strip terminators, drop empty lines,
    hold a partial last line until its end arrives (or the command ends)."""

    def __init__(self, limit: int = LINE_LIMIT):
        self.limit = limit
        self._partial = b""

    def feed(self, chunk: bytes) -> tuple[bytes, bytes, int]:
        """The complete lines that `chunk` ends, with what was held before it, as
        `(held, chunk, end)`: the text is `held + chunk[:end]`, terminators and all, left
        unjoined so that a large chunk is never copied (`encode_text_lines` takes the
        three); the rest of `chunk` is held."""
        held = self._partial
        newline = chunk.rfind(b"\n")
        cut = max(newline, chunk.rfind(b"\r", newline + 1)) + 1  # scans the tail only
        self._partial = chunk[cut:] if cut else held + chunk
        if len(self._partial) > self.limit:
            self._partial = b""
            return held, chunk, len(chunk)
        if not cut:
            return b"", b"", 0
        return held, chunk, cut

    def flush(self) -> bytes:
        rest, self._partial = self._partial, b""
        return rest


def batch(frames: list[bytes]) -> bytes | list[bytes]:
    """Frames to go out at once: small ones joined into one write, large ones left as
    they are (each its own write), rather than copied once more only to be joined."""
    if len(frames) == 1 or sum(map(len, frames)) <= JOIN_LIMIT:
        return b"".join(frames)
    return [frame for frame in frames if frame]


# --- event sources for the stream --------------------------------------------------------


class StaticEvents:
    """A fixed list of events (background start, start failure)."""

    def __init__(self, events: Sequence[Event]):
        self._events = list(events)

    async def _iterate(self) -> AsyncIterator[Event | bytes]:
        for event in self._events:
            yield event

    def __aiter__(self) -> AsyncIterator[Event | bytes]:
        return self._iterate()

    async def aclose(self) -> None:
        return None


class ForegroundEvents:
    """`init`, one event per output line, then the terminal event; fed by the channel."""

    def __init__(self, command: Command, channel: Channel):
        self.command = command
        self.channel = channel
        self.ended = False  # the terminal event went out: the stream needs nothing more
        self._iterator: AsyncIterator[StreamItem] | None = None

    def __aiter__(self) -> AsyncIterator[StreamItem]:
        if self._iterator is None:
            self._iterator = self._iterate()
        return self._iterator

    async def _iterate(self) -> AsyncIterator[StreamItem]:
        yield init_event(self.command.id, self.command.started_at_ms)
        splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
        stamps = {"stdout": 0, "stderr": 0}
        while True:
            # Whatever the pumps queued meanwhile goes out at once.
            items = await self.channel.take()
            if not items:  # the command was dropped (its sandbox is going away)
                if self.command.terminal is None:
                    return
                items = [("end", self.command.terminal)]
            frames = []
            for item in items:
                if item[0] == "out":
                    _, name, chunk, stamp = item
                    stamps[name] = stamp
                    held, chunk, end = splitters[name].feed(chunk)
                    frames.append(encode_text_lines(name, chunk, stamp, held=held, end=end))
                    continue
                for name, splitter in splitters.items():
                    rest = splitter.flush()
                    if rest:
                        frames.append(encode_text_events(name, [rest], stamps[name]))
                frames.append(item[1].encode())
                self.ended = True
                yield batch(frames)
                return
            if any(frames):
                yield batch(frames)

    async def aclose(self) -> None:
        self.channel.close()
        self.command.detach(self.channel)
        if self._iterator is not None:
            await self._iterator.aclose()  # type: ignore[attr-defined]


# --- the command -------------------------------------------------------------------------


class Command:
    """One command of a sandbox, from start to its recorded end."""

    def __init__(self, command_id: str, spec: CommandSpec, *, clock: Clock,
                 log_capacity: int, on_finished: Callable[[Command], None] | None = None):
        self.id = command_id
        self.spec = spec
        self.clock = clock
        self.log = LogBuffer(log_capacity)
        self.started_at_ns = now_ns(clock)
        self.started_at_ms = self.started_at_ns // 1_000_000
        self._started_mono = clock.monotonic()
        self.finished_at_ns: int | None = None
        self.exit_code: int | None = None
        self.error: str | None = None
        self.start_error: str | None = None
        self.execution_time_ms = 0
        self.done = asyncio.Event()
        self._on_finished = on_finished
        self._process: SandboxProcess | None = None
        self._channel: Channel | None = None
        self._forwarding = True
        self._reading_since: dict[str, float | None] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._terminal: Event | None = None

    @property
    def background(self) -> bool:
        return self.spec.background

    @property
    def held_bytes(self) -> int:
        """Bytes of output this command holds in memory."""
        return self.log.held

    @property
    def running(self) -> bool:
        return not self.done.is_set()

    # --- starting --------------------------------------------------------------------

    def launch(self, process: SandboxProcess) -> None:
        """Start pumping and supervising `process` (already spawned)."""
        self._process = process
        if not self.background:
            self._channel = Channel(byte_limit=CHANNEL_BYTES)
        self._pumps["stdout"] = asyncio.create_task(self._pump(process.stdout, "stdout"))
        if process.stderr is not None:
            self._pumps["stderr"] = asyncio.create_task(self._pump(process.stderr, "stderr"))
        timeout = self.spec.timeout_ms / 1000 if self.spec.timeout_ms else None
        self._supervisor = asyncio.create_task(self._supervise(process, timeout),
                                               name=f"command-{self.id}")

    def fail_to_start(self, message: str) -> None:
        """Record a start failure (missing cwd or shell); the command never ran."""
        self.start_error = message
        self._finish(exit_code=START_FAILURE_EXIT_CODE, error=message)

    # --- running ---------------------------------------------------------------------

    async def _pump(self, stream: ProcessOutput, name: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._reading_since[name] = loop.time()
                chunk = await stream.read(READ_SIZE)
                self._reading_since[name] = None
                if not chunk:
                    return
                self.log.write(chunk)
                channel = self._channel
                if channel is not None and self._forwarding:
                    stamp = epoch_ms(self.clock.now())
                    if not await channel.put(("out", name, chunk, stamp), len(chunk)):
                        self.detach(channel)
        except (OSError, ValueError) as error:
            log.warning("command %s: reading its %s failed: %s", self.id, name, error)
        finally:
            self._reading_since[name] = None

    async def _supervise(self, process: SandboxProcess, limit_seconds: float | None) -> None:
        exited = asyncio.ensure_future(process.wait())
        try:
            if limit_seconds is not None:
                done, _ = await asyncio.wait({exited}, timeout=limit_seconds)
                if not done:
                    log.info("command %s: timed out after %.3f s; killing its process group",
                             self.id, limit_seconds)
                    await process.signal_group(signal.SIGKILL)
            status = await exited
            await self._drain(asyncio.get_running_loop().time())
        except asyncio.CancelledError:
            exited.cancel()
            raise
        except Exception:
            # Never leave a command "running" forever because the runtime misbehaved.
            log.exception("command %s: waiting for it failed", self.id)
            status = ExitStatus(code=-1)
        self._forwarding = False
        self._finish_with(status)
        channel = self._channel
        if channel is not None and self._terminal is not None:
            await channel.put(("end", self._terminal))

    async def _drain(self, exited_at: float) -> None:
        """Wait until the pipes are read out after the process exited: each at EOF, or
        silent for `DRAIN_IDLE` (a child the command left running may hold it open)."""
        loop = asyncio.get_running_loop()
        deadline = exited_at + DRAIN_MAX
        while True:
            pending = {name: task for name, task in self._pumps.items() if not task.done()}
            if not pending:
                return
            now = loop.time()
            if all(self._silent(name, now, exited_at) for name in pending):
                return
            channel = self._channel
            if channel is not None and channel.full():
                # The client is what is slow, not the command: that is backpressure, and
                # the output already written must all reach it.
                deadline = max(deadline, now + DRAIN_MAX)
            if now >= deadline:
                return
            await asyncio.wait(pending.values(), timeout=DRAIN_IDLE / 2)

    def _silent(self, name: str, now: float, exited_at: float) -> bool:
        since = self._reading_since.get(name)
        return since is not None and now - max(since, exited_at) >= DRAIN_IDLE

    def _finish_with(self, status: ExitStatus) -> None:
        error = None if status.code == 0 else status.description
        self._finish(exit_code=status.exit_code, error=error)

    def _finish(self, *, exit_code: int, error: str | None) -> None:
        self.exit_code = exit_code
        self.error = error
        self.log.compact()
        self.finished_at_ns = now_ns(self.clock)
        self.execution_time_ms = int((self.clock.monotonic() - self._started_mono) * 1000)
        stamp = epoch_ms(self.clock.now())
        if error is None:
            self._terminal = complete_event(self.execution_time_ms, stamp)
        elif self.start_error is not None:
            self._terminal = error_event(ENAME, error, [], stamp)
        else:
            self._terminal = error_event(ENAME, str(exit_code), [error], stamp)
        self.done.set()
        log.debug("command %s finished: exit code %s", self.id, exit_code)
        if self._on_finished is not None:
            self._on_finished(self)

    @property
    def terminal(self) -> Event | None:
        """The event that ends this command's stream, once it has ended."""
        return self._terminal

    def detach(self, channel: Channel) -> None:
        """The stream reading `channel` is gone; output keeps going to the log only."""
        if self._channel is channel:
            self._channel = None

    # --- the stream ------------------------------------------------------------------

    def events(self) -> StaticEvents | ForegroundEvents:
        """What `POST /command` streams for this command."""
        init = init_event(self.id, self.started_at_ms)
        if self.start_error is not None:
            assert self._terminal is not None
            return StaticEvents([init, self._terminal])
        if self.background:
            return StaticEvents([init, complete_event(
                int((self.clock.monotonic() - self._started_mono) * 1000),
                epoch_ms(self.clock.now()))])
        assert self._channel is not None, "a foreground command streams once"
        return ForegroundEvents(self, self._channel)

    # --- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """`GET /command/status/{id}`: snake_case keys; the unset ones left out."""
        body: dict[str, Any] = {"id": self.id, "content": self.spec.command,
                                "running": self.running}
        if self.exit_code is not None:
            body["exit_code"] = self.exit_code
        if self.error:
            body["error"] = self.error
        body["started_at"] = rfc3339_nano(self.started_at_ns)
        if self.finished_at_ns is not None:
            body["finished_at"] = rfc3339_nano(self.finished_at_ns)
        return body

    # --- stopping --------------------------------------------------------------------

    async def interrupt(self, grace_seconds: float) -> None:
        """SIGTERM to the group, SIGKILL after the grace period; returns once it ended."""
        process = self._process
        if process is None or not self.running:
            return
        await process.signal_group(signal.SIGTERM)
        if await self._ended_within(grace_seconds):
            return
        await process.signal_group(signal.SIGKILL)
        await self._ended_within(CLOSE_WAIT)

    async def _ended_within(self, seconds: float) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.done.wait(), timeout=seconds)
        return self.done.is_set()

    async def close(self) -> None:
        """Kill the command (if it still runs) and stop every task it has; an open stream
        ends (with the terminal event when there is one)."""
        process = self._process
        if process is not None and self.running:
            await process.signal_group(signal.SIGKILL)
            await self._ended_within(CLOSE_WAIT)
        self.forget()
        if self._supervisor is not None and not self._supervisor.done():
            self._supervisor.cancel()
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def forget(self) -> None:
        """The registry dropped this finished command: stop reading what children it left
        running still print. A stream still being read is left to finish."""
        for task in self._pumps.values():
            if not task.done():
                task.cancel()


# --- spawning ----------------------------------------------------------------------------


async def spawn_shell(runtime: Runtime, sandbox_id: str, spec: CommandSpec) -> SandboxProcess:
    """`bash -c <command>`, or `sh -c` when the sandbox has no bash (as upstream HEAD).
    Raises `SpawnFailed` with the runtime's message (a missing cwd, no shell at all)."""
    failures: list[SpawnFailed] = []
    for shell in ("bash", "sh"):
        request = SpawnRequest(argv=[shell, "-c", spec.command], cwd=spec.cwd or None,
                               env=dict(spec.envs), uid=spec.uid, gid=spec.gid,
                               merge_stderr=spec.background)
        try:
            return await runtime.spawn(sandbox_id, request)
        except ExecutableNotFound as error:
            failures.append(error)
    raise SpawnFailed("; ".join(failure.message for failure in failures))
