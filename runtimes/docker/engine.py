"""The Docker engine, seen from the event loop.

`Engine` wraps the Docker SDK (`docker==7.2.0`): every SDK call is blocking, so each one
runs in a worker thread (`call`). Two things are done on the loop instead, over asyncio
connections of its own (Unix socket, TCP or TLS). An exec's output as it is produced:
`attach_exec` speaks the engine's HTTP upgrade itself and returns the raw multiplexed
stream, so a command's output costs no thread however long the command runs. And the JSON
calls every command makes (`inspect_container`, `create_exec`, `inspect_exec`), over
kept-alive connections, which saves each the thread and the SDK's HTTP stack; they raise the
SDK's own errors. For transports asyncio cannot open (`ssh://`, named pipes) both fall back
to the SDK, in a thread.

This is the one module that speaks the engine's HTTP: what its statuses mean is read here
(`wrong_state`, `refused_as_invalid`), so the rest of the runtime deals in facts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import threading
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import anyio
import docker
import requests
from docker.errors import APIError, DockerException, NotFound

from opensandbox_emulator.runtimes.failures import Unavailable

T = TypeVar("T")

# Worker threads for blocking SDK calls; separate from anyio's default pool so that a burst
# of Docker calls never starves the rest of the server (and the reverse).
SDK_THREADS = 16
IDLE_CONNECTIONS = 8  # kept-alive connections of the loop's own JSON calls


def explain(error: APIError) -> str:
    """The engine's own words for a refusal."""
    return str(error.explanation or error).strip()


def wrong_state(error: APIError) -> bool:
    """The engine refused because of the container's state (paused, not running)."""
    return bool(error.status_code == HTTPStatus.CONFLICT)


def refused_as_invalid(error: APIError) -> bool:
    """The engine refused the request itself (a bad option, a missing bind source)."""
    return bool(error.status_code == HTTPStatus.BAD_REQUEST)


class ExecStartError(Exception):
    """The engine would not start an exec; `wrong_state` as for `APIError`s."""

    def __init__(self, message: str, *, wrong_state: bool = False):
        super().__init__(message)
        self.message = message
        self.wrong_state = wrong_state


class RawStream:
    """The hijacked connection of one exec: read raw bytes, write to its stdin, close."""

    async def read(self, max_bytes: int) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    async def write(self, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    async def close_write(self) -> None:  # pragma: no cover - interface
        """Half-close: the exec's stdin reads end-of-file; its output keeps coming."""
        raise NotImplementedError

    async def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


async def frames(stream: RawStream) -> AsyncIterator[tuple[int, bytes]]:
    """Docker's multiplexed attach stream as `(stream kind, payload)` frames, in the order
    the daemon wrote them (kind 1 is stdout, 2 stderr): an 8-byte header (kind, three zero
    bytes, big-endian length) before each payload."""
    buffer = bytearray()
    while True:
        data = await stream.read(65536)
        if not data:
            return
        buffer += data
        while len(buffer) >= 8:
            kind, size = struct.unpack(">BxxxL", bytes(buffer[:8]))
            if len(buffer) < 8 + size:
                break
            payload = bytes(buffer[8:8 + size])
            del buffer[:8 + size]
            yield kind, payload


class AsyncioStream(RawStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int) -> bytes:
        try:
            return await self._reader.read(max_bytes)
        except (ConnectionError, OSError):
            return b""

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close_write(self) -> None:
        if self._writer.can_write_eof():
            self._writer.write_eof()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


class ThreadedStream(RawStream):
    """The SDK's socket, for transports asyncio cannot open; one reader thread."""

    def __init__(self, sock: Any):
        self._sock = sock
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._pump, args=(loop,), daemon=True,
                                        name="docker-exec-reader")
        self._thread.start()

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        from docker.utils.socket import read

        while True:
            try:
                data = read(self._sock, 65536) or b""
            except Exception:
                data = b""
            if isinstance(data, str):
                data = data.encode()
            try:
                asyncio.run_coroutine_threadsafe(self._queue.put(data), loop).result()
            except Exception:
                return
            if not data:
                return

    async def read(self, max_bytes: int) -> bytes:
        return await self._queue.get()

    async def write(self, data: bytes) -> None:
        sock = getattr(self._sock, "_sock", self._sock)
        await asyncio.to_thread(sock.sendall, data)

    async def close_write(self) -> None:
        sock = getattr(self._sock, "_sock", self._sock)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(sock.shutdown, 1)  # SHUT_WR

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._sock.close()


