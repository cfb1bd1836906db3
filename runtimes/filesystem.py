"""The filesystem of one sandbox, as its own processes see it.

execd's file routes talk only to `SandboxFilesystem`; each runtime maps it onto what it has
(the fake runtime onto its container's mount table, Docker onto the archive API and small
exec'd helpers). Paths are sandbox paths: `~` is the sandbox's HOME, relative paths start at
`/`, and `..` and symlinks are followed the way the sandbox would follow them. Nothing here
knows HTTP: failures are the classes of `failures.py` (`FileNotFound`, `PathReadOnly`…),
which the server turns into the response.
"""

from __future__ import annotations

import enum
import posixpath
import stat
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from opensandbox_emulator.runtimes.failures import (
    FileNotFound,
    InvalidArgument,
    NotADirectory,
    NulInArgument,
    PathTooLong,
    SymlinkRefused,
    UnknownGroup,
    UnknownUser,
)

CHUNK_SIZE = 1024 * 1024  # reads and writes move at most this much at a time


# --- what the operations exchange ------------------------------------------------------------


class FileType(enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    OTHER = "other"

    @classmethod
    def of(cls, mode: int) -> FileType:
        """The type of a `st_mode`."""
        if stat.S_ISREG(mode):
            return cls.FILE
        if stat.S_ISDIR(mode):
            return cls.DIRECTORY
        if stat.S_ISLNK(mode):
            return cls.SYMLINK
        return cls.OTHER


@dataclass(frozen=True)
class FileInfo:
    """One entry. `mode` holds the permission bits (0o7777); `owner` and `group` are names
    from the sandbox's own /etc/passwd and /etc/group, or the numeric id when it has none."""

    path: str
    size: int
    modified_ns: int
    changed_ns: int
    owner: str
    group: str
    mode: int
    type: FileType


@dataclass(frozen=True)
class ChangeOwnership:
    """Permissions to apply. `None` (and a `mode` of 0, upstream's "no change") leaves that
    attribute as it is. `owner`/`group` are names inside the sandbox (digits mean an id)."""

    mode: int | None = None
    owner: str | None = None
    group: str | None = None

    @property
    def changes_anything(self) -> bool:
        return bool(self.mode) or bool(self.owner) or bool(self.group)


class FileReader(ABC):
    """An open regular file: `info` was taken from the open file, so the bytes served
    belong to the same file the headers describe."""

    info: FileInfo

    @abstractmethod
    def chunks(self, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """`length` bytes (all to the end when None) from offset `start`, in chunks of at
        most `CHUNK_SIZE`."""

    @abstractmethod
    async def close(self) -> None: ...


class FileWriter(ABC):
    """A file being written next to its target. Nothing is visible under the target name
    until `commit`, which moves the finished file into place in one rename."""

    path: str

    @abstractmethod
    async def write(self, data: bytes) -> None: ...

    async def seal(self) -> None:  # noqa: B027
        """Every byte is written: release what writing held (descriptors, connections).
        The file stays hidden until `commit`; calling it is optional."""

    @abstractmethod
    async def commit(self) -> None:
        """Apply mode and ownership, then rename the file into place."""

    @abstractmethod
    async def abort(self) -> None:
        """Drop the partial file. Safe to call after `commit` or twice."""


# --- shared checks and names ---------------------------------------------------------------


def check_mode(mode: int | None) -> None:
    """Permission bits only: 0 to 7777 octal."""
    if mode is not None and not 0 <= mode <= 0o7777:
        raise InvalidArgument(f"mode {oct(mode)} is out of range (0 to 7777 octal)",
                              field="mode")


NAME_MAX = 255  # bytes in one name, as Linux takes it
PATH_MAX = 4095  # bytes in a whole path


def check_length(path: str) -> None:
    """Refuse a path that no Linux system call takes (`ENAMETOOLONG`), whatever the
    runtime: one name over 255 bytes, or more than 4095 bytes in all."""
    encoded = path.encode("utf-8", "surrogateescape")
    if len(encoded) > PATH_MAX or any(len(name) > NAME_MAX for name in encoded.split(b"/")):
        raise PathTooLong(path)


def check_replacement(old: bytes) -> None:
    if not old:
        raise InvalidArgument("the text to replace (old) must not be empty", field="old")


class StreamingReplace:
    """`bytes.replace(old, new)` over a file read in chunks. A match may straddle two
    chunks, so what could be the start of one is held back until the next chunk shows
    whether it is (or until `rest`); `count` is how many were replaced so far."""

    def __init__(self, old: bytes, new: bytes):
        self.old = old
        self.new = new
        self.count = 0
        self._carry = b""

    def feed(self, chunk: bytes) -> bytes:
        """The replaced text of `chunk`, less what is held back."""
        buffer = self._carry + chunk
        pieces: list[bytes] = []
        position = 0
        while (index := buffer.find(self.old, position)) >= 0:
            pieces += (buffer[position:index], self.new)
            position = index + len(self.old)
            self.count += 1
        keep = max(position, len(buffer) - len(self.old) + 1)
        pieces.append(buffer[position:keep])
        self._carry = buffer[keep:]
        return b"".join(pieces)

    def rest(self) -> bytes:
        """At the end of the file: what was held back, which matched nothing."""
        carry, self._carry = self._carry, b""
        return carry


@dataclass(frozen=True)
class AccountNames:
    """A sandbox's own users and groups, from the text of its /etc/passwd and /etc/group:
    names shown in FileInfo, and names given for chown resolved inside the sandbox."""

    users: dict[int, str]
    groups: dict[int, str]
    uids: dict[str, int]
    gids: dict[str, int]

    @classmethod
    def parse(cls, passwd: str, group: str) -> AccountNames:
        users, uids = _parse_ids(passwd)
        groups, gids = _parse_ids(group)
        return cls(users, groups, uids, gids)

    def user(self, uid: int) -> str:
        """The name of `uid`, or the number as text when the sandbox has no such user."""
        return self.users.get(uid, str(uid))

    def group(self, gid: int) -> str:
        return self.groups.get(gid, str(gid))

    def uid(self, name: str | None) -> int:
        """The uid for a chown (-1, "leave it", when no name is given)."""
        number = _id_of(name, self.uids)
        if number is None:
            raise UnknownUser(str(name))
        return number

    def gid(self, name: str | None) -> int:
        number = _id_of(name, self.gids)
        if number is None:
            raise UnknownGroup(str(name))
        return number


def _id_of(name: str | None, ids: dict[str, int]) -> int | None:
    """-1 for no name, the id of a known one or of digits, None for an unknown name."""
    if not name:
        return -1
    if name in ids:
        return ids[name]
    return int(name) if name.isdigit() else None


def _parse_ids(text: str) -> tuple[dict[int, str], dict[str, int]]:
    """`name:x:id:…` lines to both directions of the mapping (the first entry wins)."""
    by_id: dict[int, str] = {}
    by_name: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 3 or line.startswith("#") or not fields[2].isdigit():
            continue
        by_id.setdefault(int(fields[2]), fields[0])
        by_name.setdefault(fields[0], int(fields[2]))
    return by_id, by_name



# --- the interface -------------------------------------------------------------------------------


class SandboxFilesystem(ABC):
    """File operations inside one sandbox. Every method takes sandbox paths; call
    `absolute` first to expand `~` and make a relative path absolute (the methods do it
    too, so a raw path is safe, but the caller needs the absolute form for replies)."""

    home: str = "/root"

    def absolute(self, path: str) -> str:
        """`~` and `~/x` against HOME, relative paths against `/`. `..` is kept: only the
        sandbox's own resolution may fold it, since `link/..` is not `.` when `link` is a
        symlink."""
        if "\x00" in path:
            raise NulInArgument("path")
        if path == "~" or path.startswith("~/"):
            path = self.home.rstrip("/") + path[1:]
        absolute = "/" + "/".join(part for part in path.split("/") if part)
        check_length(absolute)
        return absolute

    def display(self, path: str) -> str:
        """The absolute, lexically cleaned form replies show (as upstream's `filepath.Abs`)."""
        return posixpath.normpath(self.absolute(path)).replace("//", "/")

    @abstractmethod
    async def stat(self, path: str, *, follow_symlinks: bool = True) -> FileInfo:
        """Raises `FileNotFound`."""

    async def has_content(self, path: str) -> bool:
        """Whether `path` is a regular file (after symlinks) holding at least one byte; a
        missing one has none. Runtimes where a full `stat` costs more than this test
        answer it more cheaply."""
        try:
            info = await self.stat(path)
        except FileNotFound:
            return False
        return info.type is FileType.FILE and info.size > 0

    @abstractmethod
    async def search(self, root: str, match: Callable[[str], bool]) -> list[FileInfo]:
        """Every non-directory entry under `root` (recursively, symlinks listed but not
        followed) whose base name satisfies `match`, in lexical walk order. A root that
        is a file is checked itself. Raises `FileNotFound` for a missing root."""

    async def list_directory(self, path: str, depth: int) -> list[FileInfo]:
        """The entries below directory `path` down to `depth` levels (1: its children), the
        directory itself left out, depth first in lexical order, each directory followed by
        its descendants; symlinks are listed, never followed. Raises `FileNotFound`,
        `SymlinkRefused` when `path` itself is a symlink, `NotADirectory`."""
        shown = self.display(path)
        info = await self.stat(path, follow_symlinks=False)
        if info.type is FileType.SYMLINK:
            raise SymlinkRefused(shown)
        if info.type is not FileType.DIRECTORY:
            raise NotADirectory(shown, f"path is not a directory: {shown}")
        if depth <= 0:
            return []
        return await self.entries_below(path, depth)

    @abstractmethod
    async def entries_below(self, directory: str, depth: int) -> list[FileInfo]:
        """`list_directory` past its checks: `directory` is a directory, `depth` >= 1."""

    @abstractmethod
    async def open_read(self, path: str) -> FileReader:
        """Open a regular file for streaming. Raises `FileNotFound`, `IsADirectory`."""

    @abstractmethod
    async def open_write(self, path: str, ownership: ChangeOwnership) -> FileWriter:
        """Start writing `path` (parents are created, 0755). A new file gets
        `ownership.mode` or 0755; a replaced one keeps its mode and owner unless told
        otherwise. Raises `PathReadOnly`, `IsADirectory`, `NotADirectory`, `UnknownUser`…
        before any byte is accepted."""

    @abstractmethod
    async def make_dirs(self, path: str, ownership: ChangeOwnership) -> None:
        """`mkdir -p` (0755), then apply `ownership` to the last directory."""

    @abstractmethod
    async def remove_file(self, path: str) -> None:
        """Remove a file or symlink; a missing one is fine, a directory is `IsADirectory`."""

    @abstractmethod
    async def remove_tree(self, path: str) -> None:
        """`rm -rf`; a missing path is fine."""

    @abstractmethod
    async def rename(self, src: str, dest: str) -> None:
        """Move `src` to `dest`, creating dest's parents. Raises `FileNotFound` for a
        missing src and `FileExists` for an existing dest (never overwrites)."""

    @abstractmethod
    async def set_ownership(self, path: str, ownership: ChangeOwnership) -> None:
        """chmod / chown by names. Raises `FileNotFound`, `UnknownUser`, `UnknownGroup`."""

    @abstractmethod
    async def replace(self, path: str, old: bytes, new: bytes) -> int:
        """Replace every occurrence of `old` (non-empty) by `new`, keeping mode and owner;
        return how many were replaced. The file is rewritten only when that is > 0."""
