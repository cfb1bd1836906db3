"""Connections to sandbox ports, opened by the runtime, as httpx and websockets use them.

(The `timeout` parameters below are httpcore's interface, not a choice.)

The server never dials a sandbox's port itself: `Runtime.connect` hands it a connected
socket (made inside the sandbox's network namespace on the fake runtime, at the container's
address on Docker). httpx gets those sockets through an httpcore network backend: a request
goes to `http://<route>:<port>/…`, where `<route>` is a name this module gave the sandbox,
so the connection pool keeps each sandbox's connections apart and reuses them. WebSockets
take the socket directly (`websockets.connect(sock=…)`).
"""

from __future__ import annotations

import asyncio
import itertools
import select
import socket
import typing
from collections.abc import Awaitable, Callable

import httpcore
import httpx

from opensandbox_emulator.runtimes.failures import RuntimeFailure

Connect = Callable[[str, int], Awaitable[socket.socket]]
ROUTE_SUFFIX = ".sandbox.invalid"
READ_ERRORS = (OSError, ConnectionError)


class SocketStream(httpcore.AsyncNetworkStream):
    """A connected non-blocking socket as an httpcore stream, on the running asyncio loop."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._loop = asyncio.get_running_loop()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                return await self._loop.sock_recv(self._sock, max_bytes)
        except TimeoutError as error:
            raise httpcore.ReadTimeout(str(error)) from error
        except READ_ERRORS as error:
            raise httpcore.ReadError(str(error)) from error

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._loop.sock_sendall(self._sock, buffer)
        except TimeoutError as error:
            raise httpcore.WriteTimeout(str(error)) from error
        except READ_ERRORS as error:
            raise httpcore.WriteError(str(error)) from error

    async def aclose(self) -> None:
        self._sock.close()

    async def start_tls(self, ssl_context: typing.Any, server_hostname: str | None = None,
                        timeout: float | None = None,  # noqa: ASYNC109
                        ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("sandbox ports are reached over plain HTTP")

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "socket":
            return self._sock
        if info == "is_readable":
            # An idle pooled connection that turned readable was closed by the application.
            if self._sock.fileno() < 0:
                return True
            readable, _, _ = select.select([self._sock], [], [], 0)
            return bool(readable)
        return None


class SandboxNetwork(httpcore.AsyncNetworkBackend):
    """Resolves route names to sandboxes and asks the runtime for the connection."""

    def __init__(self, connect: Connect):
        self._connect = connect
        self._routes: dict[str, str] = {}
        self._names: dict[str, str] = {}
        self._counter = itertools.count(1)

    def route(self, sandbox_id: str) -> str:
        """The host name requests to `sandbox_id` are sent to (a valid, opaque name)."""
        name = self._names.get(sandbox_id)
        if name is None:
            name = f"s{next(self._counter)}{ROUTE_SUFFIX}"
            self._names[sandbox_id] = name
            self._routes[name] = sandbox_id
        return name

    def forget(self, sandbox_id: str) -> None:
        name = self._names.pop(sandbox_id, None)
        if name is not None:
            self._routes.pop(name, None)

    async def connect_tcp(self, host: str, port: int,
                          timeout: float | None = None,  # noqa: ASYNC109
                          local_address: str | None = None,
                          socket_options: typing.Iterable[typing.Any] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        sandbox_id = self._routes.get(host)
        if sandbox_id is None:
            raise httpcore.ConnectError(f"no sandbox is known as {host}")
        try:
            async with asyncio.timeout(timeout):
                sock = await self._connect(sandbox_id, port)
        except TimeoutError as error:
            raise httpcore.ConnectTimeout(f"connecting to port {port} timed out") from error
        except RuntimeFailure as failure:
            raise httpcore.ConnectError(failure.message) from failure
        return SocketStream(sock)

    async def connect_unix_socket(self, path: str,
                                  timeout: float | None = None,  # noqa: ASYNC109
                                  socket_options: typing.Iterable[typing.Any] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("sandbox ports are TCP ports")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class SandboxTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (its request and error mapping), over a pool whose
    connections come from `SandboxNetwork`."""

    def __init__(self, network: SandboxNetwork, limits: httpx.Limits):
        super().__init__(limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry, network_backend=network)
