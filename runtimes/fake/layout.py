"""How a fake sandbox's filesystem is laid out, and how its paths map to the host.

A sandbox sees a private writable root, the host's system directories read-only, and its
volumes at their mount paths. `SandboxLayout.resolve` maps a path *as the sandbox would see
it*: `..` and symlinks are followed inside the sandbox's own view (an absolute symlink
target starts again from the sandbox's root), so no path can reach host files the sandbox
cannot see.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass

from opensandbox_emulator.runtimes.failures import (
    MountPathRefused,
    PathReadOnly,
    RuntimeFailure,
    SymlinkLoop,
)

# Host directories every sandbox sees read-only. Those that are symlinks on the host
# (`/bin -> usr/bin` on merged-/usr systems) are recreated as the same symlink instead.
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
# Directories created empty inside every private root, with their modes.
PRIVATE_DIRS = {"/tmp": 0o1777, "/root": 0o700, "/home": 0o755, "/var": 0o755,
                "/var/tmp": 0o1777, "/run": 0o755, "/opt": 0o755, "/mnt": 0o755,
                "/srv": 0o755, "/workspace": 0o755, "/dev": 0o755, "/proc": 0o555}
MAX_SYMLINK_HOPS = 40


@dataclass(frozen=True)
class Mount:
    sandbox_path: str
    host_path: str
    read_only: bool
    kind: str = "bind"  # "bind" | "dev" | "proc"


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
    def build(cls, root: str, volumes: list[Mount]) -> SandboxLayout:
        """Create the private root on disk and return the sandbox's mount table."""
        os.makedirs(root, exist_ok=True)
        mounts = [Mount("/", root, read_only=False)]
        for path, mode in PRIVATE_DIRS.items():
            host = root + path
            os.makedirs(host, exist_ok=True)
            os.chmod(host, mode)
        for path in SYSTEM_DIRS:
            if os.path.islink(path):
                os.symlink(os.readlink(path), root + path)
            elif os.path.isdir(path):
                os.makedirs(root + path, exist_ok=True)
                mounts.append(Mount(path, path, read_only=True))
        mounts.append(Mount("/dev", "/dev", read_only=True, kind="dev"))
        mounts.append(Mount("/proc", "/proc", read_only=True, kind="proc"))
        layout = cls(root, mounts)
        for volume in volumes:
            target = layout.resolve(volume.sandbox_path)
            if target.read_only:
                raise MountPathRefused(
                    volume.sandbox_path,
                    f"Volume mountPath {volume.sandbox_path} lies on a read-only system "
                    "directory of the sandbox; mount it elsewhere (for example under /mnt).")
            os.makedirs(target.host_path, exist_ok=True)
            layout = cls(root, [*layout.mounts, volume])
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
        hops = 0
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
            except FileNotFoundError:
                current.append(name)
                continue
            except NotADirectoryError:
                current.append(name)
                continue
            if stat.S_ISLNK(info.st_mode) and (follow_last or not is_last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise SymlinkLoop(path)
                target = os.readlink(host)
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

    def find_executable(self, name: str, search_path: str) -> str | None:
        """Look `name` up on the sandbox's PATH, as `execvp` inside it would."""
        if "/" in name:
            resolved = self.resolve(name)
            return name if os.access(resolved.host_path, os.X_OK) else None
        for directory in search_path.split(":"):
            if not directory:
                continue
            candidate = posixpath.join(directory, name)
            try:
                host = self.resolve(candidate).host_path
            except RuntimeFailure:
                continue
            if os.path.isfile(host) and os.access(host, os.X_OK):
                return candidate
        return None

    def bubblewrap_args(self) -> list[str]:
        """The bwrap options that build this view."""
        args: list[str] = []
        for mount in self.mounts:
            if mount.kind == "dev":
                args += ["--dev", mount.sandbox_path]
            elif mount.kind == "proc":
                args += ["--proc", mount.sandbox_path]
            else:
                flag = "--ro-bind" if mount.read_only else "--bind"
                args += [flag, mount.host_path, mount.sandbox_path]
        return args

