"""A container's mount table, read from its /proc/self/mounts.

Mounting needs CAP_SYS_ADMIN, which sandboxes do not have, so the table is fixed once the
container runs: the file operations read it once per sandbox and use it to refuse kernel
filesystems (/proc, /sys, /dev) and to know read-only mounts before touching anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KERNEL_FILESYSTEMS = {"proc", "sysfs", "devpts", "devtmpfs", "mqueue", "cgroup", "cgroup2",
                      "securityfs", "debugfs", "tracefs", "bpf", "pstore", "configfs",
                      "fusectl", "hugetlbfs", "binfmt_misc"}


@dataclass(frozen=True)
class MountEntry:
    point: str
    fstype: str
    read_only: bool

    @property
    def kernel(self) -> bool:
        """Per-process kernel views (/proc, /sys, /dev…): no file API, as the fake runtime."""
        return (self.fstype in KERNEL_FILESYSTEMS or self.point == "/dev"
                or self.point.startswith(("/dev/", "/proc/", "/sys/")))


ROOT = MountEntry("/", "overlay", False)


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            entries.append(MountEntry(_unescape(fields[1]), fields[2],
                                      "ro" in fields[3].split(",")))
    return entries


def under(path: str, prefix: str) -> bool:
    """Whether `path` is `prefix` or lies below it."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def mount_of(table: list[MountEntry], path: str) -> MountEntry:
    """The mount `path` (a resolved path) lies on: the deepest one holding it."""
    best = ROOT
    for entry in table:
        if under(path, entry.point) and len(entry.point) >= len(best.point):
            best = entry
    return best
