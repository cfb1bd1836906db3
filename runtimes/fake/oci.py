"""The OCI runtime config (`config.json`) of a sandbox, built from its mount table.

What a container gets from Docker by default is what a sandbox gets here: its own user, PID,
mount, network, IPC, UTS and cgroup namespaces; root inside mapped to an unprivileged host
id; Docker's default capability set, `no_new_privs` and a seccomp filter with the effect of
Docker's default profile (`seccomp.py`); `/proc` of its own PID namespace with the kernel's
sensitive files masked or read-only; `/sys` read-only; a `/dev` of its own with the usual
device nodes and a private `devpts`; cgroup limits when the host delegates cgroups. The
root filesystem is the sandbox's private root with the layout's bind mounts on top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opensandbox_emulator.runtimes.fake.ids import IdMap
from opensandbox_emulator.runtimes.fake.layout import SandboxLayout

# Docker's default capability set.
CAPABILITIES = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")
NAMESPACES = ("user", "pid", "mount", "network", "ipc", "uts", "cgroup")
MASKED_PATHS = ("/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Resources:
    """The cgroup limits of a sandbox (None: unlimited)."""

    memory_bytes: int | None = None
    nano_cpus: int | None = None
    pids: int | None = None

    def oci(self) -> dict[str, Any]:
        section: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
        if self.memory_bytes:
            # No swap on top: a sandbox over its limit is OOM-killed, never swapped out.
            section["memory"] = {"limit": self.memory_bytes, "swap": self.memory_bytes}
        if self.nano_cpus:
            section["cpu"] = {"period": CPU_PERIOD_US,
                              "quota": max(1000, self.nano_cpus * CPU_PERIOD_US // 10**9)}
        if self.pids:
            section["pids"] = {"limit": self.pids}
        return section


@dataclass(frozen=True)
class ContainerSpec:
    layout: SandboxLayout
    ids: IdMap
    hostname: str
    argv: Sequence[str]
    env: Mapping[str, str]
    seccomp: Mapping[str, Any] | None
    cgroups_path: str | None = None
    rootfs: str | None = None  # where runc finds the private root (default: the layout's)
    resources: Resources = field(default_factory=Resources)
    annotations: Mapping[str, str] = field(default_factory=dict)


def _bind_options(read_only: bool) -> list[str]:
    options = ["rbind", "nosuid", "nodev", "rprivate"]
    return [*options, "ro"] if read_only else options


def mounts(layout: SandboxLayout, ids: IdMap) -> list[dict[str, Any]]:
    """The layout's mounts, shallow ones first, with the kernel filesystems a container
    has, each where the layout puts it."""
    tty_group = ["gid=5"] if ids.gid_to_host(5) is not None else []  # "tty", when mapped
    result: list[dict[str, Any]] = []
    for mount in layout.mounts:
        if mount.sandbox_path == "/":
            continue
        if mount.kind == "proc":
            result.append({"destination": mount.sandbox_path, "type": "proc",
                           "source": "proc", "options": ["nosuid", "noexec", "nodev"]})
        elif mount.kind == "dev":
            result += [
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                             *tty_group]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                 "options": ["nosuid", "noexec", "nodev"]},
            ]
        elif mount.kind == "sys":
            result += [
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            ]
        else:
            result.append({"destination": mount.sandbox_path, "type": "bind",
                           "source": mount.bind_source or mount.host_path,
                           "options": _bind_options(mount.read_only)})
    return result


def config(spec: ContainerSpec) -> dict[str, Any]:
    capabilities = list(CAPABILITIES)
    linux: dict[str, Any] = {
        **spec.ids.oci(),
        "namespaces": [{"type": kind} for kind in NAMESPACES],
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
        "resources": spec.resources.oci(),
    }
    if spec.cgroups_path:
        linux["cgroupsPath"] = spec.cgroups_path
    if spec.seccomp is not None:
        linux["seccomp"] = dict(spec.seccomp)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(spec.argv),
            "env": [f"{key}={value}" for key, value in spec.env.items()],
            "cwd": "/",
            "capabilities": {"bounding": capabilities, "effective": capabilities,
                             "permitted": capabilities},
            "noNewPrivileges": True,
        },
        "root": {"path": spec.rootfs or spec.layout.root, "readonly": False},
        "hostname": spec.hostname,
        "mounts": mounts(spec.layout, spec.ids),
        "linux": linux,
        "annotations": dict(spec.annotations),
    }
