"""The server's end of a fake sandbox's control socket, facing an init that lies.

Whatever runs in a sandbox may have taken its init's place, so every record that comes back
is checked before the server acts on it. Here the other end of the socket pair is the test,
playing a hostile init: records of the wrong size or kind, answers to requests nobody made,
pids that cannot be, descriptors that are not TCP sockets. None may be acted on, and the
request each one pretends to answer must fail, not hang.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator

import pytest

from opensandbox_emulator.runtimes.fake import sandbox_init as wire
from opensandbox_emulator.runtimes.fake.control import ChannelClosed, InitChannel, InitFailure

pytestmark = pytest.mark.anyio


class HostileInit:
    """The init's end of the pair, driven by the test."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def next_request(self) -> tuple[dict[str, object], list[int]]:
        import marshal

        parts: list[bytes] = []
        fds: list[int] = []
        while True:
            data, ancillary, _, _ = self.sock.recvmsg(wire.FRAGMENT + 1,
                                                      socket.CMSG_SPACE(16))
            for _, _, payload in ancillary:
                fds += [int.from_bytes(payload[i:i + 4], sys.byteorder)
                        for i in range(0, len(payload), 4)]
            parts.append(data[1:])
            if data[:1] == b"R":
                return marshal.loads(b"".join(parts)), fds

    def send(self, data: bytes, fds: list[int] | None = None) -> None:
        if fds:
            payload = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, payload)])
        else:
            self.sock.send(data)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[InitChannel, HostileInit]]:
    server, inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    channel = InitChannel(server)
    hostile = HostileInit(inside)
    hostile.send(wire.pack_reply(wire.READY, 0, 1, wire.PROTOCOL))
    assert await asyncio.wait_for(channel.ready, 5) == 1
    yield channel, hostile
    channel.close()
    inside.close()


async def answer(hostile: HostileInit, reply: object) -> dict[str, object]:
    """Read the next request in a thread and send `reply(request)`."""
    request, fds = await asyncio.to_thread(hostile.next_request)
    for fd in fds:
        os.close(fd)
    reply(request)  # type: ignore[operator]
    return request


async def test_a_connection_reply_that_is_not_a_tcp_socket_fails_the_request(
        pair: tuple[InitChannel, HostileInit]) -> None:
    channel, hostile = pair
    read_end, write_end = os.pipe()
    connecting = asyncio.ensure_future(channel.connect(8000))
    await answer(hostile, lambda request: hostile.send(
        wire.pack_reply(wire.CONNECTED, request["id"]), [read_end]))
    with pytest.raises(InitFailure):
        await asyncio.wait_for(connecting, 5)
    os.close(read_end)
    os.close(write_end)
    # A Unix socket is no TCP socket either.
    one, other = socket.socketpair()
    connecting = asyncio.ensure_future(channel.connect(8000))
    await answer(hostile, lambda request: hostile.send(
        wire.pack_reply(wire.CONNECTED, request["id"]), [one.fileno()]))
    with pytest.raises(InitFailure):
        await asyncio.wait_for(connecting, 5)
    one.close()
    other.close()


async def test_a_spawn_reply_with_an_impossible_pid_fails_the_request(
        pair: tuple[InitChannel, HostileInit]) -> None:
    channel, hostile = pair
    read_end, write_end = os.pipe()
    spawning = asyncio.ensure_future(channel.spawn(
        argv=["true"], env={}, cwd="/", uid=None, gid=None, stdin=None, stdout=write_end,
        stderr=None))
    await answer(hostile, lambda request: hostile.send(
        wire.pack_reply(wire.SPAWNED, request["id"], -5)))
    with pytest.raises(InitFailure):
        await asyncio.wait_for(spawning, 5)
    os.close(read_end)


