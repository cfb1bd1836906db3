"""`DockerFilesystem`: a container's files, through the archive API and small exec'd helpers.

File contents move through the engine's archive API: a download streams the tar the engine
sends (`GET …/archive`), an upload is spooled on the server and written with `PUT
…/archive` under a hidden temporary name, then renamed into place. Everything else (stat,
search, mkdir, rm, mv, chmod, chown) is one short `/bin/sh` helper run as root through the
exec API, written for the common subset of busybox and GNU tools so that any image with a
shell works. Paths are resolved inside the container, so `..`, symlinks and volumes behave
exactly as the sandbox's own processes see them. User and group names come from the
container's /etc/passwd and /etc/group, as in the fake runtime.

Known limits: the archive API does not see tmpfs mounts made inside the container, and
renames across mounts fall back to `mv`'s copy (the fake runtime refuses those).
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
from dataclasses import dataclass, replace
from typing import IO, TYPE_CHECKING, Any

from docker.errors import APIError, NotFound

from runtimes.base import PathReadOnly, RuntimeFailure, SandboxMissing
from runtimes.docker import tarstream
from runtimes.docker.labels import container_name
from runtimes.filesystem import (
    CHUNK_SIZE,
    ChangeOwnership,
    FileBusy,
    FileExists,
    FileInfo,
    FileNotFound,
    FileReader,
    FileType,
    FileWriter,
    IsADirectory,
    NotADirectory,
    PathNotAccessible,
    SandboxFilesystem,
    UnknownGroup,
    UnknownUser,
)

if TYPE_CHECKING:
    from runtimes.docker.runtime import DockerRuntime, HelperResult

NEW_FILE_MODE = 0o755
SPOOL_IN_MEMORY = 8 * 1024 * 1024  # an upload larger than this is spooled to disk

# One helper per operation: `sh -c HELPER osb-fs <op> <args…>`. Paths are absolute (so
# never taken for options) and passed as arguments, never spliced into the script.
HELPER = r"""
FMT='%f %s %u %g %Y %Z [%y] [%z] %n'
ids() { echo "@@passwd"; cat /etc/passwd 2>/dev/null; echo "@@group"; cat /etc/group 2>/dev/null; }
gone() { [ ! -e "$1" ] && [ ! -L "$1" ]; }
apply() {
  if [ "$2" != -1 ] && [ "$3" != -1 ]; then chown "$2:$3" "$1" || return 1
  elif [ "$2" != -1 ]; then chown "$2" "$1" || return 1
  elif [ "$3" != -1 ]; then chown ":$3" "$1" || return 1; fi
  if [ -n "$4" ]; then chmod "$4" "$1" || return 1; fi
}
op=$1; shift
case "$op" in
stat)
  if [ "$2" = 1 ]; then stat -L -c "$FMT" "$1" || exit 1; else stat -c "$FMT" "$1" || exit 1; fi
  echo "@@real"; readlink -f "$1"; ids ;;
ids) ids ;;
search)
  if gone "$1"; then echo "$1: No such file or directory" >&2; exit 1; fi
  find -H "$1" \( -path /proc -o -path /sys \) -prune -o ! -type d \
    -exec stat -c "$FMT" {} + 2>/dev/null
  ids ;;
prepare)
  d=$(dirname "$1")
  if [ -e "$d" ] && [ ! -d "$d" ]; then echo "$d: Not a directory" >&2; exit 1; fi
  mkdir -p "$d" || exit 1
  if gone "$1"; then real=$(readlink -f "$d")/$(basename "$1")
  else real=$(readlink -f "$1") || exit 1; fi
  if [ -d "$real" ]; then echo "$real: Is a directory" >&2; exit 1; fi
  dir=$(dirname "$real")
  : > "$dir/$2" || exit 1
  echo "@@real"; echo "$real"
  echo "@@existing"; if [ -e "$real" ]; then stat -c '%a %u %g' "$real"; fi
  if [ "$3" = 1 ]; then ids; fi ;;
commit)
  if [ -d "$2" ] && [ ! -L "$2" ]; then rm -f "$1"; echo "$2: Is a directory" >&2; exit 1; fi
  mv -f "$1" "$2" ;;
discard) rm -f "$1" ;;
mkdir)
  if [ -e "$1" ] && [ ! -d "$1" ]; then echo "$1: Not a directory" >&2; exit 1; fi
  if [ ! -d "$1" ]; then mkdir -p "$1" || exit 1; fi
  apply "$1" "$2" "$3" "$4" ;;
rmfile)
  if [ -d "$1" ] && [ ! -L "$1" ]; then echo "$1: Is a directory" >&2; exit 1; fi
  rm -f "$1" ;;
