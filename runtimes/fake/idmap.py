"""Idmapped volumes: host directories a sandbox writes as root, owned by root on the host.

Without help a volume shows its host owners through the sandbox's user namespace: a
directory owned by host root is owned by nobody inside, and root inside cannot write it.
Docker (without `userns-remap`) shows host ids unchanged. An idmapped mount (Linux 5.12+,
on ext4, xfs, btrfs, tmpfs and others) does the same here: it is mounted through a user
namespace with the sandbox's map, so the ids on disk are the ids the sandbox sees.

runc 1.1 cannot make idmapped mounts, and a detached mount cannot be bind-mounted by path.
So a small helper (`mount_helper.py`, run with the server's Python) enters a private mount
namespace, attaches each idmapped volume at a staging path there, and then execs runc,
whose container binds them from there (`launch.py`). Nothing is mounted in the host's
namespace, so nothing can be left behind. Where the kernel or the filesystem cannot idmap,
the volume is bound as is and `FileInfo` shows what the sandbox sees (the difference is
documented).

The server needs a user namespace with the sandbox's map to make those mounts: it makes one
at start-up (as root only) and keeps a descriptor of it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

from opensandbox_emulator.runtimes.fake import mount_helper
from opensandbox_emulator.runtimes.fake.ids import IdMap


def user_namespace(ids: IdMap) -> int | None:
    """A descriptor of a new user namespace with `ids` as its map (root only), or None
    where the host cannot make one."""
    if os.geteuid() != 0 or ids.is_identity:
        return None
    try:
        holder = subprocess.Popen(["unshare", "--user", "--", "sleep", "30"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    except OSError:
        return None
    try:
        own = os.stat("/proc/self/ns/user").st_ino
        deadline = time.monotonic() + 5
        while True:
            try:
                if os.stat(f"/proc/{holder.pid}/ns/user").st_ino != own:
                    break
            except OSError:
                return None
            if holder.poll() is not None or time.monotonic() > deadline:
                return None
            time.sleep(0.002)
        for kind, ranges in (("uid", ids.uids), ("gid", ids.gids)):
            with open(f"/proc/{holder.pid}/{kind}_map", "w") as handle:
                handle.write("".join(f"{r.inside} {r.outside} {r.count}\n" for r in ranges))
        return os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    finally:
        holder.kill()
        holder.wait()


def supported(source: str, userns_fd: int) -> bool:
    """Whether `source` can be idmapped here: tried on a detached copy of it, which
    vanishes when closed (no mount is ever attached anywhere)."""
    try:
        tree = mount_helper.open_tree(source)
    except OSError:
        return False
    try:
        mount_helper.set_idmap(tree, userns_fd)
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.close(tree)


def helper_command(python: str, userns_fd: int | None,
                   entries: list[tuple[str, str, str]]) -> list[str]:
    """The command that stages `entries` ((kind, host source, staging path), kind "bind"
    or "idmap") in a private mount namespace and then runs what follows it (runc)."""
    flat = [item for entry in entries for item in entry]
    return [python, "-I", "-S", mount_helper.__file__,
            str(userns_fd if userns_fd is not None else -1), str(len(entries)), *flat]
