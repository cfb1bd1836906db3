"""Which host user and group ids a sandbox's ids are, and back.

A sandbox has a user namespace of its own: root inside is an unprivileged id on the host.
As root the server maps the sandbox's ids 0-65535 onto one subordinate range of the host
(`SUBORDINATE_BASE`, or the range `/etc/subuid` and `/etc/subgid` give the user
`opensandbox`); as any other user it maps root inside onto its own id, and nothing else.
Every sandbox of a server shares the range, as Docker's `userns-remap` does: sandboxes cannot
see each other's processes or files anyway (PID and mount namespaces), and one range lets a
private root be copied from one sandbox to another without re-owning every file.

The same map translates ownership for the files API, which works on host paths: a file the
server creates for the sandbox gets the host ids that the sandbox sees as its own, and a
host id outside the map is shown as the kernel shows it inside, the overflow id (nobody).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

SUBORDINATE_USER = "opensandbox"
SUBORDINATE_BASE = 0x70000000  # 1879048192: above useradd's ranges and systemd's container ids
SANDBOX_IDS = 65536


def overflow_id(kind: str = "uid") -> int:
    """The id the kernel shows for a host id a user namespace does not map (nobody)."""
    try:
        with open(f"/proc/sys/kernel/overflow{kind}") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return 65534


@dataclass(frozen=True)
class IdRange:
    inside: int
    outside: int
    count: int

    def to_host(self, value: int) -> int | None:
        offset = value - self.inside
        return self.outside + offset if 0 <= offset < self.count else None

    def from_host(self, value: int) -> int | None:
        offset = value - self.outside
        return self.inside + offset if 0 <= offset < self.count else None


@dataclass(frozen=True)
class IdMap:
    """The user and group id ranges of a sandbox's user namespace (inside -> host)."""

    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]

    @classmethod
    def identity(cls) -> IdMap:
        """No user namespace: ids are the host's."""
        whole = (IdRange(0, 0, 2**32 - 1),)
        return cls(whole, whole)

    @classmethod
    def single(cls, base: int, count: int = SANDBOX_IDS) -> IdMap:
        ranges = (IdRange(0, base, count),)
        return cls(ranges, ranges)

    @property
    def is_identity(self) -> bool:
        return self.uids == IdMap.identity().uids

    @property
    def root(self) -> tuple[int, int]:
        """The host (uid, gid) of root inside."""
        return self.uid_to_host(0) or 0, self.gid_to_host(0) or 0

    def uid_to_host(self, uid: int) -> int | None:
        return _to_host(self.uids, uid)

    def gid_to_host(self, gid: int) -> int | None:
        return _to_host(self.gids, gid)

    def uid_from_host(self, uid: int) -> int:
        return _from_host(self.uids, uid, "uid")

    def gid_from_host(self, gid: int) -> int:
        return _from_host(self.gids, gid, "gid")

    def describe(self) -> str:
        if self.is_identity:
            return "host ids (no user namespace)"
        first = self.uids[0]
        if len(self.uids) == 1 and first.count == 1:
            return f"root maps to host id {first.outside} (the server's user); no other id " \
                   "exists inside"
        if len(self.uids) == 1:
            return (f"root and ids 0-{first.count - 1} map to host ids {first.outside}-"
                    f"{first.outside + first.count - 1}")
        return "; ".join(f"{r.inside}-{r.inside + r.count - 1} -> {r.outside}-"
                         f"{r.outside + r.count - 1}" for r in self.uids)

    def oci(self) -> dict[str, list[dict[str, int]]]:
        """`uidMappings` and `gidMappings` of an OCI config."""
        def entries(ranges: Sequence[IdRange]) -> list[dict[str, int]]:
            return [{"containerID": r.inside, "hostID": r.outside, "size": r.count}
                    for r in ranges]
        return {"uidMappings": entries(self.uids), "gidMappings": entries(self.gids)}


def _to_host(ranges: Sequence[IdRange], value: int) -> int | None:
    for entry in ranges:
        mapped = entry.to_host(value)
        if mapped is not None:
            return mapped
    return None


def _from_host(ranges: Sequence[IdRange], value: int, kind: str) -> int:
    for entry in ranges:
        mapped = entry.from_host(value)
        if mapped is not None:
            return mapped
    return overflow_id(kind)


def subordinate_range(user: str, table: str) -> tuple[int, int] | None:
    """The first `start:count` range of `user` in /etc/subuid or /etc/subgid."""
    try:
        with open(table) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] == user and fields[1].isdigit() \
                and fields[2].isdigit():
            return int(fields[1]), int(fields[2])
    return None


def overlapping_ranges(base: int, count: int, tables: Sequence[str] = ("/etc/subuid",
                                                                       "/etc/subgid")) -> list[str]:
    """Entries of the subordinate id tables that overlap `base`..`base+count` (another
    user's containers would share host ids with the sandboxes)."""
    found = []
    for table in tables:
        try:
            with open(table) as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.strip().split(":")
            if len(fields) != 3 or not fields[1].isdigit() or not fields[2].isdigit():
                continue
            start, size = int(fields[1]), int(fields[2])
            if fields[0] != SUBORDINATE_USER and start < base + count and base < start + size:
                found.append(f"{table}: {line.strip()}")
    return found


def server_id_map() -> IdMap:
    """The map this server gives its sandboxes (see the module docstring)."""
    if os.geteuid() != 0:
        uid, gid = os.geteuid(), os.getegid()
        return IdMap((IdRange(0, uid, 1),), (IdRange(0, gid, 1),))
    uids = subordinate_range(SUBORDINATE_USER, "/etc/subuid")
    gids = subordinate_range(SUBORDINATE_USER, "/etc/subgid")
    if uids and gids and uids[1] >= SANDBOX_IDS and gids[1] >= SANDBOX_IDS:
        return IdMap((IdRange(0, uids[0], SANDBOX_IDS),), (IdRange(0, gids[0], SANDBOX_IDS),))
    return IdMap.single(SUBORDINATE_BASE)
