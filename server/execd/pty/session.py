"""PTY sessions: a shell (or one command) on a pseudo-terminal, and the one client on it.

`POST /pty` only records the session; its process starts when a client connects, on a
terminal (`SpawnRequest.terminal`) or, with `pty=0`, on plain pipes. Everything the
process prints goes into a bounded replay buffer (`replay.py`) and, while a client is
attached, to that client. One client at a time: another is refused unless it takes over,
which evicts the first. A client that goes away leaves the process running; its output is
still recorded. When the process exits the client gets `exit` and a close, the session
stays (not running), and the next client starts the shell again over the same buffer, as
upstream's execd does. Deleting the session, or the sandbox's end, kills the process group.

Nothing here knows WebSockets: a client is an `Attachment`, a bounded outbox of frames
(bytes, text, or a `Close`) that the route sends, and the route calls `write`, `resize` and
`signal` with what the client sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from dataclasses import dataclass

from opensandbox_emulator.runtimes.base import (
    ProcessOutput,
    SandboxProcess,
    SpawnRequest,
    TerminalSize,
)
from opensandbox_emulator.runtimes.failures import SpawnFailed
from opensandbox_emulator.server.execd.envfile import env_file_entries
from opensandbox_emulator.server.execd.pty import protocol
from opensandbox_emulator.server.execd.pty.replay import ReplayBuffer
from opensandbox_emulator.server.execd.sandbox import ExecdSandbox

log = logging.getLogger("opensandbox.execd.pty")

PART_NAME = "pty-sessions"
OUTBOX_SLOTS = 64  # frames queued for a client; a client this far behind is waited for
SEND_TIMEOUT = 10.0  # a client that takes no frame for this long is dropped (as upstream)
DRAIN_AFTER_EXIT = 1.0  # output a child still prints after the process exited
STOP_WAIT = 5.0
# A terminal needs a type for `vi`, `top` or curses to draw; upstream passes none (so they
# fail until the user sets one). Used where neither the sandbox nor the env file has one.
DEFAULT_TERM = "xterm-256color"


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


class AlreadyConnected(RuntimeError):
    pass


class StartFailed(RuntimeError):
    pass


class Attachment:
    """One connected client: what is to be sent to it, in order."""

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[bytes | str | Close] = asyncio.Queue(OUTBOX_SLOTS)
        self.closed = False

    async def push(self, item: bytes | str | Close) -> bool:
        """Queue `item`; False when the client is gone or stopped taking frames."""
        if self.closed:
            return False
        try:
            await asyncio.wait_for(self.outbox.put(item), SEND_TIMEOUT)
        except TimeoutError:
            self.evict(Close(1011, "client too slow"))
            return False
        if isinstance(item, Close):
            self.closed = True
        return True

    def evict(self, close: Close) -> None:
        """Close now, ahead of whatever is still queued."""
        if self.closed:
            return
        self.closed = True
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.outbox.put_nowait(close)


class PtySession:
    def __init__(self, sandbox: ExecdSandbox, session_id: str, cwd: str | None,
                 command: str | None):
        self.sandbox = sandbox
        self.id = session_id
        self.cwd = cwd
        self.command = command
        self.replay = ReplayBuffer()
        self.size = TerminalSize()
        self.mode = "pty"
        self.process: SandboxProcess | None = None
        self.client: Attachment | None = None
        self._pump: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    @property
    def running(self) -> bool:
        return self._pump is not None and not self._pump.done()

    def info(self) -> dict[str, object]:
        return {"session_id": self.id, "running": self.running,
                "output_offset": self.replay.end}

    # --- clients -------------------------------------------------------------------------

    def attach(self, since: int, *, takeover: bool, mode: str) -> Attachment:
        """A new client: replay from `since`, then `connected` with the mode of the
        process (the running one's, or `mode` it is about to start in). Raises
        `AlreadyConnected` when another client holds the session and this one does not
        take over."""
        holder = self.client
        if holder is not None and not holder.closed:
            if not takeover:
                raise AlreadyConnected(self.id)
            holder.evict(Close(protocol.CLOSE_TAKEN_OVER, "TAKEN_OVER"))
        client = Attachment()
        offset, data = self.replay.since(since)
        if data:
            client.outbox.put_nowait(protocol.replay_frame(offset, data))
        client.outbox.put_nowait(protocol.connected(self.id, self.mode if self.running
                                                    else mode))
        self.client = client
        return client

    def detach(self, client: Attachment) -> None:
        client.closed = True
        if self.client is client:
            self.client = None

    async def ensure_started(self, mode: str) -> None:
        """Start the process unless it runs. Raises `StartFailed`."""
        async with self._starting:
            if self.running:
                return
            self.mode = mode
            argv = ["bash", "--norc", "--noprofile"]
            if self.command:
                argv += ["-c", self.command]
            env = await env_file_entries(self.sandbox)
            runtime, sandbox_id = self.sandbox.runtime, self.sandbox.sandbox_id
            if mode == "pty" and "TERM" not in env and \
                    "TERM" not in runtime.environment(sandbox_id):
                env["TERM"] = DEFAULT_TERM
            request = SpawnRequest(argv=argv, cwd=self.cwd, env=env,
                                   terminal=self.size if mode == "pty" else None,
                                   stdin=mode == "pipe")
            try:
                process = await runtime.spawn(sandbox_id, request)
            except SpawnFailed as error:
                raise StartFailed(error.message) from error
            self.process = process
            self._pump = asyncio.create_task(self._run(process), name=f"pty-{self.id}")

    # --- the process ---------------------------------------------------------------------

    async def _forward(self, stream: ProcessOutput, channel: int) -> None:
        while True:
            data = await stream.read(protocol.FRAME_LIMIT)
            if not data:
                return
            self.replay.append(data)
            client = self.client
            if client is not None and not await client.push(
                    protocol.output_frame(channel, data)):
                self.detach(client)

    async def _run(self, process: SandboxProcess) -> None:
        readers = [asyncio.ensure_future(self._forward(process.stdout, protocol.STDOUT))]
        if process.stderr is not None:
            readers.append(asyncio.ensure_future(self._forward(process.stderr,
                                                               protocol.STDERR)))
        try:
            status = await process.wait()
            await asyncio.wait(readers, timeout=DRAIN_AFTER_EXIT)
        except Exception:
            log.exception("pty %s: waiting for its process failed", self.id)
            exit_code = -1
        else:
            exit_code = status.exit_code
        finally:
            for reader in readers:
                reader.cancel()
            if process.terminal is not None:
                await process.terminal.close()
            elif process.stdin is not None:
                await process.stdin.close()
        client = self.client
        if client is not None:
            await client.push(protocol.exited(exit_code))
            await client.push(Close(protocol.CLOSE_EXITED, "process exited"))
            self.detach(client)

    async def write(self, data: bytes) -> None:
        """Typed input. Raises `OSError` when the process can take no more."""
        process = self.process
        if process is None or process.stdin is None or not self.running:
            raise BrokenPipeError("the process is not running")
        await process.stdin.write(data)

    async def resize(self, cols: int, rows: int) -> None:
        self.size = TerminalSize(cols=cols, rows=rows)
        process = self.process
        if process is not None and process.terminal is not None and self.running:
            await process.terminal.resize(self.size)

    async def signal(self, sig: int) -> None:
        process = self.process
        if process is not None and self.running:
            await process.signal_group(sig)

    async def stop(self) -> None:
        """Kill the process group; its client sees `exit` (-1) and the close."""
        pump, process = self._pump, self.process
        if pump is None or pump.done() or process is None:
            return
        await process.signal_group(signal.SIGKILL)
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(pump), STOP_WAIT)


class PtySessions:
    """The PTY sessions of one sandbox (a part of its `ExecdSandbox`)."""

    def __init__(self, sandbox: ExecdSandbox):
        self.sandbox = sandbox
        self._sessions: dict[str, PtySession] = {}

    def create(self, cwd: str | None, command: str | None) -> PtySession:
        session = PtySession(self.sandbox, str(uuid.uuid4()), cwd, command)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> PtySession | None:
        return self._sessions.get(session_id)

    async def delete(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        await session.stop()
        return True

    async def close(self) -> None:
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(session.stop() for session in sessions))


def ptys_of(sandbox: ExecdSandbox) -> PtySessions:
    registry: PtySessions = sandbox.part(PART_NAME, PtySessions)
    return registry
