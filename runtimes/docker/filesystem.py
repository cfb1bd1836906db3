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
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import re
import secrets
import stat as stats
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import IO, Any

from docker.errors import APIError, NotFound

from opensandbox_emulator.runtimes.docker import tarstream
from opensandbox_emulator.runtimes.docker.engine import Engine, explain
from opensandbox_emulator.runtimes.docker.execs import run_helper
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
    SandboxMissing,
    SymlinkLoop,
)
from opensandbox_emulator.runtimes.filesystem import (
    CHUNK_SIZE,
    AccountNames,
    ChangeOwnership,
    FileInfo,
    FileReader,
    FileType,
    FileWriter,
    SandboxFilesystem,
    check_mode,
    check_replacement,
)

NEW_FILE_MODE = 0o755
SPOOL_IN_MEMORY = 8 * 1024 * 1024  # an upload larger than this is spooled to disk
# Files up to this size travel through the sandbox's helper agent (about a millisecond);
# larger ones through the archive API, which streams but costs some 40 ms a call.
INLINE_LIMIT = 2 * 1024 * 1024

STAT_LINE = re.compile(r"^([0-9a-f]+) (\d+) (\d+) (\d+) (\d+) (\d+) \[([^\]]*)\] \[([^\]]*)\] "
                       r"(.*)$")
FRACTION = re.compile(r":\d\d\.(\d+)")


def _sections(text: str) -> dict[str, list[str]]:
    """Helper output: lines before the first `@@name` line go under "", the rest under
    their section name."""
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.split("\n"):
        if line.startswith("@@") and line[2:].isalpha():
            current = line[2:]
            sections[current] = []
        else:
            sections[current].append(line)
    for lines in sections.values():
        while lines and not lines[-1]:
            lines.pop()
    return sections


def _names(sections: dict[str, list[str]]) -> AccountNames:
    return AccountNames.parse("\n".join(sections.get("passwd", [])),
                              "\n".join(sections.get("group", [])))


def _nanos(seconds: int, text: str) -> int:
    fraction = FRACTION.search(text)
    digits = (fraction.group(1) if fraction else "")[:9].ljust(9, "0")
    return seconds * 1_000_000_000 + int(digits)


def _file_type(mode: int) -> FileType:
    if stats.S_ISREG(mode):
        return FileType.FILE
    if stats.S_ISDIR(mode):
        return FileType.DIRECTORY
    if stats.S_ISLNK(mode):
        return FileType.SYMLINK
    return FileType.OTHER


def _info(line: str, names: AccountNames, shown: str | None = None) -> FileInfo | None:
    match = STAT_LINE.match(line)
    if match is None:
        return None
    raw_mode, size, uid, gid, mtime, ctime, mtext, ctext, name = match.groups()
    mode = int(raw_mode, 16)
    return FileInfo(path=shown if shown is not None else name, size=int(size),
                    modified_ns=_nanos(int(mtime), mtext), changed_ns=_nanos(int(ctime), ctext),
                    owner=names.user(int(uid)), group=names.group(int(gid)),
                    mode=stats.S_IMODE(mode), type=_file_type(mode))


def _failure(result: HelperResult, action: str, shown: str) -> RuntimeFailure:
    """A helper's failure as the runtime failure a client can act on (by strerror text,
    which busybox and GNU tools share)."""
    text = result.stderr.decode(errors="replace").strip()
    detail = text.splitlines()[-1] if text else f"exit code {result.exit_code}"
    if "No such file or directory" in text or "nonexistent directory" in text:
        return FileNotFound(shown)
    if "Not a directory" in text:
        return NotADirectory(shown, f"cannot {action} {shown}: a component of the path is not "
                                    "a directory")
    if "Is a directory" in text:
        return IsADirectory(shown, f"cannot {action} {shown}: it is a directory")
    if "File exists" in text or "Directory not empty" in text:
        return FileExists(shown, f"cannot {action} {shown}: the target already exists")
    if "Read-only file system" in text:
        return PathReadOnly(shown, f"cannot {action} {shown}: it is on a read-only filesystem")
    if "Too many levels of symbolic links" in text:
        return SymlinkLoop(shown)
    if "Device or resource busy" in text:
        return FileBusy(shown, f"cannot {action} {shown}: it is a mount point of the sandbox")
    if "Permission denied" in text or "Operation not permitted" in text:
        return PathNotAccessible(shown, f"cannot {action} {shown}: {detail}")
    return FileFailure(shown, f"cannot {action} {shown}: {detail[:500]}")


def _mode_arg(ownership: ChangeOwnership) -> str:
    return format(ownership.mode, "o") if ownership.mode else ""