rmtree) rm -rf "$1" ;;
mv)
  if gone "$1"; then echo "OSB:nosource" >&2; exit 1; fi
  if ! gone "$2"; then echo "OSB:exists" >&2; exit 1; fi
  mkdir -p "$(dirname "$2")" || exit 1
  mv "$1" "$2" ;;
chown)
  if gone "$1"; then echo "$1: No such file or directory" >&2; exit 1; fi
  apply "$1" "$2" "$3" "$4" ;;
esac
"""

STAT_LINE = re.compile(r"^([0-9a-f]+) (\d+) (\d+) (\d+) (\d+) (\d+) \[([^\]]*)\] \[([^\]]*)\] "
                       r"(.*)$")
FRACTION = re.compile(r":\d\d\.(\d+)")


@dataclass(frozen=True)
class _Names:
    users: dict[int, str]
    groups: dict[int, str]
    uids: dict[str, int]
    gids: dict[str, int]

    def uid(self, name: str | None) -> int:
        if not name:
            return -1
        if name in self.uids:
            return self.uids[name]
        if name.isdigit():
            return int(name)
        raise UnknownUser(name)

    def gid(self, name: str | None) -> int:
        if not name:
            return -1
        if name in self.gids:
            return self.gids[name]
        if name.isdigit():
            return int(name)
        raise UnknownGroup(name)


def _parse_ids(lines: list[str]) -> tuple[dict[int, str], dict[str, int]]:
    by_id: dict[int, str] = {}
    by_name: dict[str, int] = {}
    for line in lines:
        fields = line.split(":")
        if len(fields) < 3 or line.startswith("#") or not fields[2].isdigit():
            continue
        by_id.setdefault(int(fields[2]), fields[0])
        by_name.setdefault(fields[0], int(fields[2]))
    return by_id, by_name


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


def _names(sections: dict[str, list[str]]) -> _Names:
    users, uids = _parse_ids(sections.get("passwd", []))
    groups, gids = _parse_ids(sections.get("group", []))
    return _Names(users, groups, uids, gids)


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


def _info(line: str, names: _Names, shown: str | None = None) -> FileInfo | None:
    match = STAT_LINE.match(line)
    if match is None:
        return None
    raw_mode, size, uid, gid, mtime, ctime, mtext, ctext, name = match.groups()
    mode = int(raw_mode, 16)
    return FileInfo(path=shown if shown is not None else name, size=int(size),
                    modified_ns=_nanos(int(mtime), mtext), changed_ns=_nanos(int(ctime), ctext),
                    owner=names.users.get(int(uid), uid), group=names.groups.get(int(gid), gid),
                    mode=stats.S_IMODE(mode), type=_file_type(mode))


def _failure(result: HelperResult, action: str, shown: str) -> RuntimeFailure:
    """A helper's failure as the runtime failure a client can act on (by strerror text,
    which busybox and GNU tools share)."""
    text = result.stderr.decode(errors="replace").strip()
    detail = text.splitlines()[-1] if text else f"exit code {result.exit_code}"
    if "No such file or directory" in text or "nonexistent directory" in text:
        return FileNotFound(shown)
    if "Not a directory" in text:
        return NotADirectory(f"cannot {action} {shown}: a component of the path is not a "
                             "directory")
    if "Is a directory" in text:
        return IsADirectory(f"cannot {action} {shown}: it is a directory")
    if "File exists" in text or "Directory not empty" in text:
        return FileExists(f"cannot {action} {shown}: the target already exists")
    if "Read-only file system" in text:
        return PathReadOnly(f"cannot {action} {shown}: it is on a read-only filesystem")
    if "Device or resource busy" in text:
        return FileBusy(f"cannot {action} {shown}: it is a mount point of the sandbox")
    if "Permission denied" in text or "Operation not permitted" in text:
        return PathNotAccessible(f"cannot {action} {shown}: {detail}")
    return RuntimeFailure(f"cannot {action} {shown}: {detail[:500]}")


def _check_mode(mode: int | None) -> None:
    if mode is not None and not 0 <= mode <= 0o7777:
        raise RuntimeFailure(f"mode {oct(mode)} is out of range (0 to 7777 octal)",
                             code="INVALID_REQUEST_BODY", status=400)


def _mode_arg(ownership: ChangeOwnership) -> str:
    return format(ownership.mode, "o") if ownership.mode else ""


def _engine_failure(error: APIError, action: str, shown: str) -> RuntimeFailure:
    text = str(error.explanation or error)
    if isinstance(error, NotFound) and "No such container" in text:
        return RuntimeFailure(f"cannot {action} {shown}: the sandbox is gone",
                              code="DOCKER::SANDBOX_NOT_FOUND", status=404)
    if isinstance(error, NotFound):
        return FileNotFound(shown)
    if "read-only" in text:
        return PathReadOnly(f"cannot {action} {shown}: it is on a read-only filesystem")
    return RuntimeFailure(f"cannot {action} {shown}: {text}")


class DockerFilesystem(SandboxFilesystem):
    def __init__(self, runtime: DockerRuntime, sandbox_id: str, home: str = "/root"):
        self.runtime = runtime
        self.sandbox_id = sandbox_id
        self.home = home or "/root"

    async def _run(self, *args: str) -> HelperResult:
        return await self.runtime.run_helper(
            self.sandbox_id, ["/bin/sh", "-c", HELPER, "opensandbox-files", *args])

    async def _ids(self, ownership: ChangeOwnership) -> tuple[int, int]:
        if not ownership.owner and not ownership.group:
            return -1, -1
        result = await self._run("ids")
        names = _names(_sections(result.stdout.decode(errors="replace")))
        return names.uid(ownership.owner), names.gid(ownership.group)

    # --- stat and search -----------------------------------------------------------------

    async def _stat(self, path: str, follow: bool) -> tuple[FileInfo, str]:
        shown = self.display(path)
        result = await self._run("stat", self.absolute(path), "1" if follow else "0")
        if result.exit_code != 0:
            raise _failure(result, "stat", shown)
        sections = _sections(result.stdout.decode(errors="replace"))
        info = _info(sections[""][0] if sections[""] else "", _names(sections), shown)
        if info is None:
            raise RuntimeFailure(f"cannot stat {shown}: unexpected output from stat")
        real = (sections.get("real") or [""])[0] or self.absolute(path)
        return info, real

    async def stat(self, path: str, *, follow_symlinks: bool = True) -> FileInfo:
        return (await self._stat(path, follow_symlinks))[0]

    async def search(self, root: str, match: Callable[[str], bool]) -> list[FileInfo]:
        shown = self.display(root)
        result = await self._run("search", shown)
        if result.exit_code != 0:
            raise _failure(result, "search", shown)
        sections = _sections(result.stdout.decode(errors="replace"))
        names = _names(sections)
        found = []
        for line in sections[""]:
            info = _info(line, names)
            if info is not None and match(posixpath.basename(info.path)):
                found.append(info)
        # Upstream walks each directory in lexical order, depth first.
        found.sort(key=lambda info: info.path.split("/"))
        return found

    # --- reading ---------------------------------------------------------------------------

    async def open_read(self, path: str) -> FileReader:
        info, real = await self._stat(path, True)
        if info.type is FileType.DIRECTORY:
            raise IsADirectory(f"{info.path} is a directory; download files one by one "
                               "(search lists them).")
        if info.type is not FileType.FILE:
            raise RuntimeFailure(f"{info.path} is not a regular file", code="INVALID_FILE",
                                 status=400)
        reader = _ArchiveReader(self.runtime, self.sandbox_id, real, info)
        await reader.open()
        return reader

    # --- writing ---------------------------------------------------------------------------

    async def open_write(self, path: str, ownership: ChangeOwnership) -> FileWriter:
        _check_mode(ownership.mode)
        shown = self.display(path)
        temp = f".{posixpath.basename(shown)[:180]}.{secrets.token_hex(6)}.part"
        wants_ids = bool(ownership.owner or ownership.group)
        result = await self._run("prepare", self.absolute(path), temp,
                                 "1" if wants_ids else "0")
        if result.exit_code != 0:
            raise _failure(result, "write", shown)
        sections = _sections(result.stdout.decode(errors="replace"))
        real = posixpath.normpath((sections.get("real") or [""])[0] or self.absolute(path))
        directory = posixpath.dirname(real)
        writer = _ArchiveWriter(self.runtime, self.sandbox_id, shown, directory, temp, real)
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
        _check_mode(ownership.mode)
        shown = self.display(path)
        uid, gid = await self._ids(ownership)
        result = await self._run("mkdir", self.absolute(path), str(uid), str(gid),
                                 _mode_arg(ownership))
        if result.exit_code != 0:
            raise _failure(result, "create directory", shown)

    async def remove_file(self, path: str) -> None:
        shown = self.display(path)
        result = await self._run("rmfile", self.absolute(path))
        if result.exit_code != 0:
            failure = _failure(result, "remove", shown)
            if isinstance(failure, IsADirectory):
                raise IsADirectory(f"{shown} is a directory; remove directories with "
                                   "DELETE /directories")
            if not isinstance(failure, FileNotFound | NotADirectory):
                raise failure

    async def remove_tree(self, path: str) -> None:
        shown = self.display(path)
        result = await self._run("rmtree", self.absolute(path))
        if result.exit_code != 0:
            failure = _failure(result, "remove", shown)
            if not isinstance(failure, FileNotFound):
                raise failure

    async def rename(self, src: str, dest: str) -> None:
        source, target = self.display(src), self.display(dest)
        result = await self._run("mv", self.absolute(src), self.absolute(dest))
        if result.exit_code == 0:
            return
        text = result.stderr.decode(errors="replace")
        if "OSB:nosource" in text:
            raise FileNotFound(source, "source path")
        if "OSB:exists" in text:
            raise FileExists(f"destination path already exists: {target}; remove it first "
                             "(moves never overwrite)")
        if "Invalid argument" in text or "subdirectory of itself" in text:
            raise RuntimeFailure(f"cannot move {source} into itself ({target})",
                                 code="INVALID_REQUEST_BODY", status=400)
        raise _failure(result, "move", source)

    async def set_ownership(self, path: str, ownership: ChangeOwnership) -> None:
        _check_mode(ownership.mode)
        shown = self.display(path)
        uid, gid = await self._ids(ownership)
        result = await self._run("chown", self.absolute(path), str(uid), str(gid),
                                 _mode_arg(ownership))
        if result.exit_code != 0:
            raise _failure(result, "change permissions of", shown)

    async def replace(self, path: str, old: bytes, new: bytes) -> int:
        if not old:
            raise RuntimeFailure("the text to replace (old) must not be empty",
                                 code="INVALID_REQUEST_BODY", status=400)
        reader = await self.open_read(path)
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


class _ArchiveReader(FileReader):
    """Streams one file out of `GET …/archive`, straight from the engine's response."""

    def __init__(self, runtime: DockerRuntime, sandbox_id: str, real: str, info: FileInfo):
        self._runtime = runtime
        self._sandbox_id = sandbox_id
        self._real = real
        self.info = info
        self._response: Any = None
        self._iterator: Iterator[bytes] | None = None
        self._buffer = bytearray()
        self._position = 0  # offset in the file of the next byte `_buffer` would give

    async def open(self) -> None:
        engine = self._runtime.engine
        api = engine.api

        def start() -> int:
            url = api._url("/containers/{0}/archive", container_name(self._sandbox_id))
            response = api._get(url, params={"path": self._real}, stream=True)
            self._response = response
            api._raise_for_status(response)
            self._iterator = response.iter_content(CHUNK_SIZE)
            member = tarstream.read_member_header(self._read_exactly)
            if member is None or member.kind != b"0":
                raise FileBusy(f"{self.info.path} changed while the server was reading it; "
                               "retry.")
            return member.size

        try:
            size = await engine.call(start)
        except NotFound as error:
            await self.close()
            if "No such container" in str(error.explanation):
                raise SandboxMissing(self._sandbox_id) from error
            raise FileNotFound(self.info.path) from error
        except APIError as error:
            await self.close()
            raise _engine_failure(error, "read", self.info.path) from error
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
            chunk = await self._runtime.engine.call(self._pull)
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
            await self._runtime.engine.call(response.close)


