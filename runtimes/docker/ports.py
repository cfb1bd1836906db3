"""Where a sandbox's ports are reached from the server.

Sandboxes join `[docker] network_mode` (the default `bridge` or a user-defined network)
and the server reaches an application port at the container's own address on that
network. Publishing to the host's loopback was the alternative, but Docker publishes ports
only when a container is created, while a sandbox's ports are asked for afterwards (any
port, any time); the container's address reaches them all, with no host ports to allocate
or leak. An application bound to the container's own loopback is reached through a relay
exec'd inside the sandbox (`relay.py`). With `network_mode = "host"` the sandbox shares the
host's network and its ports are on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from opensandbox_emulator.runtimes.docker.engine import Engine, RawStream
from opensandbox_emulator.runtimes.docker.execs import open_exec
from opensandbox_emulator.runtimes.docker.relay import RELAY_ENV, LoopbackRelay, relay_argv
from opensandbox_emulator.runtimes.docker.sandbox import DockerSandbox, inspect_container
from opensandbox_emulator.runtimes.failures import NoNetworkAddress, PortUnreachable


async def port_address(engine: Engine, sandbox: DockerSandbox, network: str, port: int
                       ) -> tuple[str, int]:
    """The container's address on its network when something listens there; else (an
    application bound to the container's loopback) a relay on the server's loopback."""
    attrs = await inspect_container(engine, sandbox.sandbox_id)
    if network == "host":
        return "127.0.0.1", port
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    address = (networks.get(network) or {}).get("IPAddress")
    if not address:  # joined by hand to another network, say
        address = next((n.get("IPAddress") for n in networks.values()
                        if n.get("IPAddress")), None)
    if not address:
        raise NoNetworkAddress(sandbox.sandbox_id, network)
    if await _accepts(address, port):
        return address, port
    if port not in sandbox.relays:
        async def open_relay(target: int) -> RawStream:
            _, stream = await open_exec(engine, sandbox, relay_argv(target), stdin=True,
                                        environment=RELAY_ENV)
            return stream

        relay = LoopbackRelay(port, open_relay)
        sandbox.relays[port] = (relay, await relay.start())
    return "127.0.0.1", sandbox.relays[port][1]


async def connect(engine: Engine, sandbox: DockerSandbox, network: str,
                  port: int) -> socket.socket:
    """A connected socket to `port` of the sandbox, at the address `port_address` gives."""
    host, target = await port_address(engine, sandbox, network, port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, target)),
                               10)
    except (OSError, TimeoutError) as error:
        sock.close()
        reason = (os.strerror(error.errno).lower() if isinstance(error, OSError)
                  and error.errno else "timed out")
        raise PortUnreachable(port, f"{reason} at {host}:{target}") from None
    return sock


async def _accepts(address: str, port: int) -> bool:
    """Whether something accepts TCP connections at address:port (refused at once when
    nothing listens; a silent host gets one second)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
