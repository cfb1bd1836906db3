"""Reaching an application that listens on the container's loopback only.

The server reaches a sandbox's ports at the container's address on its network. An
application bound to 127.0.0.1 inside the container (many dev servers are, by default) is
not there; upstream reaches it anyway, through the execd it injects into the container. We
inject nothing, so for such a port the runtime opens a local listener on the server's own
loopback, and relays each connection to it through one `docker exec` of a small relay run
inside the container: `socat`, `python3`, `bash` (`/dev/tcp`) or busybox `nc`, whichever the
image has. The exec's stdin carries the client's bytes, its stdout the application's; when
either side ends, the whole connection is closed (the server's forwarder never half-closes,
and the application must see a client that left). Each connection costs an exec (some
40 ms); applications listening on all interfaces (0.0.0.0) are reached directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from opensandbox_emulator.runtimes.docker.engine import RawStream, frames
from opensandbox_emulator.tasks import until_first_ends

log = logging.getLogger("opensandbox.runtime.docker")

PYTHON_RELAY = """
import os, socket, sys, threading
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def up():
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        s.sendall(data)
    os._exit(0)  # the client left: drop the connection, so the application sees it
threading.Thread(target=up, daemon=True).start()
while True:
    data = s.recv(65536)
    if not data:
        break
    os.write(1, data)
"""

# $1 = the port. The first tool the image has wins; each ends when its stdin does.
RELAY = r"""
if command -v socat >/dev/null 2>&1; then exec socat -t0 - "TCP:127.0.0.1:$1"; fi
if command -v python3 >/dev/null 2>&1; then
  code=$OPENSANDBOX_RELAY; unset OPENSANDBOX_RELAY; exec python3 -c "$code" "$1"
fi
if command -v bash >/dev/null 2>&1; then
  exec bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1; cat <&3 & cat >&3; kill $!' relay "$1"
fi
if command -v nc >/dev/null 2>&1; then exec nc 127.0.0.1 "$1"; fi
echo "no relay tool (socat, python3, bash or nc) in the sandbox" >&2; exit 127
"""


def relay_argv(port: int) -> list[str]:
    return ["/bin/sh", "-c", RELAY, "opensandbox-relay", str(port)]


RELAY_ENV = {"OPENSANDBOX_RELAY": PYTHON_RELAY}


OpenRelay = Callable[[int], Awaitable[RawStream]]


class LoopbackRelay:
    """A listener on the server's 127.0.0.1 for one sandbox port; each accepted connection
    is relayed through its own exec."""

    def __init__(self, port: int, open_relay: OpenRelay):
        self.port = port
        self._open_relay = open_relay
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._relay(reader, writer)
        except Exception as error:  # a relay that cannot start just closes the connection
            log.info("relay to sandbox port %s failed: %s", self.port, error)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = await self._open_relay(self.port)

        async def upstream() -> None:
            while data := await reader.read(65536):
                await stream.write(data)
            # The forwarder never half-closes: end of input means its client left, and
            # the whole relay goes, so that the application sees the disconnect at once.

        async def downstream() -> None:
            async for kind, payload in frames(stream):
                if kind == 1:
                    writer.write(payload)
                    await writer.drain()

        try:
            await until_first_ends(upstream(), downstream())
        finally:
            await stream.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(BaseException):
                await task
