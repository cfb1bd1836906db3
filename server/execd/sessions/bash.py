"""Bash sessions: a remembered environment and working directory, and runs in them.

A session is not a live shell (neither is upstream's): it is a record of what its runs
exported or unset and where the last one ended up. Each run is a fresh bash in its own
process group (`script.py` says what it executes); its stdout and stderr are one pipe, and
each non-empty line becomes one `stdout` event. A run ends when its output does, so a
background job that keeps stdout open keeps the run open, as upstream's does.

Where upstream fails its users this emulator does not: a timeout kills the run's whole
process group and ends the stream with an `error` event (the session stays usable);
deleting the session, a client that goes away, and the sandbox's end kill every run's
group, not only the last bash.

The env file is read for every run and lies under the session's own changes: its entries
apply unless the session itself exported or unset the same name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from collections.abc import AsyncIterator

from opensandbox_emulator.runtimes.base import SandboxProcess, SpawnRequest
from opensandbox_emulator.runtimes.failures import SpawnFailed
from opensandbox_emulator.server.clock import Clock, epoch_ms
from opensandbox_emulator.server.execd.commands.runner import Channel
from opensandbox_emulator.server.execd.envfile import env_file_entries
from opensandbox_emulator.server.execd.events import (
    Event,
    complete_event,
    encode_text_events,
    error_event,
    init_event,
)
from opensandbox_emulator.server.execd.sandbox import ExecdSandbox
from opensandbox_emulator.server.execd.sessions.script import (
    Markers,
    build_script,
    changes_between,
    parse_export_dump,
)

log = logging.getLogger("opensandbox.execd.sessions")

PART_NAME = "bash-sessions"
ENAME = "CommandExecError"
MAX_TIMEOUT_MS = 24 * 3600 * 1000  # a run without a timeout still ends within a day
READ_SIZE = 64 * 1024
LINE_LIMIT = 1024 * 1024  # a longer line is sent in pieces
AFTER_KILL = 2.0  # how long output may go on after a run's group was killed
STOP_WAIT = 5.0


class SessionNotFound(LookupError):
    pass


class SessionGone(RuntimeError):
    """The sandbox has no bash for a session run (or cannot run processes now)."""


def go_duration(ms: int) -> str:
    """Go's `time.Duration.String()` of whole milliseconds: `500ms`, `5s`, `1m0s`, `1h2m3.5s`."""
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{minutes}m{seconds}"
    return seconds


