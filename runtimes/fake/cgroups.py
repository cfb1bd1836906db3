"""A sandbox's control groups, as the server reads and drives them from the host.

runc creates the groups (limits included) when it starts the sandbox; this module finds
them from `/proc/<init>/cgroup`, reads usage for `/metrics`, counts OOM kills, and freezes
the sandbox for pause. It knows both layouts: cgroup v2 (one unified tree) and v1 (one tree
per controller, possibly beside a controller-less v2 tree, the "hybrid" layout).

Freezing prefers the v2 freezer (`cgroup.freeze`), which exists in the unified tree of both
layouts on kernels from 5.2 on: a process frozen there still dies of SIGKILL at once. The v1
freezer holds even a SIGKILL until the group thaws; the runtime then records the kill and
the process ends on resume (as a paused Docker container does).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

V1_CONTROLLERS = {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls",
                  "net_prio", "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc"}


def _hierarchies() -> dict[frozenset[str], str]:
    """The controllers (and `name=` options) of each mounted hierarchy -> its mount point;
    the unified tree is the empty set."""
    found: dict[frozenset[str], str] = {}
    try:
        with open("/proc/self/mountinfo") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] == "cgroup2":
            found.setdefault(frozenset(), fields[4])
        elif tail[0] == "cgroup":
            options = frozenset(o for o in tail[2].split(",")
                                if o in V1_CONTROLLERS or o.startswith("name="))
            found.setdefault(options, fields[4])
    return found


def _mount_points() -> dict[str, str]:
    """controller (or `name=` option, or "unified") -> mount point."""
    found: dict[str, str] = {}
    for controllers, point in _hierarchies().items():
        if not controllers:
            found.setdefault("unified", point)
        for controller in controllers:
            found.setdefault(controller, point)
    return found


def layout() -> str:
    """"v2", "v1" (with or without a unified tree beside it) or "none"."""
    points = _mount_points()
    if "memory" in points or "pids" in points:
        return "v1"
    unified = points.get("unified")
    if unified and os.path.exists(os.path.join(unified, "cgroup.controllers")):
        with open(os.path.join(unified, "cgroup.controllers")) as handle:
            if handle.read().split():
                return "v2"
    return "none"


def directories(pid: int) -> list[str]:
    """Every cgroup directory process `pid` is in, in every hierarchy, but the roots."""
    hierarchies = _hierarchies()
    try:
        with open(f"/proc/{pid}/cgroup") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        point = hierarchies.get(frozenset(c for c in controllers.split(",") if c))
        if point is not None and path not in ("/", ""):
            found.append(point + path)
    return found


@dataclass
class SandboxCgroup:
    """The groups one sandbox's processes live in (host paths; None where absent)."""

    memory: str | None = None
    cpu: str | None = None  # cpuacct in v1 (usage), cpu.stat in v2
    pids: str | None = None
    freezer_v1: str | None = None
    unified: str | None = None
    v2: bool = False
    every: list[str] = field(default_factory=list)  # every directory, every hierarchy

    @classmethod
    def of(cls, pid: int) -> SandboxCgroup | None:
        """The groups of process `pid` (the sandbox's init), None when it has none of its
        own (the root group: cgroups were not set up)."""
        points = _mount_points()
        try:
            with open(f"/proc/{pid}/cgroup") as handle:
                lines = handle.read().splitlines()
        except OSError:
            return None
        found = cls()
        own = False
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if path in ("/", ""):
                continue
            own = True
            if controllers == "":
                if "unified" in points:
                    found.unified = points["unified"] + path
                continue
            for controller in controllers.split(","):
                point = points.get(controller)
                if point is None:
                    continue
                if controller == "memory":
                    found.memory = point + path
                elif controller == "cpuacct":
                    found.cpu = point + path
                elif controller == "pids":
                    found.pids = point + path
                elif controller == "freezer":
                    found.freezer_v1 = point + path
        if not own:
            return None
        found.every = directories(pid)
        if found.memory is None and found.unified is not None and \
                os.path.exists(os.path.join(found.unified, "memory.current")):
            found.v2 = True
            found.memory = found.cpu = found.pids = found.unified
        return found

    # --- usage -----------------------------------------------------------------------------

    def memory_used(self) -> int | None:
        """Bytes in use, page cache that can be dropped left out (as `docker stats`)."""
        if self.memory is None:
            return None
        if self.v2:
            used = _number(self.memory, "memory.current")
            inactive = _stat(self.memory, "memory.stat", "inactive_file")
        else:
            used = _number(self.memory, "memory.usage_in_bytes")
            inactive = _stat(self.memory, "memory.stat", "total_inactive_file")
        if used is None:
            return None
        return max(0, used - (inactive or 0))

    def cpu_seconds(self) -> float | None:
        if self.cpu is None:
            return None
        if self.v2:
            micros = _stat(self.cpu, "cpu.stat", "usage_usec")
            return None if micros is None else micros / 1e6
        nanos = _number(self.cpu, "cpuacct.usage")
        return None if nanos is None else nanos / 1e9

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer ended in this group so far."""
        if self.memory is None:
            return 0
        if self.v2:
            return _stat(self.memory, "memory.events", "oom_kill") or 0
        return _stat(self.memory, "memory.oom_control", "oom_kill") or 0

    # --- freezing --------------------------------------------------------------------------

    @property
    def freezer(self) -> str | None:
        """"v2", "v1" or None: which freezer pause uses."""
        if self.unified is not None and os.path.exists(os.path.join(self.unified,
                                                                    "cgroup.freeze")):
            return "v2"
        if self.freezer_v1 is not None:
            return "v1"
        return None

    def freeze(self, frozen: bool, *, wait: float = 2.0) -> None:
        """Freeze (or thaw) every process of the group; returns once the kernel says so
        (or after `wait` seconds). Raises OSError when the group cannot be written."""
        kind = self.freezer
        if kind == "v2":
            assert self.unified is not None
            _write(self.unified, "cgroup.freeze", "1" if frozen else "0")
            deadline = time.monotonic() + wait
            while _stat(self.unified, "cgroup.events", "frozen") != int(frozen):
                if time.monotonic() > deadline:
                    return
                time.sleep(0.002)
        elif kind == "v1":
            assert self.freezer_v1 is not None
            wanted = "FROZEN" if frozen else "THAWED"
            _write(self.freezer_v1, "freezer.state", wanted)
            deadline = time.monotonic() + wait
            while _text(self.freezer_v1, "freezer.state") != wanted:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.002)


def _text(directory: str, name: str) -> str | None:
    try:
        with open(os.path.join(directory, name)) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _number(directory: str, name: str) -> int | None:
    text = _text(directory, name)
    if text is None:
        return None
    with contextlib.suppress(ValueError):
        return int(text.split()[0])
    return None


def _stat(directory: str, name: str, key: str) -> int | None:
    text = _text(directory, name)
    if text is None:
        return None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == key and fields[1].lstrip("-").isdigit():
            return int(fields[1])
    return None


def _write(directory: str, name: str, value: str) -> None:
    with open(os.path.join(directory, name), "w") as handle:
        handle.write(value)
