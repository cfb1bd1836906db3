"""Egress policies on the Docker runtime: the container's own network namespace, entered
from the server, as the fake runtime's are.

Upstream runs a sidecar container with NET_ADMIN in the sandbox's network namespace. Here
the server itself installs the rules and serves the DNS forwarder (`runtimes/egress/`),
from outside the container, so no container gets NET_ADMIN and the sandbox keeps Docker's
dropped capabilities. That needs the server on the engine's host, as root: it opens the
namespace the engine made for the container (`NetworkSettings.SandboxKey`, or
`/proc/<pid>/ns/net` of the container's first process when it can tell that process is
the container's). A server that cannot (run in a container itself, or as a normal user)
refuses `networkPolicy` with 501, naming why; it never runs a sandbox unenforced.

The container's entrypoint must not run before its rules are in place, but its network
namespace exists only once it has started. So a sandbox with a policy starts behind a
gate: `sh -c 'read -r gate || exit 125; exec "$@" </dev/null' -- <entrypoint>` with stdin
open; once the rules are in, the server writes one line to the container's stdin and the
entrypoint is executed in the shell's place, with stdin on /dev/null as Docker gives it.
The gate uses only a shell built-in, so it works in any image with `/bin/sh`.

A policy patched after creation is kept in `[docker] state_dir` (labels cannot change);
a server that adopts sandboxes at start-up puts their policies back in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from typing import Any

from docker.errors import APIError

from opensandbox_emulator.runtimes.docker.engine import Engine, explain
from opensandbox_emulator.runtimes.docker.expiry import SandboxStateFile
from opensandbox_emulator.runtimes.egress.policy import EgressPolicy, PolicyError
from opensandbox_emulator.runtimes.failures import EgressFailed, EgressUnenforceable

GATE = 'read -r gate || exit 125; exec "$@" </dev/null'
GATE_SECONDS = 10.0


def gated(entrypoint: Sequence[str]) -> list[str]:
    """The container's entrypoint while its policy is being installed."""
    return ["/bin/sh", "-c", GATE, "opensandbox-egress-gate", *entrypoint]


async def open_gate(engine: Engine, container_id: str) -> None:
    """Let the gated entrypoint run (one line on the container's stdin)."""
    try:
        attached = await engine.call(engine.api.attach_socket, container_id,
                                     params={"stdin": 1, "stream": 1})
    except APIError as error:
        raise EgressFailed(f"cannot start the sandbox's entrypoint: {explain(error)}") \
            from error
    sock = getattr(attached, "_sock", attached)

    def write() -> None:
        try:
            sock.sendall(b"go\n")
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    try:
        await asyncio.wait_for(asyncio.to_thread(write), GATE_SECONDS)
    except (OSError, TimeoutError) as error:
        raise EgressFailed(f"cannot start the sandbox's entrypoint: {error}") from error


def namespace_path(attrs: dict[str, Any]) -> str:
    """Where the server opens the running container's network namespace. Raises
    `EgressUnenforceable` when it cannot reach it from here."""
    settings = attrs.get("NetworkSettings") or {}
    key = settings.get("SandboxKey") or ""
    if key and os.path.exists(key):
        return key
    pid = int((attrs.get("State") or {}).get("Pid") or 0)
    container_id = attrs.get("Id") or ""
    if pid > 0 and container_id and _belongs_to(pid, container_id):
        return f"/proc/{pid}/ns/net"
    raise EgressUnenforceable(
        "the server cannot reach the container's network namespace (it runs in other "
        "namespaces than the Docker engine, in a container of its own, say); run the "
        "server on the engine's host, as root")


def _belongs_to(pid: int, container_id: str) -> bool:
    """Whether host pid `pid` (as this server sees pids) is a process of that container:
    its cgroup names the container, so a pid of another namespace is never taken for it."""
    try:
        with open(f"/proc/{pid}/cgroup") as handle:
            return container_id in handle.read()
    except OSError:
        return False


class PolicyStore(SandboxStateFile):
    """`{sandbox_id: NetworkPolicy}`: policies changed since the container was created."""

    kind = "egress"

    def get(self, sandbox_id: str) -> EgressPolicy | None:
        value = self._entries.get(sandbox_id)
        if value is None:
            return None
        try:
            return EgressPolicy.from_document(value)
        except PolicyError:
            return EgressPolicy.from_document(None)

    async def set(self, sandbox_id: str, policy: EgressPolicy) -> None:
        await self._put(sandbox_id, policy.document())
