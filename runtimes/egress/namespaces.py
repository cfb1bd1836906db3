"""Entering a sandbox's network namespace from the server, to enforce its egress policy.

The sandbox's own processes never get a capability over their network: the server holds
it. One thread of the server (`NamespaceWorker`) does all the work that must happen inside
a sandbox's namespace: it joins the namespace (`setns(2)`), does the job, and joins the
server's own again. Two jobs need that:

- applying nftables rules: through libnftables (the library of Debian's `nftables`, what
  the `nft` command is made of), whose netlink socket talks to the namespace the thread is
  in. One call costs about 0.15 ms; running `nsenter … nft -f -` costs about 10 ms, which
  would be paid by every new address a DNS answer allows;
- making the DNS forwarder's sockets: a UDP and a TCP socket bound to 127.0.0.1:15353 of
  the sandbox's namespace. A socket stays in the namespace it was made in, so the server
  serves them from its own event loop afterwards.

Only the server's own threads enter a namespace, and only this one: `setns` on a network
namespace changes the calling thread alone. Joining needs CAP_SYS_ADMIN over the
namespace, which a server running as root has; a server run as a normal user cannot join
the namespaces of its rootless sandboxes from a threaded process, so it does not enforce
policies (`problem()` says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class NamespaceError(Exception):
    """A job in a sandbox's namespace failed; the message says which and why."""


class Nftables:
    """libnftables, loaded once (ctypes over `libnftables.so.1`)."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        lib = ctypes.CDLL(name)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self.lib = lib

    def run(self, script: str) -> None:
        """Apply `script` (one transaction) in the calling thread's network namespace."""
        lib = self.lib
        context = lib.nft_ctx_new(0)
        if not context:
            raise NamespaceError("libnftables could not make a context")
        try:
            lib.nft_ctx_buffer_output(context)
            lib.nft_ctx_buffer_error(context)
            if lib.nft_run_cmd_from_buffer(context, script.encode()) != 0:
                error = (lib.nft_ctx_get_error_buffer(context) or b"").decode(errors="replace")
                raise NamespaceError("nftables refused the rules: " + (error.strip() or
                                                                       "no reason given"))
        finally:
            lib.nft_ctx_free(context)


class NamespaceWorker:
    """The one thread that enters sandboxes' network namespaces."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._home: int | None = None
        self._nft: Nftables | None = None
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._problem: str | None = None
        self._probed = False

    # --- can it? -------------------------------------------------------------------------

    def problem(self) -> str | None:
        """None when this server can enforce policies, else why not (for a person)."""
        if not self._probed:
            self._probed = True
            self._problem = self._probe()
        return self._problem

    def _probe(self) -> str | None:
        if os.geteuid() != 0:
            return ("the server does not run as root, so it cannot enter its sandboxes' "
                    "network namespaces to install their rules")
        try:
            self._nft = Nftables()
        except OSError as error:
            return (f"libnftables (Debian's nftables package) cannot be loaded ({error}); "
                    "install nftables")
        try:
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="egress-netns")
            self._pool.submit(self._enter, self._home).result()
        except OSError as error:
            return f"the server cannot join network namespaces ({error})"
        return None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._home is not None:
            with contextlib.suppress(OSError):
                os.close(self._home)
            self._home = None

    # --- jobs ----------------------------------------------------------------------------

    async def nft(self, namespace: int, script: str) -> None:
        """Apply an nftables script inside the namespace open at descriptor `namespace`."""
        nft = self._nft
        assert nft is not None
        await self._inside(namespace, lambda: nft.run(script))

    async def dns_sockets(self, namespace: int, port: int) -> tuple[socket.socket,
                                                                    socket.socket]:
        """A UDP socket and a listening TCP socket on 127.0.0.1:`port` of the namespace."""
        return await self._inside(namespace, lambda: _bind_pair(port))

    async def _inside(self, namespace: int, job: Callable[[], T]) -> T:
        if self.problem() is not None or self._pool is None:
            raise NamespaceError(self.problem() or "the namespace worker is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, namespace, job)

    def _run(self, namespace: int, job: Callable[[], T]) -> T:
        assert self._home is not None
        try:
            self._enter(namespace)
        except OSError as error:
            raise NamespaceError(f"cannot enter the sandbox's network namespace: "
                                 f"{os.strerror(error.errno or 0)}") from None
        try:
            return job()
        finally:
            self._enter(self._home)  # an error here is loud: the thread is no use any more

    def _enter(self, fd: int) -> None:
        if self._libc.setns(fd, CLONE_NEWNET) != 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number))


def _bind_pair(port: int) -> tuple[socket.socket, socket.socket]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        udp.bind(("127.0.0.1", port))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", port))
        tcp.listen(64)
    except OSError as error:
        udp.close()
        tcp.close()
        raise NamespaceError(f"cannot listen on 127.0.0.1:{port} inside the sandbox "
                             f"({os.strerror(error.errno or 0)}): something there holds "
                             "the port") from None
    udp.setblocking(False)
    tcp.setblocking(False)
    return udp, tcp


def open_namespace(path: str) -> int:
    """A descriptor of the network namespace at `path` (`/proc/<pid>/ns/net`, or a file
    the namespace is bound to); it keeps the namespace alive until closed."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise NamespaceError(f"cannot open the sandbox's network namespace {path}: "
                             f"{os.strerror(error.errno or 0)}") from None


def same_namespace(fd: int) -> bool:
    """Whether the namespace at `fd` is the server's own (a sandbox on the host's network)."""
    mine = os.stat("/proc/self/ns/net")
    theirs = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)
