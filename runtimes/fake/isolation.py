"""How sandboxes are isolated on this host: decided once, at start-up, by trying.

`[fake] isolation` chooses:
- `auto` (the default): as much as the host offers. A container per sandbox (runc) with
  every layer that works here; without runc, or where no container can start, sandboxes
  run on the host with no isolation, and the server says so loudly.
- `strict`: every layer (container, ids mapped off root, seccomp, cgroup limits, a network
  of its own with a way out) or the server refuses to start, naming what is missing.
- `none`: no isolation at all, on purpose.
(`bubblewrap`, the value of earlier versions, asked for isolation or nothing: it now means
`strict`.)

Each layer is tried for real: a probe sandbox is started with it, so a host that cannot do
something (cgroups not delegated, no user namespaces, no slirp4netns) is found out at
start-up, not at the first create. `/health` reports each layer under `isolation`,
`network` and `limits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from opensandbox_emulator.runtimes.failures import Unavailable
from opensandbox_emulator.runtimes.fake import cgroups, idmap, interpreter, network, seccomp
from opensandbox_emulator.runtimes.fake.ids import (
    SANDBOX_IDS,
    IdMap,
    overlapping_ranges,
    server_id_map,
)
from opensandbox_emulator.runtimes.fake.launch import (
    ContainerLauncher,
    HostLauncher,
    Launcher,
    LaunchRequest,
    remove_orphan_stages,
)
from opensandbox_emulator.runtimes.fake.oci import CAPABILITIES, NAMESPACES, Resources
from opensandbox_emulator.runtimes.fake.runc import Runc, runc, state_root, version

log = logging.getLogger("opensandbox.runtime.fake")

LEVELS = ("auto", "strict", "none")


@dataclass
class Plan:
    """The launcher sandboxes are started with, and what it gives them."""

    launcher: Launcher
    isolation: dict[str, Any]
    network: dict[str, Any]
    limits: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def normalise(level: str) -> tuple[str, str | None]:
    """The level to use, and a note when the configured value was mapped."""
    if level == "bubblewrap":
        return "strict", ('[fake] isolation = "bubblewrap" now means "strict": sandboxes are '
                          "containers (runc), and the server refuses to start without every "
                          "layer of isolation.")
    if level not in LEVELS:
        raise ValueError(f"isolation must be one of {', '.join(LEVELS)} (got {level!r})")
    return level, None


def unisolated(reason: str) -> Plan:
    host = HostLauncher(interpreter.on_host())
    return Plan(host, {"mode": "none", "reason": reason}, {"mode": "host"},
                {"mode": "none", "pause": "SIGSTOP"})


async def _probe(launcher: ContainerLauncher, state_dir: str, pids: int | None) -> str | None:
    """Start one sandbox with `launcher` and end it; raises what starting raised. Returns
    the freezer its cgroup has ("v2", "v1" or None)."""
    directory = tempfile.mkdtemp(prefix="probe-", dir=state_dir)
    os.chmod(directory, 0o711)
    try:
        box = await launcher.launch(LaunchRequest(
            sandbox_id=os.path.basename(directory), directory=directory, volumes=(),
            resources=Resources(pids=pids), hostname="probe"))
        freezer = box.cgroup.freezer if box.cgroup is not None else None
        await launcher.end([box])
        return freezer
    finally:
        await asyncio.to_thread(shutil.rmtree, directory, True)


async def plan(level: str, state_dir: str, *, pids_limit: int | None) -> Plan:
    """Work out the isolation of this server's sandboxes. Raises `Unavailable` when
    `strict` cannot be met."""
    level, note = normalise(level)
    warnings = [note] if note else []
    if level == "none":
        chosen = unisolated('[fake] isolation = "none" was configured')
        chosen.warnings = [*warnings, 'NO ISOLATION: [fake] isolation = "none" was configured.'
                           " Sandbox processes run directly on this host, as its user, and "
                           "see its whole filesystem and network."]
        return chosen
    container, problems = await _container_plan(state_dir, pids_limit)
    if container is None:
        reason = "; ".join(problems)
        if level == "strict":
            raise Unavailable(f"[fake] isolation = \"strict\" but sandboxes cannot be "
                                 f"isolated on this host: {reason}")
        chosen = unisolated(reason)
        chosen.warnings = [*warnings, f"NO ISOLATION: {reason}. Sandbox processes run "
                           "directly on this host, as its user, and see its whole filesystem "
                           "and network. Install runc and slirp4netns (apt-get install runc "
                           "slirp4netns uidmap) to give each sandbox a container."]
        return chosen
    if level == "strict" and problems:
        raise Unavailable("[fake] isolation = \"strict\" but some layers are missing: "
                             + "; ".join(problems))
    container.warnings = [*warnings, *(f"PARTIAL ISOLATION: {p}" for p in problems)]
    return container


async def _container_plan(state_dir: str, pids_limit: int | None
                          ) -> tuple[Plan | None, list[str]]:
    """The container plan with every layer this host allows, and what is missing; None
    (and why) when no container can start at all."""
    program = runc()
    if program is None:
        return None, ["runc is not installed (apt-get install runc)"]
    try:
        init = await asyncio.to_thread(interpreter.for_sandbox)
    except RuntimeError as error:
        return None, [str(error)]
    problems: list[str] = []
    root = os.geteuid() == 0
    ids = server_id_map()
    if root:
        clashes = overlapping_ranges(ids.uids[0].outside, SANDBOX_IDS)
        if clashes:
            problems.append("the sandboxes' host ids overlap a subordinate id range given to "
                            f"another user ({', '.join(clashes)}); give the user "
                            "'opensandbox' a range of its own in /etc/subuid and /etc/subgid")
    else:
        problems.append("the server is not root, so root inside a sandbox is the server's own "
                        "user and no other id exists inside (a command with another uid "
                        "fails); run the server as root for ids 0-65535 of their own")
    engine = Runc(program, state_root())
    with contextlib.suppress(Exception):
        for container_id in await engine.remove_orphans():
            log.info("removed container %s, left behind by a server that is gone",
                     container_id)
        await asyncio.to_thread(remove_orphan_stages)
    userns_fd = await asyncio.to_thread(idmap.user_namespace, ids)
    layout = cgroups.layout()
    want_cgroups = layout != "none"
    want_outbound = network.slirp4netns() is not None
    if not want_outbound:
        problems.append("slirp4netns is not installed, so sandboxes have no way out "
                        "(apt-get install slirp4netns); each still has its own loopback")
    profile = seccomp.profile()
    failure = ""
    failures: dict[tuple[bool, bool], str] = {}
    freezer: str | None = None
    launcher: ContainerLauncher | None = None
    for cgroups_on, outbound_on in _attempts(want_cgroups, want_outbound):
        candidate = ContainerLauncher(engine, ids, init, profile, cgroups_on, outbound_on,
                                      userns_fd)
        try:
            freezer = await _probe(candidate, state_dir, pids_limit if cgroups_on else None)
        except Exception as error:  # each attempt drops a layer
            failure = failures[cgroups_on, outbound_on] = str(error)
            log.info("probe sandbox (cgroups %s, slirp4netns %s) failed: %s", cgroups_on,
                     outbound_on, failure)
            continue
        launcher = candidate
        break
    if launcher is None:
        if userns_fd is not None:
            os.close(userns_fd)
        return None, [f"runc cannot start a container here: {failure}"]
    if want_cgroups and not launcher.cgroups:
        reason = failures.get((True, launcher.outbound), failure)
        problems.append("cgroups are not delegated to this server, so resourceLimits "
                        f"(memory, cpu) and the pids limit are not enforced ({reason})")
    if want_outbound and not launcher.outbound:
        reason = failures.get((launcher.cgroups, True), failure)
        problems.append(f"slirp4netns cannot attach to a sandbox here ({reason}); sandboxes "
                        "have their own loopback but no way out")
    if layout == "none":
        problems.append("this host has no cgroup hierarchy, so resourceLimits (memory, cpu) "
                        "and the pids limit are not enforced")
    return Plan(launcher, _isolation_report(program, ids, userns_fd, state_dir),
                _network_report(launcher),
                _limits_report(launcher, layout, freezer, pids_limit)), problems


def _attempts(cgroups_on: bool, outbound_on: bool) -> list[tuple[bool, bool]]:
    attempts = [(cgroups_on, outbound_on)]
    if outbound_on:
        attempts.append((cgroups_on, False))
    if cgroups_on:
        attempts.append((False, outbound_on))
        if outbound_on:
            attempts.append((False, False))
    return attempts


def _isolation_report(program: str, ids: IdMap, userns_fd: int | None,
                      state_dir: str) -> dict[str, Any]:
    idmapped = userns_fd is not None and idmap.supported(state_dir, userns_fd)
    return {"mode": "container", "engine": f"runc {version(program)}",
            "users": ids.describe(), "namespaces": list(NAMESPACES),
            "capabilities": "Docker's default: " + ", ".join(
                c.removeprefix("CAP_").lower() for c in CAPABILITIES),
            "seccomp": "Docker's default profile (io_uring refused too)",
            "noNewPrivileges": True,
            "volumes": "idmapped (host ids as they are)" if idmapped else
            "bound as they are (host ids through the user namespace)"}


def _network_report(launcher: ContainerLauncher) -> dict[str, Any]:
    if launcher.outbound:
        return {"mode": "own", "outbound": "slirp4netns",
                "hostLoopback": "unreachable"}
    return {"mode": "own", "outbound": "none", "hostLoopback": "unreachable"}


def _limits_report(launcher: ContainerLauncher, layout: str, freezer: str | None,
                   pids_limit: int | None) -> dict[str, Any]:
    signals = "SIGSTOP of every process but the init"
    if not launcher.cgroups:
        return {"mode": "none", "memory": False, "cpu": False, "pids": None, "pause": signals}
    return {"mode": f"cgroup {layout}", "memory": True, "cpu": True, "pids": pids_limit,
            "pause": f"cgroup {freezer} freezer" if freezer else signals}
