"""`FakeFilesystem`: a fake sandbox's files, reached from the host through its mount table.

Every path is first resolved by `SandboxLayout.resolve`, which follows `..` and symlinks
inside the sandbox's own view. Resolving and then opening is a race, though: between the
two, a sandbox process could swap a directory on the path for a symlink to a host
directory. So nothing here opens a resolved host path and trusts it. Each operation opens
the object (or its parent directory) with `O_PATH|O_NOFOLLOW`, checks through
`/proc/self/fd` that the kernel reached exactly the host path the layout promised, and then
works relative to that descriptor (`*at` calls, `dir_fd=`), so no later path lookup can be
redirected.

Ownership is translated both ways through the sandbox's id map (`ids.py`): a file the
server creates is owned by the host ids of root inside (or of the owner asked for), and
`FileInfo` names the owner the sandbox sees, from the sandbox's own /etc/passwd and
/etc/group. On an idmapped volume the ids on disk are the sandbox's own.

Blocking I/O runs in worker threads; reads and writes move at most `CHUNK_SIZE` at a time,
so a 1 GB transfer costs the server about one chunk of memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import posixpath
import secrets
import shutil
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from opensandbox_emulator.runtimes.failures import (
    CrossMountMove,
    FileBusy,
    FileExists,
    FileFailure,
    FileNotFound,
    InvalidArgument,
    IsADirectory,
    MoveIntoItself,
    NotADirectory,
    NotARegularFile,
    PathNotAccessible,
    PathReadOnly,
    PathTooLong,
    RuntimeFailure,
)
from opensandbox_emulator.runtimes.fake.ids import SANDBOX_IDS, IdMap, overflow_id
from opensandbox_emulator.runtimes.fake.layout import Mount, ResolvedPath, SandboxLayout
from opensandbox_emulator.runtimes.filesystem import (
    CHUNK_SIZE,
    AccountNames,
    ChangeOwnership,
    FileInfo,
    FileReader,
    FileType,
    FileWriter,
    SandboxFilesystem,
    StreamingReplace,
    check_mode,
    check_replacement,
)

NEW_FILE_MODE = 0o755  # upstream's 0777 &~ umask 022
NEW_DIR_MODE = 0o755
NAMES_LIMIT = 4 * 1024 * 1024  # /etc/passwd and /etc/group larger than this are ignored


@dataclass(frozen=True)
class _Target:
    """A path resolved in the sandbox's view, with the mount it lies on."""

    shown: str  # how replies name it: the requested path, absolute and cleaned
    resolved: ResolvedPath
    mount: Mount

    @property
    def sandbox_path(self) -> str:
        return self.resolved.sandbox_path

    @property
    def host_path(self) -> str:
        return self.resolved.host_path

    @property
    def is_mount_point(self) -> bool:
        return self.sandbox_path == self.mount.sandbox_path


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _magic(fd: int) -> str:
    """A path that reaches the object `fd` refers to, without another path lookup."""
    return f"/proc/self/fd/{fd}"


def _failure(error: OSError, action: str, path: str) -> FileFailure:
    """An OS error as the runtime failure a client can act on."""
    code = error.errno
    if code == errno.ENOENT:
        return FileNotFound(path)
    if code == errno.ENOTDIR:
        return NotADirectory(path, f"cannot {action} {path}: a component of the path is not "
                                   "a directory")
    if code == errno.EISDIR:
        return IsADirectory(path, f"cannot {action} {path}: it is a directory")
    if code in (errno.EEXIST, errno.ENOTEMPTY):
        return FileExists(path, f"cannot {action} {path}: the target already exists")
    if code == errno.EROFS:
        return PathReadOnly(path, f"cannot {action} {path}: it is on a read-only filesystem")
    if code == errno.ENAMETOOLONG:
        return PathTooLong(path)
    if code == errno.ELOOP:
        return FileBusy(path, f"cannot {action} {path}: it changed into a symlink while the "
                              "server was using it; retry the request")
    return FileFailure(path, f"cannot {action} {path}: {error.strerror or error}")


_libc = ctypes.CDLL(None, use_errno=True)
_RENAME_NOREPLACE = 1


