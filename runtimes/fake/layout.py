"""How a fake sandbox's filesystem is laid out, and how its paths map to the host.

A sandbox sees a private writable root, the host's system directories read-only, an `/etc`
of its own (see `etc.py`) and its volumes at their mount paths. `SandboxLayout.resolve` maps
a path *as the sandbox would see it*: `..` and symlinks are followed inside the sandbox's
own view (an absolute symlink target starts again from the sandbox's root), so no path can
reach host files the sandbox cannot see. The same table is what the container is built
from (`oci.py`), so the server's view and the sandbox's never differ.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from opensandbox_emulator.runtimes.failures import (
    FileFailure,
    MountPathRefused,
    PathChanged,
    PathNotAccessible,
    PathReadOnly,
    PathTooLong,
    RuntimeFailure,
    SymlinkLoop,
)
from opensandbox_emulator.runtimes.fake.etc import write_etc
from opensandbox_emulator.runtimes.fake.ids import IdMap

# Host directories every sandbox sees read-only. Those that are symlinks on the host
# (`/bin -> usr/bin` on merged-/usr systems) are recreated as the same symlink instead.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
# Directories created empty inside every private root, with their modes.
PRIVATE_DIRS = {"/tmp": 0o1777, "/root": 0o700, "/home": 0o755, "/var": 0o755,
                "/var/tmp": 0o1777, "/run": 0o755, "/opt": 0o755, "/mnt": 0o755,
                "/srv": 0o755, "/workspace": 0o755, "/dev": 0o755, "/proc": 0o555,
                "/sys": 0o555, "/etc": 0o755}
MAX_SYMLINK_HOPS = 40
MAX_RETRIES = 40  # re-reads of a name that a sandbox process keeps changing under us


def resolution_failure(error: OSError, path: str) -> RuntimeFailure:
    """An OS error met while resolving `path` as the failure it means for the client."""
    if error.errno == errno.ENAMETOOLONG:
        return PathTooLong(path)
    if error.errno == errno.ELOOP:
        return SymlinkLoop(path)
    if error.errno in (errno.EACCES, errno.EPERM):
        return PathNotAccessible(path, f"cannot resolve {path}: {error.strerror}")
    return FileFailure(path, f"cannot resolve {path}: {error.strerror or error}")


@dataclass(frozen=True)
class Mount:
    """One mount of the sandbox. `kind` is "bind", or a kernel filesystem the sandbox gets
    on its own ("dev", "proc", "sys"), which the files API leaves alone. `idmapped`: the
    host directory is mounted through an idmapped mount, so the ids stored on disk are the
    ids the sandbox sees (a volume written by root inside is owned by root on the host,
    as under Docker); otherwise the sandbox sees host ids through its user namespace."""

    sandbox_path: str
    host_path: str
    read_only: bool
    kind: str = "bind"
    idmapped: bool = False
    bind_source: str | None = None  # what the container binds, when not `host_path`


@dataclass(frozen=True)
class ResolvedPath:
    sandbox_path: str
    host_path: str
    read_only: bool

    def require_writable(self) -> None:
        if self.read_only:
            raise PathReadOnly(self.sandbox_path,
                               f"{self.sandbox_path} is on a read-only mount of the sandbox; "
                               "write under /tmp, /workspace or a writable volume instead.")


@dataclass(frozen=True)
class RootSetup:
    """What a private root is built with, beyond its volumes."""

    ids: IdMap
    hostname: str
    address: str = "127.0.1.1"
    nameservers: Sequence[str] = ()
    extra: Sequence[Mount] = ()  # the init's interpreter when the sandbox must be shown it,
    # and the files offered to every sandbox
    init_script: str | None = None  # copied to /opt/opensandbox/init.py

class SandboxLayout:
    """The mount table of one sandbox. With `isolated=False` it is the identity map."""

    def __init__(self, root: str, mounts: list[Mount], *, isolated: bool = True):
        self.root = root
        self.isolated = isolated
        self.mounts = sorted(mounts, key=lambda m: m.sandbox_path.count("/") if
                             m.sandbox_path != "/" else 0)

    @classmethod
    def identity(cls) -> SandboxLayout:
        return cls("/", [Mount("/", "/", read_only=False)], isolated=False)

    @classmethod
    def build(cls, root: str, volumes: list[Mount], setup: RootSetup) -> SandboxLayout:
        """Create the private root on disk, owned by the sandbox's root, and return the
        sandbox's mount table."""
        owner = setup.ids.root
        os.makedirs(root, exist_ok=True)
        os.chown(root, *owner)
        mounts = [Mount("/", root, read_only=False)]
        for path, mode in PRIVATE_DIRS.items():
            host = root + path
            os.makedirs(host, exist_ok=True)
            os.chmod(host, mode)
            os.chown(host, *owner)
        for path in SYSTEM_DIRS:
            if os.path.islink(path):
                os.symlink(os.readlink(path), root + path)
                os.lchown(root + path, *owner)
            elif os.path.isdir(path):
                os.makedirs(root + path, exist_ok=True)
                mounts.append(Mount(path, path, read_only=True))
        shadow = _group_id("/etc/group", "shadow")
        for entry in write_etc(root + "/etc", hostname=setup.hostname, address=setup.address,
                               nameservers=list(setup.nameservers), owner=owner,
                               shadow_gid=None if shadow is None
                               else setup.ids.gid_to_host(shadow)):
            mounts.append(Mount("/etc/" + entry.name, entry.host_path, read_only=True))
        if setup.init_script is not None:
            _install_init(root, setup.init_script, owner)
        mounts.append(Mount("/dev", "/dev", read_only=True, kind="dev"))
        mounts.append(Mount("/proc", "/proc", read_only=True, kind="proc"))
        mounts.append(Mount("/sys", "/sys", read_only=True, kind="sys"))
        layout = cls(root, mounts)
        for extra in [*setup.extra, *volumes]:
            try:
                target = layout.resolve(extra.sandbox_path)
            except RuntimeFailure as error:
                raise MountPathRefused(extra.sandbox_path, f"Volume mountPath "
                                       f"{extra.sandbox_path} cannot be made in the sandbox: "
                                       f"{error.message}") from error
            if target.read_only:
                raise MountPathRefused(
                    extra.sandbox_path,
                    f"Volume mountPath {extra.sandbox_path} lies on a read-only system "
                    "directory of the sandbox; mount it elsewhere (for example under /mnt).")
            try:
                _make_mount_point(target.host_path, os.path.isdir(extra.host_path),
                                  owner if not layout._mount_for(target.sandbox_path).idmapped
                                  else None)
            except OSError as error:
                raise MountPathRefused(extra.sandbox_path, f"Volume mountPath "
                                       f"{extra.sandbox_path} cannot be made in the sandbox: "
                                       f"{error.strerror}") from error
            layout = cls(root, [*layout.mounts, extra])
        return layout

    # --- mapping -------------------------------------------------------------------------

    def _mount_for(self, sandbox_path: str) -> Mount:
        best = self.mounts[0]
        for mount in self.mounts:
            prefix = mount.sandbox_path
            if sandbox_path == prefix or sandbox_path.startswith(prefix.rstrip("/") + "/"):
                if len(prefix) >= len(best.sandbox_path):
                    best = mount
        return best

    def _to_host(self, sandbox_path: str) -> tuple[str, bool]:
        mount = self._mount_for(sandbox_path)
        rest = sandbox_path[len(mount.sandbox_path):].lstrip("/")
        host = os.path.join(mount.host_path, rest) if rest else mount.host_path
        return host, mount.read_only

    def resolve(self, path: str, *, follow_last: bool = True) -> ResolvedPath:
        """Map a sandbox path to the host, following `..` and symlinks as the sandbox would.

        With `follow_last=False` a final symlink is not followed (for delete, rename and
        lstat). A missing path resolves too: what exists is followed, the rest kept as written.
        """
        if not path.startswith("/"):
            path = "/" + path
        pending = [c for c in path.split("/") if c]
        current: list[str] = []
        hops = retries = 0
        while pending:
            name = pending.pop(0)
            if name == ".":
                continue
            if name == "..":
                if current:
                    current.pop()
                continue
            candidate = "/" + "/".join([*current, name])
            host, _ = self._to_host(candidate)
            is_last = not pending
            try:
                info = os.lstat(host)
            except (FileNotFoundError, NotADirectoryError):
                current.append(name)
                continue
            except OSError as error:
                raise resolution_failure(error, path) from error
            if stat.S_ISLNK(info.st_mode) and (follow_last or not is_last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise SymlinkLoop(path)
                try:
                    target = os.readlink(host)
                except OSError as error:
                    if error.errno not in (errno.EINVAL, errno.ENOENT):
                        raise resolution_failure(error, path) from error
                    # No longer a symlink (EINVAL), or gone: a sandbox process changed it
                    # between the lstat and the readlink. Look at the name again.
                    retries += 1
                    if retries > MAX_RETRIES:
                        raise PathChanged(path) from error
                    hops -= 1
                    pending.insert(0, name)
                    continue
                parts = [c for c in target.split("/") if c]
                if target.startswith("/"):
                    current = []
                pending = parts + pending
                continue
            current.append(name)
        sandbox_path = "/" + "/".join(current)
        host, read_only = self._to_host(sandbox_path)
        return ResolvedPath(sandbox_path, host, read_only)

    def exists(self, path: str) -> bool:
        return os.path.exists(self.resolve(path).host_path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(self.resolve(path).host_path)



def _make_mount_point(host_path: str, directory: bool, owner: tuple[int, int] | None) -> None:
    """Create the directory (or empty file) a mount goes on, and the missing directories
    above it, owned by `owner` (None: leave them to whoever creates them)."""
    missing = []
    parent = os.path.dirname(host_path)
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for path in reversed(missing):
        os.mkdir(path, 0o755)
        if owner is not None:
            os.chown(path, *owner)
    if os.path.lexists(host_path):
        return
    if directory:
        os.mkdir(host_path, 0o755)
    else:
        with open(host_path, "w"):
            pass
    if owner is not None:
        os.chown(host_path, *owner)


def _install_init(root: str, script: str, owner: tuple[int, int]) -> None:
    """The init's program in the private root, owned by the host's root: the sandbox can
    read it, not change it (it is read once, when the sandbox starts, anyway). Its
    directory is the sandbox root's, as upstream's `/opt/opensandbox` is (the env file
    lives there)."""
    directory = root + "/opt/opensandbox"
    os.makedirs(directory, 0o755, exist_ok=True)
    os.chown(directory, *owner)
    with open(script, "rb") as source, open(directory + "/init.py", "wb") as target:
        target.write(source.read())
    os.chmod(directory + "/init.py", 0o444)


def _group_id(path: str, name: str) -> int | None:
    try:
        with open(path) as handle:
            for line in handle:
                fields = line.split(":")
                if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
                    return int(fields[2])
    except OSError:
        pass
    return None
