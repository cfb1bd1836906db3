"""A sandbox's way out: slirp4netns attached to its network namespace.

Each sandbox has a network namespace of its own, with its own loopback (so two sandboxes
can both listen on port 8000). slirp4netns (Debian's `slirp4netns`) gives it an `eth0`
and carries its outbound connections through a user-space TCP/IP stack, from the host's
network as an ordinary process would: the world and the host's external addresses are
reachable, the host's loopback is not (`--disable-host-loopback`), and nothing from outside
reaches in (no port is forwarded). It runs under its own seccomp filter (`--enable-seccomp`)
as a child of the server, exits when its exit pipe closes (the server stopped or died) and
is killed when the sandbox goes.

Not `--enable-sandbox`: while a slirp4netns builds that sandbox (a mount namespace it
pivots into), Docker containers starting at the same moment on the same host intermittently
find their root filesystem empty and die with exit 127 (seen with slirp4netns 1.2.0 beside
Docker 20.10; wrapping it in a slave mount namespace did not help). A fake sandbox must not
break the Docker engine a developer runs beside it.

slirp4netns was chosen over `pasta` (Debian's `passt`) for memory: on Debian 12 an idle
pasta holds about 29 MiB of private memory per sandbox, slirp4netns about 0.5 MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from dataclasses import dataclass

ADDRESS = "10.0.2.100"
NAMESERVER = "10.0.2.3"
READY_SECONDS = 10.0


class NetworkFailed(Exception):
    """slirp4netns did not come up; the message says what it printed."""


@dataclass
class Outbound:
    process: asyncio.subprocess.Process
    exit_fd: int  # closing it makes slirp4netns exit

    def kill(self) -> None:
        """Make it go now (`stop` then waits for it)."""
        if self.exit_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.exit_fd)
            self.exit_fd = -1
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    async def stop(self) -> None:
        self.kill()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self.process.wait(), timeout=5)


def slirp4netns() -> str | None:
    return shutil.which("slirp4netns")


async def attach(init_pid: int, *, log_path: str, join_user_namespace: bool) -> Outbound:
    """Start slirp4netns for the network namespace of `init_pid` (a host pid) and wait
    until its interface is configured. It writes its messages to `log_path`, which a
    failure quotes. `join_user_namespace`: needed when the server is not root (it then has
    privileges only inside the sandbox's user namespace)."""
    program = slirp4netns()
    if program is None:
        raise NetworkFailed("slirp4netns is not installed")
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    argv = [program, "--configure", "--mtu=65520", "--disable-host-loopback",
            "--enable-seccomp", f"--ready-fd={ready_w}",
            f"--exit-fd={exit_r}"]
    if join_user_namespace:
        argv.append(f"--userns-path=/proc/{init_pid}/ns/user")
    argv += [str(init_pid), "eth0"]
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, pass_fds=(ready_w, exit_r), stdin=asyncio.subprocess.DEVNULL,
            stdout=log, stderr=log)
    except OSError as error:
        for fd in (ready_r, exit_w):
            os.close(fd)
        raise NetworkFailed(f"slirp4netns could not start: {error}") from error
    finally:
        for fd in (ready_w, exit_r, log):
            os.close(fd)
    outbound = Outbound(process, exit_w)
    loop = asyncio.get_running_loop()
    signalled: asyncio.Future[None] = loop.create_future()
    loop.add_reader(ready_r, lambda: signalled.done() or signalled.set_result(None))
    exited = asyncio.ensure_future(process.wait())
    try:
        await asyncio.wait({signalled, exited}, timeout=READY_SECONDS,
                           return_when=asyncio.FIRST_COMPLETED)
        ready = os.read(ready_r, 1) if signalled.done() else b""
    except OSError:
        ready = b""
    except BaseException:  # cancelled: the sandbox is not being made after all
        await asyncio.shield(outbound.stop())
        raise
    finally:
        loop.remove_reader(ready_r)
        os.close(ready_r)
        exited.cancel()
    if ready != b"1":
        await outbound.stop()
        problem = await asyncio.to_thread(_tail, log_path)
        raise NetworkFailed("slirp4netns did not configure the sandbox's network: "
                            + (problem or "no answer"))
    return outbound


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as handle:
            return handle.read()[-2000:].strip()
    except OSError:
        return ""