def _rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """renameat2(RENAME_NOREPLACE): moving never overwrites a destination that appeared
    after we looked. Falls back to a check plus rename where the kernel lacks it."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is not None:
        if renameat2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst),
                     _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        # EINVAL: a filesystem without the flag, or a directory moved into itself (which
        # the plain rename below reports again).
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err))
    if _exists_at(dst_fd, dst):
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
    os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def _exists_at(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _temp_name(name: str) -> str:
    return f".{name[:180]}.{secrets.token_hex(6)}.part"


class FakeFilesystem(SandboxFilesystem):
    def __init__(self, layout: SandboxLayout, home: str = "/root",
                 ids: IdMap | None = None):
        self.layout = layout
        self.home = home or "/root"
        self.ids = ids or IdMap.identity()
        self._real_roots: dict[str, str] = {}

    # --- ownership -------------------------------------------------------------------------

    def _stored_ids(self, mount: Mount, uid: int, gid: int) -> tuple[int, int]:
        """The ids to store on `mount` for ids inside the sandbox (-1 stays "leave it")."""
        if self.ids.is_identity or mount.idmapped:
            return uid, gid
        host_uid = -1 if uid == -1 else self.ids.uid_to_host(uid)
        host_gid = -1 if gid == -1 else self.ids.gid_to_host(gid)
        if host_uid is None or host_gid is None:
            raise InvalidArgument(
                f"id {uid if host_uid is None else gid} does not exist in the sandbox's user "
                "namespace, which maps only " + self.ids.describe(),
                field="owner" if host_uid is None else "group")
        return host_uid, host_gid

    def _seen_ids(self, mount: Mount, st: os.stat_result) -> tuple[int, int]:
        """The owner and group of a file as the sandbox sees them."""
        if self.ids.is_identity:
            return st.st_uid, st.st_gid
        if mount.idmapped:
            return (st.st_uid if st.st_uid < SANDBOX_IDS else overflow_id("uid"),
                    st.st_gid if st.st_gid < SANDBOX_IDS else overflow_id("gid"))
        return self.ids.uid_from_host(st.st_uid), self.ids.gid_from_host(st.st_gid)

    def _new_owner(self, mount: Mount) -> tuple[int, int]:
        """Who owns what the server creates on `mount`: root inside (-1s: no change)."""
        if self.ids.is_identity:
            return -1, -1
        return self._stored_ids(mount, 0, 0)

    # --- resolution and verified opens -----------------------------------------------------

    def _mount_for(self, sandbox_path: str) -> Mount:
        # The layout's own choice, so the mount always agrees with how `resolve` mapped it.
        return self.layout._mount_for(sandbox_path)

    def _target(self, path: str, *, follow_last: bool = True) -> _Target:
        resolved = self.layout.resolve(self.absolute(path), follow_last=follow_last)
        mount = self._mount_for(resolved.sandbox_path)
        if mount.kind != "bind":
            raise PathNotAccessible(
                self.display(path),
                f"{self.display(path)} is on the sandbox's {mount.sandbox_path}, a kernel "
                "filesystem each sandbox process gets on its own; the file API cannot reach "
                f"it. Read it with a command instead (e.g. cat {resolved.sandbox_path}).")
        return _Target(self.display(path), resolved, mount)

    def _expected(self, sandbox_path: str) -> str:
        """The real host path `sandbox_path` must have once opened."""
        mount = self._mount_for(sandbox_path)
        root = self._real_roots.get(mount.host_path)
        if root is None:
            root = self._real_roots[mount.host_path] = os.path.realpath(mount.host_path)
        rest = sandbox_path[len(mount.sandbox_path):].strip("/")
        return posixpath.join(root, rest) if rest else root

    def _open(self, sandbox_path: str, shown: str, flags: int = 0) -> int:
        """An `O_PATH` descriptor of the object at the already-resolved `sandbox_path`,
        checked to be exactly where the layout puts it (a final symlink is not followed)."""
        expected = self._expected(sandbox_path)
        try:
            fd = os.open(expected, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | flags)
        except OSError as error:
            raise _failure(error, "open", shown) from error
        try:
            actual = os.readlink(_magic(fd))
        except OSError:
            actual = ""
        if actual != expected:
            _close(fd)
            raise FileBusy(shown, f"{shown} changed while the server was resolving it (a "
                                  "directory on the path was replaced or turned into a "
                                  "symlink); retry.")
        return fd

    def _open_target(self, target: _Target, flags: int = 0) -> int:
        return self._open(target.sandbox_path, target.shown, flags)

    def _open_parent(self, target: _Target) -> tuple[int, str]:
        """The directory holding `target` (never a mount point itself), and its name."""
        if target.is_mount_point:
            raise FileBusy(target.shown, f"{target.shown} is a mount point of the sandbox; it "
                                         "cannot be removed, renamed or replaced.")
        parent = posixpath.dirname(target.sandbox_path)
        name = posixpath.basename(target.sandbox_path)
        return self._open(parent, target.shown, os.O_DIRECTORY), name

    def _reopen(self, fd: int, flags: int) -> int:
        """A real descriptor (read, write…) for the object an `O_PATH` descriptor holds."""
        return os.open(_magic(fd), flags | os.O_CLOEXEC)

    def _names(self) -> AccountNames:
        texts = []
        for path in ("/etc/passwd", "/etc/group"):
            try:
                target = self._target(path)
                fd = self._open_target(target)
            except RuntimeFailure:
                texts.append("")
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    texts.append("")
                    continue
                handle = self._reopen(fd, os.O_RDONLY)
                try:
                    texts.append(os.read(handle, NAMES_LIMIT).decode(errors="replace"))
                finally:
                    os.close(handle)
            except OSError:
                texts.append("")
            finally:
                _close(fd)
        return AccountNames.parse(texts[0], texts[1])

    def _info(self, shown: str, st: os.stat_result, names: AccountNames,
              mount: Mount) -> FileInfo:
        uid, gid = self._seen_ids(mount, st)
        return FileInfo(path=shown, size=st.st_size, modified_ns=st.st_mtime_ns,
                        changed_ns=st.st_ctime_ns, owner=names.user(uid),
                        group=names.group(gid), mode=stat.S_IMODE(st.st_mode),
                        type=FileType.of(st.st_mode))

    def _ids(self, ownership: ChangeOwnership) -> tuple[int, int]:
        """(uid, gid) for the names, -1 for "leave it"; reads the sandbox's files only
        when there is a name to look up."""
        if not ownership.owner and not ownership.group:
            return -1, -1
        names = self._names()
        return names.uid(ownership.owner), names.gid(ownership.group)

    def _apply(self, fd: int, ownership: ChangeOwnership, mount: Mount) -> None:
        """chown, then chmod (chown clears set-id bits), on an `O_PATH` descriptor."""
        uid, gid = self._stored_ids(mount, *self._ids(ownership))
        if uid != -1 or gid != -1:
            os.chown(_magic(fd), uid, gid)
        if ownership.mode:
            os.chmod(_magic(fd), ownership.mode)

    # --- stat and search -------------------------------------------------------------------

    async def stat(self, path: str, *, follow_symlinks: bool = True) -> FileInfo:
        return await asyncio.to_thread(self._stat, path, follow_symlinks)

    def _stat(self, path: str, follow: bool) -> FileInfo:
        target = self._target(path, follow_last=follow)
        fd = self._open_target(target)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return self._info(target.shown, st, self._names(), target.mount)

    async def has_content(self, path: str) -> bool:
        return await asyncio.to_thread(self._has_content, path)

    def _has_content(self, path: str) -> bool:
        # A stat without the account names (two files read and parsed) that it shows.
        try:
            fd = self._open_target(self._target(path))
        except FileNotFound:
            return False
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return stat.S_ISREG(st.st_mode) and st.st_size > 0

    async def search(self, root: str, match: Callable[[str], bool]) -> list[FileInfo]:
        return await asyncio.to_thread(self._search, root, match)

    def _search(self, root: str, match: Callable[[str], bool], depth: int | None = None
                ) -> list[FileInfo]:
        """A search (`depth` None: files only, all the way down) or a listing."""
        target = self._target(root)
        names = self._names()
        fd = self._open_target(target)
        listing: int | None = None
        try:
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode):
                if match(posixpath.basename(target.shown)):
                    return [self._info(target.shown, st, names, target.mount)]
                return []
            listing = self._reopen(fd, os.O_RDONLY | os.O_DIRECTORY)
            found: list[FileInfo] = []
            self._walk(listing, target.sandbox_path, target.shown, match, names, found,
                       depth=depth)
            return found
        except OSError as error:
            raise _failure(error, "search", target.shown) from error
        finally:
            _close(fd)
            _close(listing)

    async def entries_below(self, directory: str, depth: int) -> list[FileInfo]:
        return await asyncio.to_thread(self._search, directory, lambda _: True, depth)

    def _walk(self, fd: int, sandbox_dir: str, shown_dir: str, match: Callable[[str], bool],
              names: AccountNames, found: list[FileInfo], *, depth: int | None = None) -> None:
        """Depth-first in lexical order, as upstream's walk; crosses into the sandbox's
        other mounts (volumes, system directories) where the sandbox would see them. With
        `depth` (a listing) directories are entries too, and the walk goes that deep."""
        try:
            entries = sorted(os.listdir(fd))
        except OSError as error:
            raise _failure(error, "search", shown_dir) from error
        for name in entries:
            child_sandbox = posixpath.join(sandbox_dir, name)
            child_shown = posixpath.join(shown_dir, name)
            mount = self._mount_for(child_sandbox)
            if mount.sandbox_path == child_sandbox:
                if mount.kind != "bind":
                    continue
                child = self._open(child_sandbox, child_shown, os.O_DIRECTORY)
            else:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    if match(name):
                        found.append(self._info(child_shown, st, names, mount))
                    continue
                try:
                    child = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
                                    | os.O_CLOEXEC, dir_fd=fd)
                except OSError:
                    continue  # replaced meanwhile: skip, as a walk racing `rm` would
            if depth is not None:
                found.append(self._info(child_shown, os.fstat(child), names, mount))
                if depth <= 1:
                    _close(child)
                    continue
            try:
                listing = self._reopen(child, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as error:
                _close(child)
                raise _failure(error, "search", child_shown) from error
            _close(child)
            try:
                self._walk(listing, child_sandbox, child_shown, match, names, found,
                           depth=None if depth is None else depth - 1)
            finally:
                _close(listing)

    # --- reading ---------------------------------------------------------------------------

    async def open_read(self, path: str) -> FileReader:
        return await asyncio.to_thread(self._open_read, path)

    def _open_read(self, path: str) -> _Reader:
        target = self._target(path)
        fd = self._open_target(target)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectory(target.shown, f"cannot read {target.shown}: it is a "
                                                 "directory")
            if not stat.S_ISREG(st.st_mode):
                raise NotARegularFile(target.shown)
            handle = self._reopen(fd, os.O_RDONLY)
        except OSError as error:
            raise _failure(error, "read", target.shown) from error
        finally:
            _close(fd)
        return _Reader(handle, self._info(target.shown, st, self._names(), target.mount))

    # --- writing ---------------------------------------------------------------------------

    async def open_write(self, path: str, ownership: ChangeOwnership) -> FileWriter:
        return await asyncio.to_thread(self._open_write, path, ownership)

    def _open_write(self, path: str, ownership: ChangeOwnership) -> _Writer:
        check_mode(ownership.mode)
        target = self._target(path)
        if target.is_mount_point:
            raise IsADirectory(target.shown, f"cannot write {target.shown}: it is a directory")
        target.resolved.require_writable()
        uid, gid = self._stored_ids(target.mount, *self._ids(ownership))
        self._make_dirs(posixpath.dirname(target.sandbox_path), ChangeOwnership())
        parent, name = self._open_parent(target)
        temp = _temp_name(name)
        try:
            mode = ownership.mode or NEW_FILE_MODE
            try:
                existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            if existing is not None:
                if stat.S_ISDIR(existing.st_mode):
                    raise IsADirectory(target.shown,
                                       f"cannot write {target.shown}: it is a directory")
                mode = ownership.mode or stat.S_IMODE(existing.st_mode)
                uid = existing.st_uid if uid == -1 else uid
                gid = existing.st_gid if gid == -1 else gid
            else:
                default_uid, default_gid = self._new_owner(target.mount)
                uid = default_uid if uid == -1 else uid
                gid = default_gid if gid == -1 else gid
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=parent)
        except OSError as error:
            _close(parent)
            raise _failure(error, "write", target.shown) from error
        except BaseException:
            _close(parent)
            raise
        return _Writer(self, target.shown, posixpath.dirname(target.sandbox_path), parent,
                       name, temp, fd, mode, uid, gid)

    # --- directories -----------------------------------------------------------------------

    async def make_dirs(self, path: str, ownership: ChangeOwnership) -> None:
        await asyncio.to_thread(self._make_dirs, path, ownership)

    def _make_dirs(self, path: str, ownership: ChangeOwnership) -> None:
        check_mode(ownership.mode)
        target = self._target(path)
        shown = target.shown
        self._ids(ownership)  # unknown names fail before anything is created
        parts = [p for p in target.sandbox_path.split("/") if p]
        fd: int | None = None
        try:
            # The longest prefix that exists, opened where the layout says it is (a
            # prefix may be a mount point, whose host directory is elsewhere).
            existing = 0
            for count in range(len(parts), -1, -1):
                prefix = "/" + "/".join(parts[:count])
                if os.path.lexists(self.layout.resolve(prefix).host_path):
                    existing = count
                    fd = self._open(prefix, shown)
                    break
            assert fd is not None  # "/" always exists
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise NotADirectory(shown, f"cannot create directory {shown}: "
                                    f"{'/' + '/'.join(parts[:existing])} exists and is not "
                                    "a directory")
            if existing < len(parts):
                target.resolved.require_writable()
            for name in parts[existing:]:
                try:
                    os.mkdir(name, NEW_DIR_MODE, dir_fd=fd)
                    created = True
                except FileExistsError:
                    created = False
                child = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
                                | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = child
                if created:
                    os.chmod(_magic(fd), NEW_DIR_MODE)  # whatever the server's umask
                    owner = self._new_owner(target.mount)
                    if owner != (-1, -1):
                        os.chown(_magic(fd), *owner)
            if ownership.changes_anything:
                target.resolved.require_writable()
                self._apply(fd, ownership, target.mount)
        except OSError as error:
            raise _failure(error, "create directory", shown) from error
        finally:
            _close(fd)

    async def remove_tree(self, path: str) -> None:
        await asyncio.to_thread(self._remove_tree, path)

    def _nested_mounts(self, sandbox_path: str) -> list[Mount]:
        prefix = sandbox_path.rstrip("/") + "/"
        return [m for m in self.layout.mounts if m.sandbox_path.startswith(prefix)]

    def _remove_tree(self, path: str) -> None:
        target = self._target(path, follow_last=False)
        if not os.path.lexists(target.host_path):
            return
        if not os.path.isdir(target.host_path) or os.path.islink(target.host_path):
            self._unlink(target)
            return
        target.resolved.require_writable()
        for mount in self._nested_mounts(target.sandbox_path):
            if mount.read_only:
                raise PathReadOnly(target.shown, f"cannot remove {target.shown}: it contains "
                                   f"{mount.sandbox_path}, a read-only mount of the sandbox")
        try:
            if target.is_mount_point:
                fd = self._open_target(target, os.O_DIRECTORY)
                try:
                    self._clear(fd, target.sandbox_path, target.shown)
                finally:
                    os.close(fd)
                return
            parent, name = self._open_parent(target)
            try:
                if self._nested_mounts(target.sandbox_path):
                    child = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
                                    | os.O_CLOEXEC, dir_fd=parent)
                    try:
                        self._clear(child, target.sandbox_path, target.shown)
                    finally:
                        os.close(child)
                else:
                    shutil.rmtree(name, dir_fd=parent)
            finally:
                os.close(parent)
        except FileNotFoundError:
            return
        except OSError as error:
            raise _failure(error, "remove", target.shown) from error

    def _clear(self, fd: int, sandbox_dir: str, shown: str) -> None:
        """Remove everything in a directory except the sandbox's mount points (which `rm -rf`
        cannot remove either); the contents of writable mounts below go too."""
        listing = self._reopen(fd, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in os.listdir(listing):
                child_sandbox = posixpath.join(sandbox_dir, name)
                mount = self._mount_for(child_sandbox)
                if mount.sandbox_path == child_sandbox:
                    child = self._open(child_sandbox, shown, os.O_DIRECTORY)
                elif self._nested_mounts(child_sandbox):
                    child = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
                                    | os.O_CLOEXEC, dir_fd=listing)
                else:
                    st = os.stat(name, dir_fd=listing, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        shutil.rmtree(name, dir_fd=listing)
                    else:
                        os.unlink(name, dir_fd=listing)
                    continue
                try:
                    self._clear(child, child_sandbox, shown)
                finally:
                    os.close(child)
        finally:
            os.close(listing)

    # --- files -----------------------------------------------------------------------------

    async def remove_file(self, path: str) -> None:
        await asyncio.to_thread(self._remove_file, path)

    def _remove_file(self, path: str) -> None:
        target = self._target(path, follow_last=False)
        if target.is_mount_point:
            raise IsADirectory(target.shown,
                               f"cannot remove {target.shown}: it is a directory")
        if not os.path.lexists(target.host_path):
            return
        self._unlink(target)

    def _unlink(self, target: _Target) -> None:
        try:
            parent, name = self._open_parent(target)
        except (FileNotFound, NotADirectory):
            return
        try:
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectory(target.shown,
                                   f"cannot remove {target.shown}: it is a directory")
            target.resolved.require_writable()
            os.unlink(name, dir_fd=parent)
        except FileNotFoundError:
            return
        except OSError as error:
            raise _failure(error, "remove", target.shown) from error
        finally:
            os.close(parent)

    async def rename(self, src: str, dest: str) -> None:
        await asyncio.to_thread(self._rename, src, dest)

    def _rename(self, src: str, dest: str) -> None:
        source = self._target(src, follow_last=False)
        if not os.path.lexists(source.host_path):
            raise FileNotFound(source.shown, "source path")
        destination = self._target(dest, follow_last=False)
        if os.path.lexists(destination.host_path):
            raise FileExists(destination.shown, f"destination path already exists: "
                                                f"{destination.shown}; remove it first (moves "
                                                "never overwrite)")
        for end in (source, destination):
            if end.is_mount_point:
                raise FileBusy(end.shown, f"{end.shown} is a mount point of the sandbox; it "
                                          "cannot be moved")
            end.resolved.require_writable()
        nested = self._nested_mounts(source.sandbox_path)
        if nested:
            raise FileBusy(source.shown, f"{source.shown} contains {nested[0].sandbox_path}, a "
                                         "mount point of the sandbox; it cannot be moved")
        if source.mount != destination.mount:
            raise CrossMountMove(source.shown, destination.shown, source.mount.sandbox_path,
                                 destination.mount.sandbox_path)
        self._make_dirs(posixpath.dirname(destination.sandbox_path), ChangeOwnership())
        src_parent, src_name = self._open_parent(source)
        try:
            dest_parent, dest_name = self._open_parent(destination)
            try:
                _rename_noreplace(src_parent, src_name, dest_parent, dest_name)
            finally:
                os.close(dest_parent)
        except OSError as error:
            if error.errno == errno.EEXIST:
                raise FileExists(destination.shown, "destination path already exists: "
                                                    f"{destination.shown}") from error
            if error.errno == errno.EINVAL:
                raise MoveIntoItself(source.shown, destination.shown) from error
            raise _failure(error, "move", source.shown) from error
        finally:
            os.close(src_parent)

    async def set_ownership(self, path: str, ownership: ChangeOwnership) -> None:
        await asyncio.to_thread(self._set_ownership, path, ownership)

    def _set_ownership(self, path: str, ownership: ChangeOwnership) -> None:
        check_mode(ownership.mode)
        target = self._target(path)
        self._ids(ownership)
        fd = self._open_target(target)
        try:
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise FileBusy(target.shown,
                               f"{target.shown} turned into a symlink meanwhile; retry")
            if not ownership.changes_anything:
                return
            target.resolved.require_writable()
            self._apply(fd, ownership, target.mount)
        except OSError as error:
            raise _failure(error, "change permissions of", target.shown) from error
        finally:
            os.close(fd)

    async def replace(self, path: str, old: bytes, new: bytes) -> int:
        check_replacement(old)
        return await asyncio.to_thread(self._replace, path, old, new)

    def _replace(self, path: str, old: bytes, new: bytes) -> int:
        target = self._target(path)
        fd = self._open_target(target)
        source: int | None = None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectory(target.shown, f"cannot replace content in {target.shown}: it "
                                                 "is a directory")
            if not stat.S_ISREG(st.st_mode):
                raise NotARegularFile(target.shown)
            target.resolved.require_writable()
            source = self._reopen(fd, os.O_RDONLY)
        except OSError as error:
            raise _failure(error, "replace content in", target.shown) from error
        finally:
            os.close(fd)
        writer: _Writer | None = None
        try:
            writer = self._open_write(path, ChangeOwnership(mode=stat.S_IMODE(st.st_mode)))
            replacing = StreamingReplace(old, new)
            for chunk in _read_all(source):
                _write_all(writer.fd, replacing.feed(chunk))
            _write_all(writer.fd, replacing.rest())
            if replacing.count:
                writer.finish()
            else:
                writer.discard()
            return replacing.count
        except OSError as error:
            raise _failure(error, "replace content in", target.shown) from error
        finally:
            if writer is not None:
                writer.discard()
            os.close(source)


def _read_all(fd: int) -> Iterator[bytes]:
    while chunk := os.read(fd, CHUNK_SIZE):
        yield chunk


def _write_pieces(fd: int, pieces: list[bytes]) -> None:
    """One `writev` for what was gathered (no joining copy); the rest if it was short."""
    written = os.writev(fd, pieces)
    for piece in pieces:
        if written >= len(piece):
            written -= len(piece)
            continue
        _write_all(fd, piece[written:])
        written = 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Reader(FileReader):
    def __init__(self, fd: int, info: FileInfo):
        self._fd: int | None = fd
        self.info = info

    async def chunks(self, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        remaining = self.info.size - start if length is None else length
        offset = start
        while remaining > 0 and self._fd is not None:
            data = await asyncio.to_thread(os.pread, self._fd, min(CHUNK_SIZE, remaining),
                                           offset)
            if not data:
                return  # the file shrank meanwhile
            offset += len(data)
            remaining -= len(data)
            yield data

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        _close(fd)


class _Writer(FileWriter):
    """Writes go to a hidden temporary file beside the target, `CHUNK_SIZE` at a time.

    `seal` closes the descriptors once the data is in (an upload of thousands of files
    must not hold thousands of them); `commit` then opens the directory again, checked
    like any other open, and renames the file into place.
    """

    def __init__(self, fs: FakeFilesystem, path: str, directory: str, parent: int, name: str,
                 temp: str, fd: int, mode: int, uid: int, gid: int):
        self.path = path
        self.fd = fd
        self._fs = fs
        self._directory = directory  # the parent's resolved sandbox path
        self._parent: int | None = parent
        self._name = name
        self._temp = temp
        self._mode = mode
        self._owner = (uid, gid)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._done = False

    async def write(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= CHUNK_SIZE:
            await self._flush()

    async def _step(self, step: Callable[..., None], *args: Any) -> None:
        """One blocking step of the write, in a thread; if it fails, the file goes."""
        try:
            await asyncio.to_thread(step, *args)
        except OSError as error:
            await self.abort()
            raise _failure(error, "write", self.path) from error

    async def _flush(self) -> None:
        if self._pending:
            pieces, self._pending, self._pending_size = self._pending, [], 0
            await self._step(_write_pieces, self.fd, pieces)

    async def seal(self) -> None:
        await self._flush()
        await self._step(self._seal)

    async def commit(self) -> None:
        await self._flush()
        await self._step(self.finish)

    async def abort(self) -> None:
        await asyncio.to_thread(self.discard)

    def _seal(self) -> None:
        if self.fd >= 0:
            uid, gid = self._owner
            if uid != -1 or gid != -1:
                os.fchown(self.fd, uid, gid)
            os.fchmod(self.fd, self._mode)
            os.close(self.fd)
            self.fd = -1
        parent, self._parent = self._parent, None
        _close(parent)

    def _open_directory(self) -> int:
        return self._fs._open(self._directory, self.path, os.O_DIRECTORY)

    def finish(self) -> None:
        if self._done:
            raise FileFailure(self.path, f"write of {self.path} was already finished or aborted")
        self._seal()
        parent = self._open_directory()
        try:
            os.rename(self._temp, self._name, src_dir_fd=parent, dst_dir_fd=parent)
            self._done = True
        except IsADirectoryError as error:
            raise IsADirectory(self.path, f"cannot write {self.path}: it is a directory") \
                from error
        finally:
            if not self._done:
                with contextlib.suppress(OSError):
                    os.unlink(self._temp, dir_fd=parent)
                self._done = True
            os.close(parent)

    def discard(self) -> None:
        if self.fd >= 0:
            _close(self.fd)
            self.fd = -1
        if self._done:
            _close(self._parent)
            self._parent = None
            return
        self._done = True
        parent, self._parent = self._parent, None
        with contextlib.suppress(RuntimeFailure, OSError):
            if parent is None:
                parent = self._open_directory()
            os.unlink(self._temp, dir_fd=parent)
        _close(parent)
