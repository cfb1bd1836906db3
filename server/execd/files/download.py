"""`GET /files/download`: the file streamed from the runtime, with HTTP ranges.

As upstream (Go's `ServeContent`): `Content-Disposition`, `Content-Length`, `Last-Modified`
and `Accept-Ranges: bytes` on every reply; one range (`S-E`, `S-`, `-N`; only the first of
several is served) comes back as 206 with `Content-Range`; a range that starts past the end
is 416 with `Content-Range: bytes */size`; `If-Modified-Since`, `If-Unmodified-Since` and a
date `If-Range` are honoured.
"""

from __future__ import annotations

import email.utils
import posixpath
import re
import urllib.parse
from datetime import datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from opensandbox_emulator.runtimes.failures import IsADirectory
from opensandbox_emulator.runtimes.filesystem import FileReader, SandboxFilesystem
from opensandbox_emulator.server.errors import ApiError

_TOKEN = re.compile(r"^[A-Za-z0-9!#$&+.^_`|~-]+$")


class RangeInvalid(ApiError):
    status_code = 416
    code = "INVALID_RANGE"


class RangeNotSatisfiable(ApiError):
    status_code = 416
    code = "RANGE_NOT_SATISFIABLE"


class _FileStream(StreamingResponse):
    """Streams a reader's chunks and closes it whatever happens to the client."""

    def __init__(self, reader: FileReader, start: int, length: int, status_code: int,
                 headers: dict[str, str]):
        super().__init__(reader.chunks(start, length), status_code=status_code,
                         headers=headers, media_type="application/octet-stream")
        self._reader = reader

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._reader.close()


def content_disposition(path: str) -> str:
    """Upstream writes `filename=<name>` unquoted; names that are not HTTP tokens get the
    quoted form plus RFC 6266 `filename*`, so any name survives."""
    name = posixpath.basename(path.rstrip("/")) or "download"
    if _TOKEN.match(name):
        return f"attachment; filename={name}"
    fallback = name.encode("ascii", "replace").decode().replace("\\", "_").replace('"', "_")
    raw = name.encode("utf-8", "surrogateescape")
    return (f'attachment; filename="{fallback}"; '
            f"filename*=UTF-8''{urllib.parse.quote(raw, safe='')}")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, length) of the first range, None for "no range". Raises `RangeInvalid` for
    bad syntax and `RangeNotSatisfiable` when the first range starts past the end."""
    header = header.strip()
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        raise RangeInvalid(f"Range {header!r} is not a byte range; send bytes=START-END, "
                           "bytes=START- or bytes=-SUFFIX_LENGTH")
    parsed: list[tuple[int | None, int | None]] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        first, dash, last = item.partition("-")
        first, last = first.strip(), last.strip()
        if (not dash or (first and not first.isdigit()) or (last and not last.isdigit())
                or (not first and not last) or (first and last and int(last) < int(first))):
            raise RangeInvalid(f"Range {header!r}: {item!r} is not START-END, START- or "
                               "-SUFFIX_LENGTH with END >= START")
        parsed.append((int(first) if first else None, int(last) if last else None))
    if not parsed:
        raise RangeInvalid(f"Range {header!r} names no range")
    start, end = parsed[0]
    if start is None:
        assert end is not None
        length = min(end, size)
        start = size - length
    else:
        if start >= size:
            raise RangeNotSatisfiable(f"Range {header!r} starts at or after the end of the "
                                      f"file ({size} bytes)")
        length = (size if end is None else min(end + 1, size)) - start
    if length <= 0:
        raise RangeNotSatisfiable(f"Range {header!r} selects no bytes of the file "
                                  f"({size} bytes)")
    return start, length


def _http_date(value: str | None) -> int | None:
    """Seconds since the epoch of an HTTP date header, None when absent or unparseable."""
    if not value:
        return None
    try:
        parsed: datetime = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return int(parsed.timestamp())


async def download(fs: SandboxFilesystem, path: str, request: Request) -> Response:
    try:
        reader = await fs.open_read(path)
    except IsADirectory as error:
        # Reworded for this route: a download takes one file, and search lists a
        # directory's files.
        raise IsADirectory(error.path, f"{error.path} is a directory; download files one by "
                                       "one (search lists them).") from error
    try:
        response = _respond(reader, request)
    except BaseException:
        await reader.close()
        raise
    if not isinstance(response, _FileStream):
        await reader.close()
    return response


def _respond(reader: FileReader, request: Request) -> Response:
    info = reader.info
    size = info.size
    modified = info.modified_ns // 1_000_000_000
    headers = {"Content-Disposition": content_disposition(info.path),
               "Last-Modified": email.utils.formatdate(modified, usegmt=True),
               "Accept-Ranges": "bytes"}
    unmodified_since = _http_date(request.headers.get("if-unmodified-since"))
    if unmodified_since is not None and modified > unmodified_since:
        raise ApiError(f"{info.path} was modified after If-Unmodified-Since",
                       code="PRECONDITION_FAILED", status_code=412)
    modified_since = _http_date(request.headers.get("if-modified-since"))
    if (modified_since is not None and "if-none-match" not in request.headers
            and modified <= modified_since):
        return Response(status_code=304, headers=headers)
    range_header = request.headers.get("range", "")
    if_range = request.headers.get("if-range")
    if range_header and if_range is not None and _http_date(if_range) != modified:
        range_header = ""  # the client's copy is stale: send the whole file
    try:
        chosen = parse_range(range_header, size)
    except ApiError as error:
        return JSONResponse(error.body(), status_code=416,
                            headers={**headers, "Content-Range": f"bytes */{size}"})
    if chosen is None:
        headers["Content-Length"] = str(size)
        return _FileStream(reader, 0, size, 200, headers)
    start, length = chosen
    headers["Content-Length"] = str(length)
    headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
    return _FileStream(reader, start, length, 206, headers)
