"""Just enough of the tar format for the archive API: one regular file in, one out.

`GET /containers/{id}/archive` answers with a tar stream; for a single file it is an optional
PAX (or GNU long-name) header, the file's header, then its bytes. `read_member_header`
parses that far and leaves the stream at the first byte of the file, so a download streams
straight from the engine. `file_header` builds the header `PUT …/archive` needs to write a
file with a given mode and owner (the engine applies both from the header).
"""

from __future__ import annotations

import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass

BLOCK = 512


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    kind: bytes  # the typeflag: b"0" for a regular file, b"5" a directory, b"2" a symlink…


def _number(field: bytes) -> int:
    if field and field[0] & 0x80:  # base-256 (GNU), for sizes past 8 GiB
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    digits = field.replace(b"\0", b" ").strip()
    return int(digits, 8) if digits else 0


def _pax_records(data: bytes) -> dict[str, str]:
    records = {}
    position = 0
    while position < len(data):
        space = data.find(b" ", position)
        if space < 0:
            break
        length = int(data[position:space])
        key, _, value = data[space + 1:position + length - 1].partition(b"=")
        records[key.decode(errors="replace")] = value.decode(errors="replace")
        position += length
    return records


def read_member_header(read_exactly: Callable[[int], bytes]) -> Member | None:
    """The first real member's header; `read_exactly(n)` returns n bytes or fewer at EOF.
    None when the archive is empty."""
    overrides: dict[str, str] = {}
    long_name: str | None = None
    while True:
        block = read_exactly(BLOCK)
        if len(block) < BLOCK or block == bytes(BLOCK):
            return None
        kind = block[156:157]
        size = _number(block[124:136])
        if kind in (b"x", b"g", b"L", b"K"):
            data = read_exactly(size + (-size % BLOCK))[:size]
            if kind == b"x":
                overrides.update(_pax_records(data))
            elif kind == b"L":
                long_name = data.rstrip(b"\0").decode(errors="replace")
            continue
        name = long_name or block[0:100].rstrip(b"\0").decode(errors="replace")
        name = overrides.get("path", name)
        if "size" in overrides:
            size = int(overrides["size"])
        return Member(name=name, size=size, kind=kind if kind != b"\0" else b"0")


def file_header(name: str, size: int, *, mode: int, uid: int, gid: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.uid = uid
    info.gid = gid
    info.mtime = int(time.time())
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT)


def padding(size: int) -> bytes:
    """What follows a member's bytes: zeros to the block boundary."""
    return bytes(-size % BLOCK)


END_OF_ARCHIVE = bytes(2 * BLOCK)
