"""`DockerFilesystem`: a container's files, through the archive API and small helpers.

Everything but file contents (stat, search, mkdir, rm, mv, chmod, chown, path resolution)
is one operation of the sandbox's helper agent (`helpers.py`): POSIX shell run as root
inside the container, for the common subset of busybox and GNU tools, so any image with a
`/bin/sh` works. Paths are resolved inside the container, component by component, so `..`,
symlinks and volumes behave exactly as the sandbox's own processes see them. User and group
names come from the container's /etc/passwd and /etc/group, as on the fake runtime; the
mount table comes from the container's /proc/self/mounts, so kernel filesystems (/proc,
/sys, /dev) are refused and read-only mounts are known before anything is touched.

File contents: up to `INLINE_LIMIT` they travel through the agent (a millisecond or two);
larger files go through the engine's archive API, which streams but costs some 40 ms a
call: a download streams the tar the engine sends (`GET …/archive`) straight to the client,
an upload is spooled on the server and written with `PUT …/archive`. Either way an upload
lands under a hidden temporary name beside its target and one `mv` puts it in place.

Known limits: the archive API does not see tmpfs mounts made inside the container (their
large files cannot be downloaded); a name holding a newline goes through one-off execs.

Beside this module: `helper_output.py` reads what the helpers print, `mounts.py` the mount
table, and `archive.py` streams contents through the archive API.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import IO

from opensandbox_emulator.runtimes.docker.archive import ArchiveReader, put_archive
from opensandbox_emulator.runtimes.docker.engine import Engine
from opensandbox_emulator.runtimes.docker.execs import run_helper
from opensandbox_emulator.runtimes.docker.helper_output import (
    account_names,
    file_info,
    helper_failure,
    read_sections,
)
from opensandbox_emulator.runtimes.docker.helpers import HelperResult, agent_can_carry
from opensandbox_emulator.runtimes.docker.mounts import MountEntry, mount_of, parse_mounts, under
from opensandbox_emulator.runtimes.docker.sandbox import DockerSandbox
from opensandbox_emulator.runtimes.failures import (
    CrossMountMove,
    FileBusy,
    FileExists,
    FileFailure,
    FileNotFound,
    IsADirectory,
    MoveIntoItself,
    NotADirectory,
    NotARegularFile,
    PathNotAccessible,
    PathReadOnly,
    RuntimeFailure,
)
from opensandbox_emulator.runtimes.filesystem import (
    CHUNK_SIZE,
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

NEW_FILE_MODE = 0o755
SPOOL_IN_MEMORY = 8 * 1024 * 1024  # an upload larger than this is spooled to disk
# Files up to this size travel through the sandbox's helper agent (about a millisecond);
# larger ones through the archive API, which streams but costs some 40 ms a call.
INLINE_LIMIT = 2 * 1024 * 1024


class DockerFilesystem(SandboxFilesystem):
    """The files of `sandbox`'s container, reached through `engine`."""

    def __init__(self, sandbox: DockerSandbox, engine: Engine):
        self.sandbox = sandbox
        self.engine = engine
        self.home = sandbox.home

    async def _run(self, *args: str) -> HelperResult:
        return await run_helper(self.engine, self.sandbox, list(args))

    async def _ids(self, ownership: ChangeOwnership) -> tuple[int, int]:
        if not ownership.owner and not ownership.group:
            return -1, -1
        result = await self._run("ids")
        names = account_names(read_sections(result.stdout.decode(errors="replace")))
        return names.uid(ownership.owner), names.gid(ownership.group)

    # --- resolution and the mount table -----------------------------------------------------

    async def _mounts(self) -> list[MountEntry]:
        """The container's mount table, read once per sandbox (it cannot change)."""
        table = self.sandbox.mounts
        if table is None:
            result = await self._run("mounts")
            table = parse_mounts(result.stdout.decode(errors="replace"))
            if table:
                self.sandbox.mounts = table
        return table

    async def _mount_of(self, real: str) -> MountEntry:
        return mount_of(await self._mounts(), real)

    async def _reachable(self, real: str, shown: str) -> MountEntry:
        mount = await self._mount_of(real)
        if mount.kernel:
            raise PathNotAccessible(
                shown, f"{shown} is on the sandbox's {mount.point}, a kernel filesystem each "
                "sandbox process gets on its own; the file API cannot reach it. Read it "
                f"with a command instead (e.g. cat {real}).")
        return mount

    async def _resolve(self, path: str, *, follow: bool) -> str:
        shown = self.display(path)
        await self._reachable(shown, shown)  # /proc/self/… must not even be resolved
        result = await self._run("resolve", "1" if follow else "0", self.absolute(path))
        if result.exit_code != 0:
            raise helper_failure(result, "resolve", shown)
        real = result.stdout.decode(errors="surrogateescape").rstrip("\n") or "/"
        await self._reachable(real, shown)
        return real

    # --- stat and search -----------------------------------------------------------------

    async def _stat(self, path: str, follow: bool) -> tuple[FileInfo, str]:
        shown = self.display(path)
        await self._reachable(shown, shown)
        result = await self._run("stat", self.absolute(path), "1" if follow else "0")
        if result.exit_code != 0:
            raise helper_failure(result, "stat", shown)
        sections = read_sections(result.stdout.decode(errors="surrogateescape"))
        real = (sections.get("real") or [""])[0] or self.absolute(path)
        await self._reachable(real, shown)
        info = file_info(sections[""][0] if sections[""] else "", account_names(sections),
                         shown)
        if info is None:
            raise FileFailure(shown, f"cannot stat {shown}: unexpected output from stat")
        return info, real

    async def stat(self, path: str, *, follow_symlinks: bool = True) -> FileInfo:
        return (await self._stat(path, follow_symlinks))[0]

    async def has_content(self, path: str) -> bool:
        # Two shell builtins in the agent, where a stat also runs `stat` and reads the
        # account files: about a third of the time, on every command (the env file).
        return (await self._run("nonempty", self.absolute(path))).exit_code == 0

    async def search(self, root: str, match: Callable[[str], bool]) -> list[FileInfo]:
        return await self._walk(root, ["search"], match)

    async def entries_below(self, directory: str, depth: int) -> list[FileInfo]:
        return await self._walk(directory, ["list", str(depth)], lambda _: True)

    async def _walk(self, root: str, operation: list[str], match: Callable[[str], bool]
                    ) -> list[FileInfo]:
        """`find` below `root` (a search or a listing), as the sandbox sees its paths."""
        shown = self.display(root)
        real = await self._resolve(root, follow=True)
        result = await self._run(operation[0], real, *operation[1:])
        if result.exit_code != 0:
            raise helper_failure(result, operation[0], shown)
        sections = read_sections(result.stdout.decode(errors="surrogateescape"))
        names = account_names(sections)
        kernel = [m.point for m in await self._mounts() if m.kernel]
        found = []
        for line in sections[""]:
            info = file_info(line, names)
            if info is None or any(under(info.path, point) for point in kernel):
                continue
            if match(posixpath.basename(info.path)):
                relative = info.path[len(real):].lstrip("/") if real != "/" else \
                    info.path.lstrip("/")
                found.append(replace(info, path=posixpath.join(shown, relative)
                                     if relative else shown))
        # Upstream walks each directory in lexical order, depth first.
        found.sort(key=lambda info: info.path.split("/"))
        return found

    # --- reading ---------------------------------------------------------------------------

    async def open_read(self, path: str) -> FileReader:
        info, real = await self._stat(path, True)
        if info.type is FileType.DIRECTORY:
            raise IsADirectory(info.path, f"cannot read {info.path}: it is a directory")
        if info.type is not FileType.FILE:
            raise NotARegularFile(info.path)
        if info.size <= INLINE_LIMIT and agent_can_carry([real]):
            result = await self._run("read", real, str(INLINE_LIMIT + 1))
            if result.exit_code != 0:
                raise helper_failure(result, "read", info.path)
            if len(result.stdout) <= INLINE_LIMIT:
                return _InlineReader(replace(info, size=len(result.stdout)), result.stdout)
        reader = ArchiveReader(self.engine, self.sandbox, real, info)
        await reader.open()
        return reader

    # --- writing ---------------------------------------------------------------------------

    async def open_write(self, path: str, ownership: ChangeOwnership) -> FileWriter:
        check_mode(ownership.mode)
        shown = self.display(path)
        real = await self._resolve(path, follow=True)
        if real == "/":
            raise IsADirectory(shown, f"cannot write {shown}: it is a directory")
        temp = f".{posixpath.basename(real)[:180]}.{secrets.token_hex(6)}.part"
        wants_ids = bool(ownership.owner or ownership.group)
        result = await self._run("prepare", real, temp, "1" if wants_ids else "0")
        if result.exit_code != 0:
            raise helper_failure(result, "write", shown)
        sections = read_sections(result.stdout.decode(errors="surrogateescape"))
        writer = _Writer(self.engine, self.sandbox, shown, posixpath.dirname(real), temp, real)
        try:
            uid, gid = -1, -1
            if wants_ids:
                names = account_names(sections)
                uid, gid = names.uid(ownership.owner), names.gid(ownership.group)
            existing = (sections.get("existing") or [""])[0].split()
            mode = ownership.mode or NEW_FILE_MODE
            if len(existing) == 3:
                mode = ownership.mode or int(existing[0], 8)
                uid = int(existing[1]) if uid == -1 else uid
                gid = int(existing[2]) if gid == -1 else gid
        except BaseException:
            await writer.abort()
            raise
        writer.mode, writer.uid, writer.gid = mode, max(uid, 0), max(gid, 0)
        return writer

    # --- directories and the rest -------------------------------------------------------

    async def _with_ownership(self, operation: str, path: str, ownership: ChangeOwnership
                              ) -> HelperResult:
        """`mkdir` or `chown` of `path`, given the ids of the names and the mode."""
        check_mode(ownership.mode)
        uid, gid = await self._ids(ownership)
        real = await self._resolve(path, follow=True)
        mode = format(ownership.mode, "o") if ownership.mode else ""
        return await self._run(operation, real, str(uid), str(gid), mode)

    async def make_dirs(self, path: str, ownership: ChangeOwnership) -> None:
        shown = self.display(path)
        result = await self._with_ownership("mkdir", path, ownership)
        if result.exit_code != 0:
            failure = helper_failure(result, "create directory", shown)
            if isinstance(failure, FileExists):  # a file where a directory should be
                raise NotADirectory(shown, f"cannot create directory {shown}: a file is in the "
                                           "way")
            raise failure

    async def _resolve_existing(self, path: str) -> str | None:
        """The path resolved (a final symlink kept), or None when there is nothing there."""
        try:
            return await self._resolve(path, follow=False)
        except (FileNotFound, NotADirectory):
            return None

    async def remove_file(self, path: str) -> None:
        shown = self.display(path)
        real = await self._resolve_existing(path)
        if real is None:
            return
        result = await self._run("rmfile", real)
        if result.exit_code != 0:
            failure = helper_failure(result, "remove", shown)
            if not isinstance(failure, FileNotFound | NotADirectory):
                raise failure

    async def remove_tree(self, path: str) -> None:
        shown = self.display(path)
        real = await self._resolve_existing(path)
        if real is None:
            return
        own = await self._mount_of(real)
        for mount in await self._mounts():
            if mount.read_only and (under(mount.point, real) or mount == own):
                raise PathReadOnly(shown, f"cannot remove {shown}: it contains {mount.point}, "
                                          "a read-only mount of the sandbox" if mount != own
                                   else f"cannot remove {shown}: it is on a read-only mount "
                                   "of the sandbox")
            if mount.kernel and under(mount.point, real) and mount.point != real:
                raise PathNotAccessible(shown, f"cannot remove {shown}: it contains "
                                               f"{mount.point}, a kernel filesystem of the "
                                               "sandbox")
        result = await self._run("rmtree", real)
        if result.exit_code != 0:
            lines = [line for line in result.stderr.decode(errors="replace").splitlines()
                     if line.strip()]
            # Mount points cannot go: like the fake runtime, empty them and keep them.
            if lines and all("Device or resource busy" in line for line in lines):
                return
            failure = helper_failure(result, "remove", shown)
            if not isinstance(failure, FileNotFound):
                raise failure

    async def rename(self, src: str, dest: str) -> None:
        source, target = self.display(src), self.display(dest)
        real_src = await self._resolve(src, follow=False)
        real_dest = await self._resolve(dest, follow=False)
        from_mount = await self._mount_of(real_src)
        to_mount = await self._mount_of(posixpath.dirname(real_dest) or "/")
        if from_mount.point == real_src:
            raise FileBusy(source, f"{source} is a mount point of the sandbox; it cannot be "
                                   "moved")
        if from_mount != to_mount:
            raise CrossMountMove(source, target, from_mount.point, to_mount.point)
        result = await self._run("mv", real_src, real_dest)
        if result.exit_code == 0:
            return
        text = result.stderr.decode(errors="replace")
        if "OSB:nosource" in text:
            raise FileNotFound(source, "source path")
        if "OSB:exists" in text:
            raise FileExists(target, f"destination path already exists: {target}; remove it "
                                     "first (moves never overwrite)")
        if "Invalid argument" in text or "subdirectory of itself" in text:
            raise MoveIntoItself(source, target)
        raise helper_failure(result, "move", source)

    async def set_ownership(self, path: str, ownership: ChangeOwnership) -> None:
        result = await self._with_ownership("chown", path, ownership)
        if result.exit_code != 0:
            raise helper_failure(result, "change permissions of", self.display(path))

    async def replace(self, path: str, old: bytes, new: bytes) -> int:
        check_replacement(old)
        try:
            reader = await self.open_read(path)
        except IsADirectory as error:
            raise IsADirectory(error.path, f"cannot replace content in {error.path}: it is a "
                                           "directory") from error
        writer: FileWriter | None = None
        try:
            writer = await self.open_write(path, ChangeOwnership(mode=reader.info.mode))
            replacing = StreamingReplace(old, new)
            async for chunk in reader.chunks():
                await writer.write(replacing.feed(chunk))
            await writer.write(replacing.rest())
            if replacing.count:
                await writer.commit()
            else:
                await writer.abort()
            return replacing.count
        finally:
            if writer is not None:
                await writer.abort()
            await reader.close()