class _ArchiveWriter(FileWriter):
    """Spools the upload, then `PUT …/archive` writes it under a hidden name beside the
    target (reserved by the helper that checked the target) and `mv` moves it into place."""

    def __init__(self, runtime: DockerRuntime, sandbox_id: str, shown: str, directory: str,
                 temp: str, real: str):
        self.path = shown
        self._runtime = runtime
        self._sandbox_id = sandbox_id
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
            raise RuntimeFailure(f"write of {self.path} was already finished or aborted")
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
        spool = self._spool
        assert spool is not None
        header = tarstream.file_header(self._temp, self._size, mode=self.mode, uid=self.uid,
                                       gid=self.gid)

        def body() -> Iterator[bytes]:
            yield header
            spool.seek(0)
            while chunk := spool.read(CHUNK_SIZE):
                yield chunk
            yield tarstream.padding(self._size) + tarstream.END_OF_ARCHIVE

        api = self._runtime.engine.api
        try:
            await self._runtime.engine.call(api.put_archive, container_name(self._sandbox_id),
                                            self._directory, body())
        except APIError as error:
            await self.abort()
            raise _engine_failure(error, "write", self.path) from error
        finally:
            self._spool = None
            await asyncio.to_thread(spool.close)
        self._sealed = True

    async def commit(self) -> None:
        if self._done:
            raise RuntimeFailure(f"write of {self.path} was already finished or aborted")
        await self.seal()
        fs_helper = ["/bin/sh", "-c", HELPER, "opensandbox-files", "commit", self._temp_path,
                     self._real]
        result = await self._runtime.run_helper(self._sandbox_id, fs_helper)
        self._done = True
        if result.exit_code != 0:
            raise _failure(result, "write", self.path)

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        spool, self._spool = self._spool, None
        if spool is not None:
            await asyncio.to_thread(spool.close)
        with contextlib.suppress(RuntimeFailure, OSError):
            await self._runtime.run_helper(self._sandbox_id, [
                "/bin/sh", "-c", HELPER, "opensandbox-files", "discard", self._temp_path])
