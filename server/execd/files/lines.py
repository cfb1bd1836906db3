"""`GET /files/download?offset=&limit=`: lines of a text file instead of its bytes.

Lines are numbered from 1 (a last line without a newline counts); the reply holds lines
`offset` to `offset+limit-1` (to the end without `limit`), each with its trailing CR and
LF characters removed, joined by `\\n`, with no newline at the end: `text/plain`, chunked.
An offset past the end, and a directory, give an empty 200. As upstream, the checks come in
this order: a `Range` header as well is 400, then the file must open (404), then `offset`
and `limit` must be integers >= 1 (400).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from opensandbox_emulator.runtimes.failures import IsADirectory
from opensandbox_emulator.runtimes.filesystem import FileReader, SandboxFilesystem
from opensandbox_emulator.server.execd.errors import InvalidRequestBody

MEDIA_TYPE = "text/plain; charset=utf-8"


def _positive(name: str, raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidRequestBody(f"invalid query parameter '{name}': {raw!r} is not an "
                                 "integer >= 1 (lines are numbered from 1)")
    return value


async def _lines(reader: FileReader, first: int, count: int | None) -> AsyncIterator[bytes]:
    last = None if count is None else first + count - 1
    number = 1
    partial = b""
    sent = False
    try:
        async for chunk in reader.chunks(0, None):
            *lines, partial = (partial + chunk).split(b"\n")
            for line in lines:
                if number >= first and (last is None or number <= last):
                    yield (b"\n" if sent else b"") + line.rstrip(b"\r\n")
                    sent = True
                number += 1
                if last is not None and number > last:
                    return
        if partial and number >= first and (last is None or number <= last):
            yield (b"\n" if sent else b"") + partial.rstrip(b"\r\n")
    finally:
        await reader.close()


async def download_lines(fs: SandboxFilesystem, path: str, request: Request,
                         offset: str | None, limit: str | None) -> Response:
    if request.headers.get("range"):
        raise InvalidRequestBody("offset/limit and a Range header are mutually exclusive: "
                                 "read lines or bytes, not both")
    try:
        reader = await fs.open_read(path)
    except IsADirectory:
        return StreamingResponse(_nothing(), media_type=MEDIA_TYPE)
    try:
        first = _positive("offset", offset) or 1
        count = _positive("limit", limit)
    except BaseException:
        await reader.close()
        raise
    return StreamingResponse(_lines(reader, first, count), media_type=MEDIA_TYPE)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""
