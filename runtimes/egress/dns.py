"""The DNS forwarder that answers a sandbox's queries under its egress policy.

The sandbox's nftables rules redirect every outbound DNS query (port 53, UDP and TCP) to
127.0.0.1:15353 of its own network namespace, where the server holds two sockets made in
that namespace (`namespaces.py`); the server serves them here, from its event loop. A query
for a name the policy denies gets NXDOMAIN at once. Any other query goes to the upstream
resolver, from the server's own network, and its answer back to the sandbox, but only after
the A and AAAA addresses in it have been allowed (`learn`), so the connection that follows
the answer is let through. An upstream that does not answer gives SERVFAIL. This is what
upstream's egress sidecar does.

dnspython parses the messages; what is relayed is the upstream's answer as it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from opensandbox_emulator.runtimes.egress.policy import ALLOW
from opensandbox_emulator.runtimes.egress.resolvers import Upstream

log = logging.getLogger("opensandbox.egress")

UPSTREAM_SECONDS = 3.0  # per upstream resolver, per query
TCP_IDLE_SECONDS = 10.0
MAX_PENDING = 256  # UDP queries being answered at once, per sandbox; more are dropped
MAX_CONNECTIONS = 32  # TCP clients at once, per sandbox

Decide = Callable[[str], str]
Learn = Callable[[str, list[tuple[str, int]]], Awaitable[None]]


class DnsForwarder:
    """Serves one sandbox's DNS sockets until `close`."""

    def __init__(self, *, udp: socket.socket, tcp: socket.socket, upstreams: Sequence[Upstream],
                 decide: Decide, learn: Learn):
        self.udp = udp
        self.tcp = tcp
        self.upstreams = list(upstreams)
        self.decide = decide
        self.learn = learn
        self._transport: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self), sock=self.udp)
        self._server = await asyncio.start_server(self._serve_tcp, sock=self.tcp,
                                                  limit=70000)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(OSError):
            self.udp.close()
        with contextlib.suppress(OSError):
            self.tcp.close()

    # --- answering ---------------------------------------------------------------------------

    async def answer(self, data: bytes, *, over_tcp: bool) -> bytes | None:
        """The reply to one query (None: nothing worth answering)."""
        try:
            query = dns.message.from_wire(data, ignore_trailing=True)
        except (dns.exception.DNSException, ValueError):
            return _bare_reply(data, dns.rcode.FORMERR)
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return _reply(query, dns.rcode.FORMERR)
        name = query.question[0].name.to_text(omit_final_dot=True).lower()
        if self.decide(name) != ALLOW:
            return _reply(query, dns.rcode.NXDOMAIN)
        raw = await self._ask_upstream(data, over_tcp)
        if raw is None:
            return _reply(query, dns.rcode.SERVFAIL)
        try:
            response = dns.message.from_wire(raw, ignore_trailing=True)
        except (dns.exception.DNSException, ValueError):
            return _reply(query, dns.rcode.SERVFAIL)
        addresses = [(rdata.address, rrset.ttl) for rrset in response.answer
                     if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
                     for rdata in rrset]
        if addresses:
            try:
                await self.learn(name, addresses)
            except Exception as error:  # the connection would be refused: say so
                log.warning("could not allow the addresses of %s: %s", name, error)
                return _reply(query, dns.rcode.SERVFAIL)
        return raw

    async def _ask_upstream(self, data: bytes, over_tcp: bool) -> bytes | None:
        for upstream in self.upstreams:
            try:
                if over_tcp:
                    return await asyncio.wait_for(_ask_tcp(upstream, data), UPSTREAM_SECONDS)
                return await asyncio.wait_for(_ask_udp(upstream, data), UPSTREAM_SECONDS)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as error:
                log.debug("resolver %s:%d: %s", *upstream, error)
        return None

    # --- UDP ---------------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, client: tuple[str, int]) -> None:
        if len(self._tasks) >= MAX_PENDING:
            return  # the client retries; a flood is not answered faster by queueing it
        task = asyncio.create_task(self._answer_datagram(data, client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_datagram(self, data: bytes, client: tuple[str, int]) -> None:
        reply = await self.answer(data, over_tcp=False)
        if reply is not None and self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(reply, client)

    # --- TCP -----------------------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                         ) -> None:
        if self._connections >= MAX_CONNECTIONS:
            writer.close()
            return
        self._connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                header = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_SECONDS)
                data = await asyncio.wait_for(
                    reader.readexactly(struct.unpack("!H", header)[0]), TCP_IDLE_SECONDS)
                reply = await self.answer(data, over_tcp=True)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections -= 1
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, forwarder: DnsForwarder):
        self.forwarder = forwarder

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.forwarder._on_datagram(data, addr)


async def _ask_udp(upstream: Upstream, data: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, upstream)
        await loop.sock_sendall(sock, data)
        while True:
            reply = await loop.sock_recv(sock, 65535)
            if reply[:2] == data[:2]:  # the answer to this query, not a stray datagram
                return reply


async def _ask_tcp(upstream: Upstream, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*upstream)
    try:
        writer.write(struct.pack("!H", len(data)) + data)
        await writer.drain()
        length = struct.unpack("!H", await reader.readexactly(2))[0]
        return await reader.readexactly(length)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _reply(query: dns.message.Message, rcode: int) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    response.flags |= dns.flags.RA
    return response.to_wire()


def _bare_reply(data: bytes, rcode: int) -> bytes | None:
    """A header-only reply to a query dnspython cannot read (None if not even that)."""
    if len(data) < 12:
        return None
    ident, flags = struct.unpack("!HH", data[:4])
    if flags & 0x8000:  # a response, not a query: never answer those
        return None
    return struct.pack("!HHHHHH", ident, 0x8000 | (flags & 0x7900) | 0x0080 | rcode, 0, 0, 0, 0)
