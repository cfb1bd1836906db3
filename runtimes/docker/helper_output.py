"""What the helper operations print, read back.

The helpers (`helpers.py`) answer in text: `stat` lines in one format, `@@name` sections
(the sandbox's /etc/passwd and /etc/group ride along where names are needed), and on
failure the strerror text of busybox or GNU tools on stderr, which `helper_failure` turns
into the failure it means.
"""

from __future__ import annotations

import re
import stat

from opensandbox_emulator.runtimes.docker.helpers import HelperResult
from opensandbox_emulator.runtimes.failures import (
    FileBusy,
    FileExists,
    FileFailure,
    FileNotFound,
    IsADirectory,
    NotADirectory,
    PathNotAccessible,
    PathReadOnly,
    PathTooLong,
    RuntimeFailure,
    SymlinkLoop,
)
from opensandbox_emulator.runtimes.filesystem import AccountNames, FileInfo, FileType

STAT_LINE = re.compile(r"^([0-9a-f]+) (\d+) (\d+) (\d+) (\d+) (\d+) \[([^\]]*)\] \[([^\]]*)\] "
                       r"(.*)$")
FRACTION = re.compile(r":\d\d\.(\d+)")


def read_sections(text: str) -> dict[str, list[str]]:
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


def account_names(sections: dict[str, list[str]]) -> AccountNames:
    return AccountNames.parse("\n".join(sections.get("passwd", [])),
                              "\n".join(sections.get("group", [])))


def _nanos(seconds: int, text: str) -> int:
    fraction = FRACTION.search(text)
    digits = (fraction.group(1) if fraction else "")[:9].ljust(9, "0")
    return seconds * 1_000_000_000 + int(digits)


def file_info(line: str, names: AccountNames, shown: str | None = None) -> FileInfo | None:
    """One line of the helpers' `stat` format as a `FileInfo` (named `shown` if given);
    None for a line that is not one."""
    match = STAT_LINE.match(line)
    if match is None:
        return None
    raw_mode, size, uid, gid, mtime, ctime, mtext, ctext, name = match.groups()
    mode = int(raw_mode, 16)
    return FileInfo(path=shown if shown is not None else name, size=int(size),
                    modified_ns=_nanos(int(mtime), mtext), changed_ns=_nanos(int(ctime), ctext),
                    owner=names.user(int(uid)), group=names.group(int(gid)),
                    mode=stat.S_IMODE(mode), type=FileType.of(mode))


def helper_failure(result: HelperResult, action: str, shown: str) -> RuntimeFailure:
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
    if "File name too long" in text:
        return PathTooLong(shown)
    if "Too many levels of symbolic links" in text:
        return SymlinkLoop(shown)
    if "Device or resource busy" in text:
        return FileBusy(shown, f"cannot {action} {shown}: it is a mount point of the sandbox")
    if "Permission denied" in text or "Operation not permitted" in text:
        return PathNotAccessible(shown, f"cannot {action} {shown}: {detail}")
    return FileFailure(shown, f"cannot {action} {shown}: {detail[:500]}")