async def test_malformed_and_unsolicited_records_are_dropped(
        pair: tuple[InitChannel, HostileInit]) -> None:
    channel, hostile = pair
    hostile.send(b"x" * 3)  # too short
    hostile.send(b"\x63" + b"\0" * 15)  # no such kind
    hostile.send(b"y" * 200)  # oversized: arrives truncated
    hostile.send(wire.pack_reply(wire.SPAWNED, 4242, 7))  # answers nothing pending
    listener = socket.create_server(("127.0.0.1", 0))
    stray = socket.create_connection(listener.getsockname())
    hostile.send(wire.pack_reply(wire.CONNECTED, 77), [stray.fileno()])  # unsolicited fd
    hostile.send(wire.pack_reply(wire.EXITED, 0, 999, 0))  # exit of nothing spawned
    # The channel still works afterwards: a genuine answer gets through.
    connecting = asyncio.ensure_future(channel.connect(listener.getsockname()[1]))

    def genuine(request: dict[str, object]) -> None:
        sock = socket.create_connection(listener.getsockname())
        hostile.send(wire.pack_reply(wire.CONNECTED, request["id"]), [sock.fileno()])
        sock.close()

    await answer(hostile, genuine)
    connected = await asyncio.wait_for(connecting, 5)
    assert connected.getpeername() == listener.getsockname()
    connected.close()
    stray.close()
    listener.close()


async def test_when_the_init_goes_pending_requests_fail_and_exits_read_as_killed(
        pair: tuple[InitChannel, HostileInit]) -> None:
    channel, hostile = pair
    read_end, write_end = os.pipe()
    spawning = asyncio.ensure_future(channel.spawn(
        argv=["sleep", "9"], env={}, cwd="/", uid=None, gid=None, stdin=None,
        stdout=write_end, stderr=None))
    request = await answer(hostile, lambda request: hostile.send(
        wire.pack_reply(wire.SPAWNED, request["id"], 12)))
    pid, exited = await asyncio.wait_for(spawning, 5)
    assert pid == 12 and request["argv"] == ["sleep", "9"]
    connecting = asyncio.ensure_future(channel.connect(8000))
    await asyncio.to_thread(hostile.next_request)
    hostile.sock.close()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(connecting, 5)
    status = await asyncio.wait_for(exited, 5)
    assert status.signal == 9
    os.close(read_end)


async def test_a_request_too_large_for_the_init_fails_before_anything_is_sent(
        pair: tuple[InitChannel, HostileInit]) -> None:
    channel, _ = pair
    read_end, write_end = os.pipe()
    with pytest.raises(InitFailure) as refused:
        await channel.spawn(argv=["echo", "x" * (wire.MAX_REQUEST + 1)], env={}, cwd="/",
                            uid=None, gid=None, stdin=None, stdout=write_end, stderr=None)
    assert refused.value.errno == 7  # E2BIG
    with pytest.raises(OSError):
        os.fstat(write_end)  # the child's end was closed, not leaked
    os.close(read_end)


async def test_the_init_answers_a_malformed_request_and_serves_on() -> None:
    """The real init, as an ordinary child: a request it cannot make sense of gets a
    refusal, not a crash, and the next good one is served."""
    from opensandbox_emulator.runtimes.fake.interpreter import on_host

    server, inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    init = await asyncio.create_subprocess_exec(
        *on_host().command(inside.fileno()), pass_fds=[inside.fileno()],
        stdin=asyncio.subprocess.DEVNULL)
    inside.close()
    channel = InitChannel(server)
    try:
        await asyncio.wait_for(channel.ready, 10)
        for malformed in ({"op": "spawn"}, {"op": "signal"}, {"op": "no such thing"}):
            with pytest.raises(InitFailure) as refused:
                await asyncio.wait_for(channel._request("spawn", malformed), 10)
            assert refused.value.stage in (wire.STAGE_REQUEST, wire.STAGE_STDIO), malformed
        read_end, write_end = os.pipe()
        _, exited = await asyncio.wait_for(channel.spawn(
            argv=["sh", "-c", "echo served"], env={"PATH": "/usr/bin:/bin"}, cwd="/",
            uid=None, gid=None, stdin=None, stdout=write_end, stderr=None), 10)
        assert (await asyncio.wait_for(exited, 10)).code == 0
        assert os.read(read_end, 100) == b"served\n"
        os.close(read_end)
    finally:
        channel.close()
        await asyncio.wait_for(init.wait(), 10)