class Engine:
    """One Docker client, made from the environment (`DOCKER_HOST`, …) like the CLI."""

    def __init__(self, client: docker.DockerClient | None = None):
        self._client = client
        self._limiter = anyio.CapacityLimiter(SDK_THREADS)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            raise Unavailable("The Docker engine is not connected.")
        return self._client

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    async def connect(self) -> None:
        if self._client is not None:
            return

        def make() -> docker.DockerClient:
            client = docker.from_env(timeout=180)
            client.ping()
            return client

        try:
            self._client = await self.call(make)
        except DockerException as error:
            raise Unavailable(
                f"Cannot reach the Docker engine ({error}). Start dockerd, or point DOCKER_HOST "
                "at a running engine, or use [runtime] type = \"fake\".") from error

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one blocking SDK call in a worker thread."""
        return await anyio.to_thread.run_sync(lambda: function(*args, **kwargs),
                                              limiter=self._limiter)

    async def close(self) -> None:
        while self._idle:
            self._idle.pop()[1].close()
        if self._client is not None:
            client, self._client = self._client, None
            await self.call(client.close)

    def engine_out_of_sight(self) -> bool:
        """Whether the engine runs in a PID namespace this server cannot see into (the
        server in a container of its own, with the engine's socket mounted): the peer
        credentials of its unix socket then carry pid 0. An engine reached over TCP cannot
        be judged from here and counts as in sight."""
        adapter = getattr(self.api, "_custom_adapter", None)
        socket_path = getattr(adapter, "socket_path", None)
        if not socket_path:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(5)
                probe.connect(socket_path)
                credentials = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                               struct.calcsize("3i"))
        except OSError:
            return False
        return struct.unpack("3i", credentials)[0] <= 0

    async def open_archive(self, container: str, path: str) -> Any:
        """`GET /containers/{container}/archive?path=…` as a streamed `requests` response,
        which the caller reads (`iter_content`, in `call`) and closes. The SDK's own
        `get_archive` hides the response, and a download that stops early must close it."""
        api = self.api

        def start() -> Any:
            response = api._get(api._url("/containers/{0}/archive", container),
                                params={"path": path}, stream=True)
            try:
                api._raise_for_status(response)
            except BaseException:
                response.close()
                raise
            return response

        return await self.call(start)

    # --- the calls of every command, on the loop ---------------------------------------------

    async def inspect_container(self, name: str) -> dict[str, Any]:
        """`GET /containers/{name}/json`. Raises `NotFound`, `APIError`."""
        found: dict[str, Any] = await self._json("GET", f"/containers/{quote(name)}/json",
                                                 fallback=lambda: self.api.inspect_container(name))
        return found

    async def inspect_exec(self, exec_id: str) -> dict[str, Any]:
        """`GET /exec/{id}/json`. Raises `NotFound`, `APIError`."""
        found: dict[str, Any] = await self._json("GET", f"/exec/{quote(exec_id)}/json",
                                                 fallback=lambda: self.api.exec_inspect(exec_id))
        return found

    async def create_exec(self, container: str, argv: list[str], *, user: str = "",
                          environment: dict[str, str] | None = None, stdin: bool = False,
                          tty: bool = False) -> str:
        """`POST /containers/{container}/exec` with stdout and stderr attached; the new
        exec's id. Raises `NotFound`, `APIError`."""
        body = {"User": user, "Privileged": False, "Tty": tty, "AttachStdin": stdin,
                "AttachStdout": True, "AttachStderr": True, "Cmd": argv,
                "Env": [f"{key}={value}" for key, value in (environment or {}).items()]}
        created = await self._json(
            "POST", f"/containers/{quote(container)}/exec", body,
            fallback=lambda: self.api.exec_create(
                container, argv, stdout=True, stderr=True, stdin=stdin, tty=tty, user=user,
                environment=dict(environment or {})))
        return str(created["Id"])

    async def _json(self, method: str, path: str, body: Any = None, *,
                    fallback: Callable[[], Any]) -> Any:
        """One JSON request over a kept-alive connection of the loop's own: the calls every
        command makes skip the SDK's worker thread and its HTTP stack (about a
        millisecond each). A transport the loop cannot open takes `fallback` (the SDK's
        call) in a thread; a kept connection the engine closed meanwhile is dropped and
        the next one tried, then a new one."""
        request = self._request(method, path,
                                b"" if body is None else json.dumps(body).encode())
        while True:
            kept = bool(self._idle)
            try:
                connection = self._idle.pop() if kept else await self._open_connection()
            except OSError as error:
                raise APIError(f"cannot reach the engine: {error}") from error
            if connection is None:
                return await self.call(fallback)
            try:
                status, reason, raw, keep = await _exchange(connection, request)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ValueError) as error:
                connection[1].close()
                if kept:
                    continue
                raise APIError(f"the engine's connection failed: {error}") from error
            except BaseException:  # cancelled mid-answer: the rest of it would be read
                connection[1].close()  # by the next call, so the connection goes
                raise
            if keep and len(self._idle) < IDLE_CONNECTIONS:
                self._idle.append(connection)
            else:
                connection[1].close()
            if status >= HTTPStatus.BAD_REQUEST:
                raise _api_error(method, path, status, reason, raw)
            return json.loads(raw) if raw else None

    # --- exec streams ------------------------------------------------------------------------

    async def attach_exec(self, exec_id: str, *, tty: bool = False) -> RawStream:
        """Start the exec and return its raw output stream (8-byte framed, as the engine
        sends it without a TTY; the bare bytes with `tty`). Raises `ExecStartError` when
        the engine refuses."""
        connection = await self._open_connection()
        if connection is None:
            return await self._attach_with_sdk(exec_id, tty)
        reader, writer = connection
        request = self._request("POST", f"/exec/{exec_id}/start",
                                json.dumps({"Detach": False, "Tty": tty}).encode(),
                                "Connection: Upgrade\r\nUpgrade: tcp\r\n")
        try:
            writer.write(request)
            await writer.drain()
            status, status_line, headers = await _read_head(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
            writer.close()
            raise ExecStartError(f"the engine closed the exec stream: {error}") from error
        if status in (HTTPStatus.SWITCHING_PROTOCOLS, HTTPStatus.OK):
            return AsyncioStream(reader, writer)
        try:
            raw = await asyncio.wait_for(_read_body(reader, headers), 10)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ValueError):
            raw = b""
        writer.close()
        raise ExecStartError(_engine_message(raw) or status_line,
                             wrong_state=status == HTTPStatus.CONFLICT)

    def _request(self, method: str, path: str, payload: bytes = b"",
                 headers: str = "") -> bytes:
        """One request to the engine's versioned API, `headers` (lines) added."""
        return (f"{method} /v{self.api._version}{path} HTTP/1.1\r\nHost: docker\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                f"{headers}\r\n").encode() + payload

    async def _open_connection(self) -> tuple[asyncio.StreamReader,
                                              asyncio.StreamWriter] | None:
        """A new asyncio connection to the engine (Unix socket, TCP or TLS), or None for a
        transport asyncio cannot open."""
        api = self.api
        base = api.base_url
        adapter = getattr(api, "_custom_adapter", None)
        socket_path = getattr(adapter, "socket_path", None)
        if socket_path and base.startswith("http+docker://localhost"):
            return await asyncio.open_unix_connection(socket_path, limit=1 << 20)
        if base.startswith(("http://", "https://")):
            parts = urlsplit(base)
            context = self._ssl_context() if parts.scheme == "https" else None
            return await asyncio.open_connection(
                parts.hostname, parts.port or (2376 if context else 2375), ssl=context,
                limit=1 << 20)
        return None

    def _ssl_context(self) -> ssl.SSLContext:
        verify = getattr(self.api, "verify", True)
        context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
        if verify is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        cert = getattr(self.api, "cert", None)
        if isinstance(cert, tuple):
            context.load_cert_chain(*cert)
        elif isinstance(cert, str):
            context.load_cert_chain(cert)
        return context

    async def _attach_with_sdk(self, exec_id: str, tty: bool) -> RawStream:
        try:
            sock = await self.call(self.api.exec_start, exec_id, socket=True, tty=tty)
        except APIError as error:
            raise ExecStartError(error.explanation or str(error), wrong_state=wrong_state(error)
                                 ) from error
        return ThreadedStream(sock)


async def _exchange(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                    request: bytes) -> tuple[int, str, bytes, bool]:
    """Send one request and read its response: (status, reason, body, whether the
    connection may be used again)."""
    reader, writer = connection
    writer.write(request)
    await writer.drain()
    status, status_line, headers = await _read_head(reader)
    raw = await _read_body(reader, headers)
    reason = status_line.split(" ", 2)[2:]
    keep = headers.get("connection", "").lower() != "close"
    return status, "".join(reason), raw, keep


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
    """A response's status, its status line and its headers (names in lower case)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {status_line!r}")
    return int(parts[1]), status_line, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    """A response's body: the engine sends a length, or chunks."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if not size:
                await reader.readuntil(b"\r\n")
                return bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    length = int(headers.get("content-length", "0"))
    return await reader.readexactly(length) if length else b""


def _engine_message(raw: bytes) -> str:
    """The engine's words in an error body (`{"message": …}`), or the body as text."""
    try:
        return str(json.loads(raw).get("message", ""))
    except (ValueError, AttributeError):
        return raw.decode(errors="replace")


def _api_error(method: str, path: str, status: int, reason: str, raw: bytes) -> APIError:
    """The SDK's own error for a refusal, so callers handle both ways alike."""
    response = requests.Response()
    response.status_code = status
    response.reason = reason
    response._content = raw
    response.url = path
    kind = NotFound if status == HTTPStatus.NOT_FOUND else APIError
    return kind(f"{status} {reason}: {method} {path}", response=response,
                explanation=_engine_message(raw))
