"""One live interpreter inside a sandbox: its process, its two output pumps, its cells.

The interpreter is a driver (see `drivers/`) started with `Runtime.spawn(stdin=True)`, so
it runs wherever the sandbox's processes run. One pump per output pipe splits the bytes
into the user's output and the driver's messages (`framing.py`) and hands both, in order,
to the cell that is running: an `Execution`, which the `/code` stream reads. A cell ends
when the driver reported `done` on stdout *and* `sync` on stderr, so everything it printed
on either pipe is in the stream before `execution_complete`.

A driver that warms up slowly (a JVM, a Go build) says `starting` once its launcher checked
the toolchain and the working directory: the context exists from then on, and its first
cell waits for `ready`. A driver that works in a scratch directory names it (`scratch`);
if the interpreter is killed before it removed the directory itself, the server does.

An `Execution` holds a few items at a time: a client that reads slowly makes the pumps
wait, the pipes fill and the interpreter itself waits (backpressure). A client that goes
away detaches the execution: the cell runs on to its end and its output is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from opensandbox_emulator.runtimes.base import (
    ExitStatus,
    ProcessOutput,
    Runtime,
    SandboxProcess,
    SpawnRequest,
)
from opensandbox_emulator.runtimes.failures import RuntimeFailure
from opensandbox_emulator.server.execd.code.drivers import Driver, Failure
from opensandbox_emulator.server.execd.code.errors import InterpreterFailed, LanguageUnavailable
from opensandbox_emulator.server.execd.code.framing import FrameParser
from opensandbox_emulator.server.execd.errors import InvalidRequestBody

log = logging.getLogger("opensandbox.execd.code")

READ_SIZE = 64 * 1024
QUEUE_SLOTS = 16  # items in flight between the pumps and a slow stream
START_TIMEOUT = 60.0  # seconds for an interpreter to report `starting` or `ready` (IPython ~1 s)
SYNC_WAIT = 1.0  # after `done`: how long to wait for the stderr `sync` line
EXIT_DRAIN = 1.0  # after the process exited: how long to let the pumps read its last output
CLOSE_GRACE = 1.0  # an idle interpreter gets this long to exit on end-of-input
KILL_WAIT = 5.0
INTERRUPT_REPEAT = 0.25  # an interrupt is sent again this often until the cell ends
STDERR_TAIL = 2048  # bytes of stderr kept to explain a failed start
CLEANUP_TIMEOUT = 10.0  # for removing a killed interpreter's scratch directory


@dataclass(frozen=True)
class Output:
    stream: str  # "stdout" | "stderr"
    text: str


@dataclass(frozen=True)
class Result:
    """A cell's value (`execution_count` > 0) or something it displayed (0)."""

    data: dict[str, Any]
    execution_count: int = 0


@dataclass(frozen=True)
class Finished:
    execution_count: int = 0


Item = Output | Result | Failure | Finished


class Busy(Exception):
    """The interpreter is running a cell."""


class Gone(Exception):
    """The interpreter's process is gone."""


class Execution:
    """One cell: what the interpreter says about it, for the one stream that reads it."""

    def __init__(self, seq: int):
        self.seq = seq
        self.ended = asyncio.Event()  # the cell stopped (the interpreter is free again)
        self.done: dict[str, Any] | None = None
        self.synced = False
        self.detached = False
        self._ending = False
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self._space = asyncio.Event()

    async def put(self, item: Item) -> None:
        """Queue output, waiting while `QUEUE_SLOTS` items are unread (backpressure)."""
        while not self.detached and self._queue.qsize() >= QUEUE_SLOTS:
            self._space.clear()
            await self._space.wait()
        self.put_now(item)

    def put_now(self, item: Item) -> None:
        """Queue the cell's last items at once, whatever the reader's pace."""
        if not self.detached:
            self._queue.put_nowait(item)

    async def items(self) -> AsyncIterator[Item]:
        """Everything the cell produces, ending with `Finished`."""
        while True:
            item = await self._queue.get()
            self._space.set()
            yield item
            if isinstance(item, Finished):
                return

    def detach(self) -> None:
        """The stream is gone: drop what is queued and all that comes later."""
        self.detached = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._space.set()