class _InlineReader(FileReader):
    """A small file, read whole through the agent."""

    def __init__(self, info: FileInfo, content: bytes):
        self.info = info
        self._content: bytes | None = content

    async def chunks(self, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        content = self._content or b""
        end = len(content) if length is None else min(start + length, len(content))
        for offset in range(start, end, CHUNK_SIZE):
            yield content[offset:min(offset + CHUNK_SIZE, end)]

    async def close(self) -> None:
        self._content = None


class _Writer(FileWriter):
    """Spools the upload on the server; `seal` sends it into the container under a hidden
    name beside the target (reserved by the helper that checked the target), through the
    agent for a small file and `PUT …/archive` for a large one; `commit` applies mode and
    owner and renames it into place with one `mv`."""

    def __init__(self, engine: Engine, sandbox: DockerSandbox, shown: str, directory: str,
                 temp: str, real: str):
        self.path = shown
        self._engine = engine
        self._sandbox = sandbox
        self._directory = directory
        self._temp = temp
        self._real = real
        self.mode = NEW_FILE_MODE
        self.uid = 0
        self.gid = 0
        self._spool: IO[bytes] | None = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY)
        self._size = 0
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._sealed = False
        self._done = False

    @property
    def _temp_path(self) -> str:
        return posixpath.join(self._directory, self._temp)

    async def write(self, data: bytes) -> None:
        if self._spool is None:
            raise FileFailure(self.path, f"write of {self.path} was already finished or aborted")
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= CHUNK_SIZE:
            await self._flush()

    async def _flush(self) -> None:
        if self._pending and self._spool is not None:
            data = b"".join(self._pending)
            self._pending, self._pending_size = [], 0
            self._size += len(data)
            await asyncio.to_thread(self._spool.write, data)

    async def seal(self) -> None:
        """Send the spooled bytes into the container now (under the hidden name)."""
        if self._sealed or self._done:
            return
        await self._flush()
        spool, self._spool = self._spool, None
        assert spool is not None
        try:
            if self._size <= INLINE_LIMIT and agent_can_carry([self._temp_path]):
                spool.seek(0)
                data = spool.read()
                result = await run_helper(self._engine, self._sandbox,
                                          ["write", self._temp_path, str(len(data))],
                                          payload=data)
                if result.exit_code != 0:
                    raise helper_failure(result, "write", self.path)
            else:
                await put_archive(self._engine, self._sandbox, self._directory, self._temp,
                                  spool, self._size, mode=self.mode, uid=self.uid,
                                  gid=self.gid, shown=self.path)
        except BaseException:
            await self.abort()
            raise
        finally:
            await asyncio.to_thread(spool.close)
        self._sealed = True

    async def commit(self) -> None:
        if self._done:
            raise FileFailure(self.path, f"write of {self.path} was already finished or aborted")
        await self.seal()
        result = await run_helper(self._engine, self._sandbox, [
            "commit", self._temp_path, self._real, str(self.uid), str(self.gid),
            format(self.mode, "o"), str(self._size)])
        self._done = True
        if result.exit_code != 0:
            if b"OSB:short" in result.stderr:
                # The archive API wrote beside what the sandbox sees (a tmpfs, say).
                raise PathNotAccessible(self.path, f"cannot write {self.path}: the engine's "
                                                   "archive API cannot reach that place in the "
                                                   "sandbox (a tmpfs?); write it with a "
                                                   "command instead")
            raise helper_failure(result, "write", self.path)

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        spool, self._spool = self._spool, None
        if spool is not None:
            await asyncio.to_thread(spool.close)
        with contextlib.suppress(RuntimeFailure, OSError):
            await run_helper(self._engine, self._sandbox, ["discard", self._temp_path])