def _engine_failure(error: APIError, sandbox_id: str, action: str, shown: str
                    ) -> RuntimeFailure:
    text = explain(error)
    if isinstance(error, NotFound) and "No such container" in text:
        return SandboxMissing(sandbox_id, f"cannot {action} {shown}: the sandbox is gone")
    if isinstance(error, NotFound):
        return FileNotFound(shown)
    if "read-only" in text:
        return PathReadOnly(shown, f"cannot {action} {shown}: it is on a read-only filesystem")
    return FileFailure(shown, f"cannot {action} {shown}: {text}")


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
        names = _names(_sections(result.stdout.decode(errors="replace")))
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
            raise _failure(result, "resolve", shown)
        real = result.stdout.decode(errors="surrogateescape").rstrip("\n") or "/"
        await self._reachable(real, shown)
        return real

    # --- stat and search -----------------------------------------------------------------

    async def _stat(self, path: str, follow: bool) -> tuple[FileInfo, str]:
        shown = self.display(path)
        await self._reachable(shown, shown)
        result = await self._run("stat", self.absolute(path), "1" if follow else "0")
        if result.exit_code != 0:
            raise _failure(result, "stat", shown)
        sections = _sections(result.stdout.decode(errors="surrogateescape"))
        real = (sections.get("real") or [""])[0] or self.absolute(path)
        await self._reachable(real, shown)
        info = _info(sections[""][0] if sections[""] else "", _names(sections), shown)
        if info is None:
            raise FileFailure(shown, f"cannot stat {shown}: unexpected output from stat")
        return info, real

    async def stat(self, path: str, *, follow_symlinks: bool = True) -> FileInfo:
        return (await self._stat(path, follow_symlinks))[0]

    async def search(self, root: str, match: Callable[[str], bool]) -> list[FileInfo]:
        shown = self.display(root)
        real = await self._resolve(root, follow=True)
        result = await self._run("search", real)
        if result.exit_code != 0:
            raise _failure(result, "search", shown)
        sections = _sections(result.stdout.decode(errors="surrogateescape"))
        names = _names(sections)
        kernel = [m.point for m in await self._mounts() if m.kernel]
        found = []
        for line in sections[""]:
            info = _info(line, names)
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
                raise _failure(result, "read", info.path)
            if len(result.stdout) <= INLINE_LIMIT:
                return _InlineReader(replace(info, size=len(result.stdout)), result.stdout)
        reader = _ArchiveReader(self.engine, self.sandbox, real, info)
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
            raise _failure(result, "write", shown)
        sections = _sections(result.stdout.decode(errors="surrogateescape"))
        writer = _Writer(self.engine, self.sandbox, shown, posixpath.dirname(real), temp, real)
        try:
            uid, gid = -1, -1
            if wants_ids:
                names = _names(sections)
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

    async def make_dirs(self, path: str, ownership: ChangeOwnership) -> None:
        check_mode(ownership.mode)
        shown = self.display(path)
        uid, gid = await self._ids(ownership)
        real = await self._resolve(path, follow=True)
        result = await self._run("mkdir", real, str(uid), str(gid), _mode_arg(ownership))
        if result.exit_code != 0:
            failure = _failure(result, "create directory", shown)
            if isinstance(failure, FileExists):  # a file where a directory should be
                raise NotADirectory(shown, f"cannot create directory {shown}: a file is in the "
                                           "way")
            raise failure

    async def remove_file(self, path: str) -> None:
        shown = self.display(path)
        try:
            real = await self._resolve(path, follow=False)
        except (FileNotFound, NotADirectory):
            return
        result = await self._run("rmfile", real)
        if result.exit_code != 0:
            failure = _failure(result, "remove", shown)
            if not isinstance(failure, FileNotFound | NotADirectory):
                raise failure

    async def remove_tree(self, path: str) -> None:
        shown = self.display(path)
        try:
            real = await self._resolve(path, follow=False)
        except (FileNotFound, NotADirectory):
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
            failure = _failure(result, "remove", shown)
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
        raise _failure(result, "move", source)

    async def set_ownership(self, path: str, ownership: ChangeOwnership) -> None:
        check_mode(ownership.mode)
        shown = self.display(path)
        uid, gid = await self._ids(ownership)
        real = await self._resolve(path, follow=True)
        result = await self._run("chown", real, str(uid), str(gid), _mode_arg(ownership))
        if result.exit_code != 0:
            raise _failure(result, "change permissions of", shown)

    async def replace(self, path: str, old: bytes, new: bytes) -> int:
        check_replacement(old)
        try:
            reader = await self.open_read(path)
        except IsADirectory as error:
            raise IsADirectory(error.path, f"cannot replace content in {error.path}: it is a "
                                           "directory") from error
        writer: FileWriter | None = None
        count = 0
        try:
            writer = await self.open_write(path, ChangeOwnership(mode=reader.info.mode))
            carry = b""
            async for chunk in reader.chunks():
                buffer = carry + chunk
                pieces: list[bytes] = []
                position = 0
                while (index := buffer.find(old, position)) >= 0:
                    pieces += (buffer[position:index], new)
                    position = index + len(old)
                    count += 1
                # Hold back what could be the start of a match straddling two chunks.
                keep = max(position, len(buffer) - len(old) + 1)
                pieces.append(buffer[position:keep])
                carry = buffer[keep:]
                await writer.write(b"".join(pieces))
            await writer.write(carry)
            if count:
                await writer.commit()
            else:
                await writer.abort()
            return count
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