class Interpreter:
    def __init__(self, driver: Driver, process: SandboxProcess, token: str, label: str,
                 runtime: Runtime, sandbox_id: str, cwd: str | None = None):
        self.driver = driver
        self.process = process
        self.label = label
        self.info: dict[str, Any] = {}
        self.current: Execution | None = None
        self.exit_status: ExitStatus | None = None
        self.scratch: str | None = None
        self._runtime = runtime
        self._sandbox_id = sandbox_id
        self._cwd = cwd
        self._token = token
        self._seq = 0
        self._started = asyncio.Event()  # `starting` or `ready` came, or the process exited
        self._ready = asyncio.Event()  # `ready` came, or the process exited
        self._fatal: dict[str, Any] | None = None
        self._stderr_tail = ""
        self._closing = False
        self._closed = False
        self._sync_timer: asyncio.Task[None] | None = None
        self._pumps = {"stdout": asyncio.ensure_future(self._pump(process.stdout, "stdout"))}
        if process.stderr is not None:
            self._pumps["stderr"] = asyncio.ensure_future(self._pump(process.stderr, "stderr"))
        self._watcher = asyncio.ensure_future(self._watch())

    # --- starting ------------------------------------------------------------------------

    @classmethod
    async def start(cls, runtime: Runtime, sandbox_id: str, driver: Driver, cwd: str | None,
                    *, label: str, start_timeout: float = START_TIMEOUT,
                    env: Mapping[str, str] | None = None) -> Interpreter:
        """Spawn the driver and wait for its `starting` or `ready`. Raises `SpawnFailed` as
        the runtime does, and an `ApiError` when the interpreter starts but cannot run.
        `env` (the env file's entries) goes under the driver's own variables."""
        token = secrets.token_hex(12)
        request = SpawnRequest(argv=driver.argv(token, cwd or ""),
                               env={**(env or {}), **driver.env}, stdin=True)
        process = await runtime.spawn(sandbox_id, request)
        interpreter = cls(driver, process, token, label, runtime, sandbox_id, cwd)
        if process.stdin is None:
            await interpreter.close()
            raise InterpreterFailed(f"the {runtime.name} runtime cannot write to a process's "
                                    "stdin, which code contexts need")
        await interpreter._await(interpreter._started, start_timeout)
        return interpreter

    async def wait_ready(self) -> None:
        """Wait for the driver's `ready` (its first cell does); raises as `start` does."""
        if not self._ready.is_set():
            await self._await(self._ready, self.driver.ready_timeout, starting=False)

    async def _await(self, event: asyncio.Event, seconds: float, *,
                     starting: bool = True) -> None:
        """Wait for `event`. A wait that is cancelled while the context is being created
        stops the interpreter; one of a first cell (whose client went away) does not."""
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            await self.close()
            raise InterpreterFailed(
                f"the {self.driver.language} interpreter ({self.driver.tool}) did not start "
                f"within {seconds:g} s{self._stderr_note()}") from None
        except BaseException:  # cancelled: leave nothing running behind
            if starting:
                await asyncio.shield(self.close())
            raise
        if not self.alive and not self.info:
            await self.close()
            raise self._start_failure(self._cwd)

    def _start_failure(self, cwd: str | None) -> Exception:
        driver = self.driver
        fatal = self._fatal or {}
        message = str(fatal.get("message", ""))
        if fatal.get("missing"):
            return LanguageUnavailable(
                f"{driver.language} contexts need `{fatal['missing']}` in the sandbox: "
                f"{message}; {driver.hint}.")
        if fatal.get("cwd"):
            return InvalidRequestBody(f"cwd {cwd!r} cannot be used as the context's working "
                                      f"directory: {message}")
        status = self.exit_status
        if status is not None and status.code in (126, 127):
            return LanguageUnavailable(
                f"{driver.language} contexts need `{driver.tool}`, which this sandbox cannot "
                f"run (exit status {status.code}){self._stderr_note()}; {driver.hint}.")
        reason = message or (status.description if status is not None else "it exited")
        return InterpreterFailed(f"the {driver.language} interpreter ({driver.tool}) exited "
                                 f"before it was ready: {reason}{self._stderr_note()}")

    def _stderr_note(self) -> str:
        tail = self._stderr_tail.strip()
        return f". Its stderr ends with: {tail[-500:]}" if tail else ""

    @property
    def alive(self) -> bool:
        return self.exit_status is None and not self._closed

    # --- running cells -------------------------------------------------------------------

    async def execute(self, code: str, notice: str | None = None) -> Execution:
        """Send a cell. Raises `Busy` while another cell runs, `Gone` when the process is."""
        if self.current is not None:
            raise Busy(self.label)
        await self.wait_ready()
        if not self.alive or self.process.stdin is None:
            raise Gone(self.label)
        if self.current is not None:
            raise Busy(self.label)
        self._seq += 1
        run = Execution(self._seq)
        self.current = run
        if notice:
            run.put_now(Output("stderr", notice))
        try:
            await self.process.stdin.write(self.driver.encode_run(run.seq, code))
        except (OSError, RuntimeFailure) as error:
            if self.current is run:
                self.current = None
            raise Gone(self.label) from error
        return run

    async def interrupt(self, grace: float) -> None:
        """Stop the running cell (the driver raises KeyboardInterrupt in it, or SIGINTs the
        shell's children); returns once it stopped, or after `grace` seconds. The request
        is repeated until then: one that reached the driver just before the cell began, or
        that the cell's code swallowed, is not the last word."""
        run = self.current
        if run is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while not run.ended.is_set() and self.alive and self.process.stdin is not None:
            try:
                await self.process.stdin.write(self.driver.encode_interrupt(run.seq))
            except (OSError, RuntimeFailure):
                return
            left = deadline - loop.time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.ended.wait(), min(INTERRUPT_REPEAT, left))

    # --- output ----------------------------------------------------------------------------

    async def _pump(self, stream: ProcessOutput, name: str) -> None:
        parser = FrameParser(self._token)
        try:
            while True:
                data = await stream.read(READ_SIZE)
                if not data:
                    break
                for item in parser.feed(data):
                    if isinstance(item, str):
                        await self._output(name, item)
                    else:
                        await self._message(item)
            rest = parser.finish()
            if rest:
                await self._output(name, rest)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: reading its %s failed", self.label, name)

    async def _output(self, name: str, text: str) -> None:
        if name == "stderr":
            self._stderr_tail = (self._stderr_tail + text)[-STDERR_TAIL:]
        run = self.current
        if run is not None:
            await run.put(Output(name, text))

    async def _message(self, message: dict[str, Any]) -> None:
        kind = message.get("ev")
        run = self.current
        if kind == "ready":
            self.info = message
            self._started.set()
            self._ready.set()
        elif kind == "starting":
            self._started.set()
        elif kind == "scratch":
            path = message.get("path")
            if isinstance(path, str) and path.startswith("/"):
                self.scratch = path
        elif kind == "fatal":
            self._fatal = message
        elif kind in ("result", "display"):
            data = message.get("data")
            if run is not None and isinstance(data, dict):
                count = message.get("count") if kind == "result" else 0
                await run.put(Result(data, count if isinstance(count, int) else 0))
        elif kind == "error":
            if run is not None:
                traceback = message.get("traceback")
                lines = tuple(str(line) for line in traceback) if isinstance(
                    traceback, list) else ()
                await run.put(Failure(str(message.get("ename", "")),
                                      str(message.get("evalue", "")), lines))
        elif kind in ("done", "sync"):
            if run is None or message.get("seq") != run.seq:
                return
            if kind == "done":
                run.done = message
            else:
                run.synced = True
            self._maybe_finish(run)

    def _maybe_finish(self, run: Execution) -> None:
        if run.done is None:
            return
        if run.synced:
            self._finish(run)
        elif self._sync_timer is None or self._sync_timer.done():
            self._sync_timer = asyncio.ensure_future(self._finish_later(run))

    async def _finish_later(self, run: Execution) -> None:
        """The stderr `sync` line did not come (its pipe is stuck or gone): end anyway."""
        await asyncio.sleep(SYNC_WAIT)
        self._finish(run)

    def _finish(self, run: Execution, failures: list[Failure] | None = None) -> None:
        if run._ending:
            return
        run._ending = True
        if self.current is run:
            self.current = None
        run.ended.set()
        timer = self._sync_timer
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        done = run.done or {}
        for failure in [*self.driver.completion_failures(done), *(failures or [])]:
            run.put_now(failure)
        count = done.get("count", 0)
        run.put_now(Finished(count if isinstance(count, int) else 0))

    # --- the process ---------------------------------------------------------------------

    async def _watch(self) -> None:
        status = await self.process.wait()
        pumps = [task for task in self._pumps.values() if not task.done()]
        if pumps:
            await asyncio.wait(pumps, timeout=EXIT_DRAIN)
        self.exit_status = status
        self._started.set()
        self._ready.set()
        log.info("%s: interpreter exited (%s)", self.label, status.description)
        run = self.current
        if run is None:
            return
        language = self.driver.language
        if self._closing:
            failure = Failure("ContextDeleted", "the context was deleted while this cell ran",
                              ("ContextDeleted",))
        else:
            text = (f"the {language} interpreter of this context exited "
                    f"({status.description}) while running this cell; the context's state "
                    "is lost, and its next run starts a new interpreter")
            failure = Failure("InterpreterExited", text, (text,))
        self._finish(run, [failure])

    async def close(self, *, clean_up: bool = True) -> None:
        """Stop the interpreter and whatever it started in its process group. An idle, ready
        one is first asked to exit (end of input), so its atexit handlers run. Then its
        scratch directory is removed, unless it exited cleanly (it removed it itself) or
        `clean_up` is false (the whole sandbox is going)."""
        if self._closed:
            return
        self._closing = True
        stdin = self.process.stdin
        if (self.exit_status is None and self.current is None and stdin is not None
                and self._ready.is_set()):  # one still warming up has no state to save
            with contextlib.suppress(OSError, RuntimeFailure):
                await stdin.close()
            await _wait(self._watcher, CLOSE_GRACE)
        with contextlib.suppress(OSError, RuntimeFailure):
            await self.process.signal_group(signal.SIGKILL)
        await _wait(self._watcher, KILL_WAIT)
        self._closed = True
        if stdin is not None:
            with contextlib.suppress(OSError, RuntimeFailure):
                await stdin.close()
        for task in (*self._pumps.values(), self._watcher, self._sync_timer):
            if task is not None and not task.done():
                task.cancel()
        run = self.current
        if run is not None:
            self._finish(run, [Failure("ContextDeleted", "the context was deleted "
                                             "while this cell ran", ("ContextDeleted",))])
        status = self.exit_status
        if clean_up and self.scratch and (status is None or status.code != 0):
            await self._remove_scratch(self.scratch)

    async def _remove_scratch(self, path: str) -> None:
        request = SpawnRequest(argv=["rm", "-rf", "--", path])
        try:
            process = await self._runtime.spawn(self._sandbox_id, request)
            await asyncio.wait_for(process.wait(), CLEANUP_TIMEOUT)
        except (RuntimeFailure, OSError, TimeoutError) as error:
            log.warning("%s: could not remove its scratch directory %s: %s", self.label,
                        path, error)


async def _wait(task: asyncio.Future[Any], seconds: float) -> None:
    if not task.done():
        await asyncio.wait({task}, timeout=seconds)