class SessionRun:
    """One run: its process, its output read line by line, its end. An event source."""

    def __init__(self, session: BashSession, process: SandboxProcess, markers: Markers,
                 timeout_ms: int, clock: Clock):
        self.session = session
        self.process = process
        self.markers = markers
        self.clock = clock
        self.timeout_ms = timeout_ms
        self.started_ms = epoch_ms(clock.now())
        self._started = clock.monotonic()
        self._channel = Channel()
        self._stopped: str | None = None  # "killed" | "timeout"
        self._ended = False
        self._phase = "start"
        self._start_dump: list[str] = []
        self._end_dump: list[str] = []
        self._pwd: str | None = None
        self._exit_code: int | None = None
        self._task = asyncio.create_task(self._run(), name=f"session-{session.id}-run")

    # --- reading the output ------------------------------------------------------------

    async def _read(self) -> None:
        partial = b""
        while True:
            chunk = await self.process.stdout.read(READ_SIZE)
            if not chunk:
                break
            *lines, partial = (partial + chunk).split(b"\n")
            while len(partial) > LINE_LIMIT:
                lines.append(partial[:LINE_LIMIT])
                partial = partial[LINE_LIMIT:]
            for line in lines:
                await self._line(line[:-1] if line.endswith(b"\r") else line)
        if partial:
            await self._line(partial.rstrip(b"\r"))

    async def _line(self, raw: bytes) -> None:
        text = raw.decode(errors="replace")
        markers = self.markers
        if self._phase == "start":
            if text == markers.body:
                self._phase = "user"
            elif text != markers.start:
                self._start_dump.append(text)
            return
        if text == markers.env and self._phase == "user":
            self._phase = "env"
            return
        if self._phase == "env":
            if text.startswith(markers.pwd):
                self._pwd = text[len(markers.pwd):]
            elif text.startswith(markers.exit):
                with contextlib.suppress(ValueError):
                    self._exit_code = int(text[len(markers.exit):])
                self._phase = "after"  # a job left running may still print
            else:
                self._end_dump.append(text)
            return
        if raw:  # upstream drops empty lines
            stamp = epoch_ms(self.clock.now())
            await self._channel.put(encode_text_events("stdout", [raw], stamp))

    # --- supervising ---------------------------------------------------------------------

    async def _run(self) -> None:
        reading = asyncio.ensure_future(self._read())
        terminal: Event
        try:
            done, _ = await asyncio.wait({reading}, timeout=self.timeout_ms / 1000)
            if not done and self._stopped is None:
                self._stopped = "timeout"
                await self.process.signal_group(signal.SIGKILL)
            if not reading.done():
                await asyncio.wait({reading}, timeout=AFTER_KILL if self._stopped else None)
            reading.cancel()
            status = await self.process.wait()
            terminal = self._finish(status.exit_code, status.description)
        except asyncio.CancelledError:
            reading.cancel()
            raise
        except Exception as error:  # never leave a run open because the runtime misbehaved
            log.exception("session %s: a run failed", self.session.id)
            reading.cancel()
            terminal = error_event(ENAME, "-1", [str(error)], epoch_ms(self.clock.now()))
        finally:
            self.session.runs.discard(self)
            self._ended = True
        await self._channel.put(("end", terminal))

    def _finish(self, process_code: int, description: str) -> Event:
        stamp = epoch_ms(self.clock.now())
        if self._stopped == "timeout":
            return error_event(ENAME, "-1", [f"timeout after {go_duration(self.timeout_ms)}"],
                               stamp)
        if self._stopped == "killed":
            return error_event(ENAME, "-1", ["signal: killed"], stamp)
        if self._phase in ("env", "after"):  # the script got past the user's text
            self.session.remember(parse_export_dump(self._start_dump),
                                  parse_export_dump(self._end_dump), self._pwd)
        code = self._exit_code if self._exit_code is not None else process_code
        if code == 0:
            elapsed = int((self.clock.monotonic() - self._started) * 1000)
            return complete_event(elapsed, stamp)
        reason = description if process_code != 0 else f"command exited with code {code}"
        return error_event(ENAME, str(code), [reason], stamp)

    async def stop(self) -> None:
        """Kill the run's whole process group and wait for its end."""
        if self._ended:
            return
        if self._stopped is None:
            self._stopped = "killed"
        await self.process.signal_group(signal.SIGKILL)
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._task), STOP_WAIT)

    # --- the stream ----------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Event | bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event | bytes]:
        yield init_event(self.session.id, self.started_ms)
        while True:
            item = await self._channel.get()
            if item is None:
                return
            if isinstance(item, tuple):
                yield item[1]
                return
            yield item

    async def aclose(self) -> None:
        """The client went away (or the stream ended): a run nobody reads is stopped."""
        self._channel.close()
        await self.stop()


class BashSession:
    def __init__(self, session_id: str, cwd: str | None):
        self.id = session_id
        self.cwd = cwd
        self.changes: dict[str, str | None] = {}
        self.runs: set[SessionRun] = set()

    def remember(self, before: dict[str, str], after: dict[str, str], pwd: str | None) -> None:
        """What a run that reached its end exported, unset, and where it ended up."""
        self.changes.update(changes_between(before, after))
        if pwd:
            self.cwd = pwd

    async def stop(self) -> None:
        await asyncio.gather(*(run.stop() for run in list(self.runs)))


class BashSessions:
    """The sessions of one sandbox (a part of its `ExecdSandbox`)."""

    def __init__(self, sandbox: ExecdSandbox):
        self.sandbox = sandbox
        self._sessions: dict[str, BashSession] = {}

    def create(self, cwd: str | None) -> BashSession:
        session = BashSession(str(uuid.uuid4()), cwd)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> BashSession:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        return session

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    async def run(self, session: BashSession, command: str, cwd: str | None,
                  timeout_ms: int | None) -> SessionRun:
        sandbox = self.sandbox
        markers = Markers.new()
        script = build_script(command, session.changes, cwd or session.cwd, markers)
        request = SpawnRequest(argv=["bash", "--noprofile", "--norc", "-c", script, "bash"],
                               env=await env_file_entries(sandbox), merge_stderr=True)
        try:
            process = await sandbox.runtime.spawn(sandbox.sandbox_id, request)
        except SpawnFailed as error:
            raise SessionGone(error.message) from error
        limit = timeout_ms if timeout_ms else MAX_TIMEOUT_MS
        run = SessionRun(session, process, markers, min(limit, MAX_TIMEOUT_MS), sandbox.clock)
        session.runs.add(run)
        return run

    async def delete(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            raise SessionNotFound(session_id)
        await session.stop()

    async def close(self) -> None:
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(session.stop() for session in sessions))


def sessions_of(sandbox: ExecdSandbox) -> BashSessions:
    registry: BashSessions = sandbox.part(PART_NAME, BashSessions)
    return registry