class _ArchiveReader(FileReader):
    """Streams one file out of `GET …/archive`, straight from the engine's response."""

    def __init__(self, engine: Engine, sandbox: DockerSandbox, real: str, info: FileInfo):
        self._engine = engine
        self._sandbox = sandbox
        self._real = real
        self.info = info
        self._response: Any = None
        self._iterator: Iterator[bytes] | None = None
        self._buffer = bytearray()
        self._position = 0  # offset in the file of the next byte `_buffer` would give

    async def open(self) -> None:
        engine = self._engine

        def first_member() -> int:
            self._iterator = self._response.iter_content(CHUNK_SIZE)
            member = tarstream.read_member_header(self._read_exactly)
            if member is None or member.kind != b"0":
                raise FileBusy(self.info.path, f"{self.info.path} changed while the server was "
                                               "reading it; retry.")
            return member.size

        try:
            self._response = await engine.open_archive(self._sandbox.container, self._real)
            size = await engine.call(first_member)
        except NotFound as error:
            await self.close()
            if "No such container" in str(error.explanation):
                raise SandboxMissing(self._sandbox.sandbox_id) from error
            raise FileNotFound(self.info.path) from error
        except APIError as error:
            await self.close()
            raise _engine_failure(error, self._sandbox.sandbox_id, "read", self.info.path) \
                from error
        except BaseException:
            await self.close()
            raise
        # The bytes served are the archive's: its size wins if the file changed meanwhile.
        self.info = replace(self.info, size=size)
        self._position = 0

    def _pull(self) -> bytes:
        assert self._iterator is not None
        return next(self._iterator, b"")

    def _read_exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self._pull()
            if not chunk:
                break
            self._buffer += chunk
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    async def _next(self, limit: int) -> bytes:
        if not self._buffer:
            chunk = await self._engine.call(self._pull)
            self._buffer += chunk
        data = bytes(self._buffer[:limit])
        del self._buffer[:limit]
        self._position += len(data)
        return data

    async def chunks(self, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        if start < self._position:  # read again from the beginning
            await self.close()
            await self.open()
        end = self.info.size if length is None else min(start + length, self.info.size)
        while self._position < start:
            if not await self._next(min(start - self._position, CHUNK_SIZE)):
                return
        while self._position < end:
            data = await self._next(min(end - self._position, CHUNK_SIZE))
            if not data:
                return  # the archive ended early
            yield data

    async def close(self) -> None:
        response, self._response = self._response, None
        self._iterator = None
        self._buffer.clear()
        if response is not None:
            await self._engine.call(response.close)


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
                    raise _failure(result, "write", self.path)
            else:
                await self._put_archive(spool)
        except BaseException:
            await self.abort()
            raise
        finally:
            await asyncio.to_thread(spool.close)
        self._sealed = True

    async def _put_archive(self, spool: IO[bytes]) -> None:
        header = tarstream.file_header(self._temp, self._size, mode=self.mode, uid=self.uid,
                                       gid=self.gid)

        def body() -> Iterator[bytes]:
            yield header
            spool.seek(0)
            while chunk := spool.read(CHUNK_SIZE):
                yield chunk
            yield tarstream.padding(self._size) + tarstream.END_OF_ARCHIVE

        try:
            await self._engine.call(self._engine.api.put_archive, self._sandbox.container,
                                    self._directory, body())
        except APIError as error:
            raise _engine_failure(error, self._sandbox.sandbox_id, "write", self.path) \
                from error

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
            raise _failure(result, "write", self.path)

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        spool, self._spool = self._spool, None
        if spool is not None:
            await asyncio.to_thread(spool.close)
        with contextlib.suppress(RuntimeFailure, OSError):
            await run_helper(self._engine, self._sandbox, ["discard", self._temp_path])
