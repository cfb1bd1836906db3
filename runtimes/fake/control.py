"""The server's end of a sandbox's control socket: requests to its init, and what comes back.

One `InitChannel` per sandbox. Requests (spawn, connect, signal) are queued and written
without blocking, so a frozen sandbox, whose init reads nothing, never stalls the server.
Replies are read as they come and checked before anything is done with them: the init runs
inside the sandbox, where code may have taken its place, so every record must be exactly
the expected size and kind, must answer a request that is pending, and may carry only the
descriptors that kind of answer carries (a connected TCP socket, nothing else). Whatever
fails a check is dropped and logged, never acted upon.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import sys
from collections import deque
from dataclasses import dataclass
from typing import Any

from opensandbox_emulator.runtimes.base import ExitStatus
from opensandbox_emulator.runtimes.fake import sandbox_init as wire

log = logging.getLogger("opensandbox.runtime.fake")

RECEIVE_SIZE = 64  # a record is 16 bytes; anything longer arrives truncated and is dropped
ANCILLARY_SPACE = socket.CMSG_SPACE(wire.MAX_FDS * 4)


class ChannelClosed(Exception):
    """The init is gone (the sandbox stopped or was killed)."""


@dataclass(frozen=True)
class InitFailure(Exception):
    """The init could not do what was asked: `stage` says where, `errno` why."""

    stage: int
    errno: int

    @property
    def reason(self) -> str:
        return os.strerror(self.errno).lower() if self.errno > 0 else "unknown error"


def exit_status(raw: int) -> ExitStatus:
    """A raw wait status as an `ExitStatus`."""
    if os.WIFSIGNALED(raw):
        return ExitStatus(signal=os.WTERMSIG(raw))
    if os.WIFEXITED(raw):
        return ExitStatus(code=os.WEXITSTATUS(raw))
    return ExitStatus(code=-1)


class InitChannel:
    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._next_id = 0
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._exits: dict[int, asyncio.Future[ExitStatus]] = {}
        self._outgoing: deque[tuple[bytes, list[int]]] = deque()
        self._writing = False
        self.ready: asyncio.Future[int] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_reader(sock.fileno(), self._on_readable)

    # --- requests ------------------------------------------------------------------------

    async def spawn(self, *, argv: list[str], env: dict[str, str], cwd: str,
                    uid: int | None, gid: int | None, stdin: int | None, stdout: int,
                    stderr: int | None, tty: bool = False
                    ) -> tuple[int, asyncio.Future[ExitStatus]]:
        """Start a process; returns its pid (in the sandbox) and a future of its exit.
        The descriptors are the child's ends of its pipes (with `tty`, three of the slave
        side of a pseudo-terminal); they are closed here once sent. Raises `InitFailure`
        (with the stage that failed) or `ChannelClosed`."""
        fds = [fd for fd in (stdin, stdout, stderr) if fd is not None]
        request = {"op": "spawn", "argv": argv, "env": env, "cwd": cwd, "uid": uid,
                   "gid": gid, "stdin": stdin is not None, "stderr": stderr is not None,
                   "tty": tty}
        pid, exited = await self._request("spawn", request, fds)
        return pid, exited

    async def connect(self, port: int) -> socket.socket:
        """A TCP connection to `port` on the sandbox's loopback, made inside the sandbox."""
        sock: socket.socket = await self._request("connect", {"op": "connect", "port": port})
        return sock

    def signal(self, pid: int, sig: int) -> None:
        """Signal the process group of `pid` (a spawned process not yet reaped). Fire and
        forget: a frozen sandbox gets it when it thaws."""
        self._send({"op": "signal", "pid": pid, "sig": int(sig)}, [])

    def freeze(self, stop: bool) -> None:
        """SIGSTOP (or SIGCONT) every other process of the sandbox: the pause of a host
        without a cgroup freezer."""
        self._send({"op": "pause" if stop else "resume"}, [])

    async def _request(self, kind: str, request: dict[str, Any],
                       fds: list[int] | None = None) -> Any:
        fds = fds or []
        if self.closed.done():
            _close_all(fds)
            raise ChannelClosed()
        self._next_id = (self._next_id + 1) % 2**31 or 1
        ident = self._next_id
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[ident] = (kind, future)
        try:
            self._send({**request, "id": ident}, fds)
            return await future
        finally:
            self._pending.pop(ident, None)

    # --- writing -------------------------------------------------------------------------

    def _send(self, request: dict[str, Any], fds: list[int]) -> None:
        if self.closed.done():
            _close_all(fds)
            return
        messages = wire.fragments(request)
        if sum(map(len, messages)) > wire.MAX_REQUEST:
            _close_all(fds)
            raise InitFailure(stage=wire.STAGE_REQUEST, errno=errno.E2BIG)
        for message in messages[:-1]:
            self._outgoing.append((message, []))
        self._outgoing.append((messages[-1], fds))
        self._flush()

    def _flush(self) -> None:
        while self._outgoing:
            message, fds = self._outgoing[0]
            try:
                if fds:
                    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                  b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds))]
                    self._sock.sendmsg([message], ancillary)
                else:
                    self._sock.send(message)
            except (BlockingIOError, InterruptedError):
                if not self._writing:
                    self._writing = True
                    self._loop.add_writer(self._sock.fileno(), self._on_writable)
                return
            except OSError as error:
                self._shut(f"writing to the init failed: {error}")
                return
            self._outgoing.popleft()
            _close_all(fds)
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._sock.fileno())

    def _on_writable(self) -> None:
        self._flush()

    # --- reading -------------------------------------------------------------------------

    def _on_readable(self) -> None:
        for _ in range(64):  # a batch, then give the loop back
            try:
                data, ancillary, flags, _ = self._sock.recvmsg(
                    RECEIVE_SIZE, ANCILLARY_SPACE, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._shut(f"reading from the init failed: {error}")
                return
            fds = _received_fds(ancillary)
            if not data and not fds:
                self._shut(None)
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                _close_all(fds)
                log.warning("dropped an oversized message from a sandbox's init")
                continue
            try:
                self._dispatch(wire.unpack_reply(data), fds)
            except ValueError as error:
                _close_all(fds)
                log.warning("dropped a malformed message from a sandbox's init: %s", error)

    def _dispatch(self, record: tuple[int, int, int, int], fds: list[int]) -> None:
        kind, ident, a, b = record
        if kind == wire.EXITED:
            _close_all(fds)
            future = self._exits.pop(a, None)
            if future is not None and not future.done():
                future.set_result(exit_status(b))
            return
        if kind == wire.READY:
            _close_all(fds)
            if not self.ready.done():
                self.ready.set_result(a)
            return
        pending = self._pending.get(ident)
        if pending is None:
            _close_all(fds)
            raise ValueError(f"an answer to request {ident}, which is not pending")
        expected, future = pending
        if future.done():
            _close_all(fds)
            return
        if kind == wire.FAILED:
            _close_all(fds)
            future.set_exception(InitFailure(stage=b, errno=a))
        elif kind == wire.SPAWNED and expected == "spawn":
            _close_all(fds)
            if not 0 < a < 2**22 or a in self._exits:
                future.set_exception(InitFailure(stage=wire.STAGE_REQUEST, errno=errno.EPROTO))
                raise ValueError(f"a spawned pid that cannot be ({a})")
            exited: asyncio.Future[ExitStatus] = self._loop.create_future()
            self._exits[a] = exited
            future.set_result((a, exited))
        elif kind == wire.CONNECTED and expected == "connect":
            try:
                future.set_result(_tcp_socket(fds))
            except ValueError:
                future.set_exception(InitFailure(stage=wire.STAGE_CONNECT, errno=errno.EPROTO))
                raise
        else:
            _close_all(fds)
            future.set_exception(InitFailure(stage=wire.STAGE_REQUEST, errno=errno.EPROTO))
            raise ValueError(f"a reply of kind {kind} to a {expected} request")

    # --- the end -------------------------------------------------------------------------

    def _shut(self, problem: str | None) -> None:
        if problem:
            log.warning("sandbox control channel: %s", problem)
        self.close()

    def close(self) -> None:
        """Forget the init: pending requests fail, exits never reported resolve as killed."""
        if self.closed.done():
            return
        self.closed.set_result(None)
        self._loop.remove_reader(self._sock.fileno())
        if self._writing:
            self._loop.remove_writer(self._sock.fileno())
        for message_fds in self._outgoing:
            _close_all(message_fds[1])
        self._outgoing.clear()
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(ChannelClosed())
        for future in self._exits.values():
            if not future.done():
                future.set_result(ExitStatus(signal=9))
        self._exits.clear()
        if not self.ready.done():
            self.ready.set_exception(ChannelClosed())
        with contextlib.suppress(OSError):
            self._sock.close()


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += [int.from_bytes(payload[i:i + 4], sys.byteorder)
                    for i in range(0, usable, 4)]
    return fds


def _tcp_socket(fds: list[int]) -> socket.socket:
    """The one descriptor of a CONNECTED reply, if it is a connected TCP socket."""
    if len(fds) != 1:
        _close_all(fds)
        raise ValueError(f"a connection reply with {len(fds)} descriptors")
    try:
        sock = socket.socket(fileno=fds[0])
    except OSError as error:
        _close_all(fds)
        raise ValueError(f"a connection reply that is not a socket ({error})") from error
    if (sock.family not in (socket.AF_INET, socket.AF_INET6)
            or sock.type != socket.SOCK_STREAM
            or sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) != socket.IPPROTO_TCP):
        sock.close()
        raise ValueError("a connection reply that is not a TCP socket")
    try:
        sock.getpeername()
    except OSError as error:
        sock.close()
        raise ValueError("a connection reply with an unconnected socket") from error
    sock.setblocking(False)
    return sock


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)

