"""`POST /files/upload`: multipart parsed as it streams in, each file written straight to
its place in the sandbox, so memory stays flat whatever the size.

Pairing follows upstream: the i-th `metadata` part goes with the i-th `file` part, whatever
the interleaving (the Python SDK sends m,f,m,f… in one request; the JS SDK one request per
file). `metadata` may be a file part (what both SDKs send) or a plain field. A file whose
metadata has not arrived yet waits in a server-side temporary file.

Nothing appears under a target name until the whole request has been read and checked:
each file is written beside its target and all of them are renamed into place, in order,
at the end. Any failure (a bad part, a count mismatch, the client leaving) removes every
partial file instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from dataclasses import dataclass, field
from typing import IO, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from opensandbox_emulator.runtimes.filesystem import (
    CHUNK_SIZE,
    ChangeOwnership,
    FileWriter,
    SandboxFilesystem,
)
from opensandbox_emulator.server.errors import ApiError
from opensandbox_emulator.server.execd.files.common import ownership
from opensandbox_emulator.server.inputs import NUL

METADATA_LIMIT = 1024 * 1024


class InvalidFile(ApiError):
    status_code = 400
    code = "INVALID_FILE"


class InvalidFileMetadata(ApiError):
    status_code = 400
    code = "INVALID_FILE_METADATA"


class InvalidFileContent(ApiError):
    status_code = 400
    code = "INVALID_FILE_CONTENT"


@dataclass(frozen=True)
class Metadata:
    path: str
    ownership: ChangeOwnership


def parse_metadata(raw_bytes: bytes) -> Metadata:
    try:
        raw = json.loads(raw_bytes)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidFileMetadata(f"invalid metadata format. {error}") from error
    if not isinstance(raw, dict):
        raise InvalidFileMetadata('invalid metadata format. expected a JSON object such as '
                                  '{"path": "/tmp/a.txt", "mode": 644}')
    path = raw.get("path")
    if path is not None and not isinstance(path, str):
        raise InvalidFileMetadata("invalid metadata format. path must be a string")
    if not path:
        raise InvalidFileMetadata("metadata path is empty")
    for key in ("path", "owner", "group"):
        if isinstance(raw.get(key), str) and NUL in raw[key]:
            raise InvalidFileMetadata(f"metadata {key} must not contain a NUL byte (\\u0000)")
    mode = raw.get("mode")
    if mode is not None and (isinstance(mode, bool) or not isinstance(mode, int)):
        raise InvalidFileMetadata(f"invalid metadata format. mode must be an integer of octal "
                                  f"digits such as 644, not {mode!r}")
    for key in ("owner", "group"):
        if raw.get(key) is not None and not isinstance(raw.get(key), str):
            raise InvalidFileMetadata(f"invalid metadata format. {key} must be a name (string)")
    return Metadata(path, ownership(mode, raw.get("owner"), raw.get("group"),
                                    error=InvalidFileMetadata))


class _Spool:
    """A file part waiting for its metadata: kept on the server's disk, not in memory."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._buffer = bytearray()

    async def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= CHUNK_SIZE:
            await self._flush()

    async def _flush(self) -> None:
        if self._file is None:
            self._file = await asyncio.to_thread(tempfile.TemporaryFile,
                                                 prefix="opensandbox-upload-")
        data, self._buffer = bytes(self._buffer), bytearray()
        await asyncio.to_thread(self._file.write, data)

    async def pour_into(self, writer: FileWriter) -> None:
        if self._file is not None:
            await self._flush()
            await asyncio.to_thread(self._file.seek, 0)
            while chunk := await asyncio.to_thread(self._file.read, CHUNK_SIZE):
                await writer.write(chunk)
        else:
            await writer.write(bytes(self._buffer))
        await self.close()

    async def close(self) -> None:
        self._buffer = bytearray()
        file, self._file = self._file, None
        if file is not None:
            await asyncio.to_thread(file.close)


@dataclass
class _Part:
    kind: str  # "metadata" | "file" | "other"
    data: bytearray = field(default_factory=bytearray)
    sink: FileWriter | _Spool | None = None


class UploadSession:
    """One upload request: feed it body chunks, then `finish` (or `abort`)."""

    def __init__(self, fs: SandboxFilesystem, boundary: bytes):
        self.fs = fs
        self.metadata: list[Metadata] = []
        self.files: list[FileWriter | _Spool] = []
        self._events: list[tuple[Any, ...]] = []
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._part: _Part | None = None
        self._parts_seen = 0
        self._committed = 0
        self._ended = False
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": lambda: self._events.append(("begin", self._headers)),
            "on_part_data": lambda data, start, end: self._events.append(
                ("data", data[start:end])),
            "on_part_end": lambda: self._events.append(("end",)),
            "on_end": self._on_end,
        })

    # The parser calls these synchronously; they only record what it saw.
    def _on_part_begin(self) -> None:
        self._headers = {}
        self._parts_seen += 1

    def _on_header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _on_end(self) -> None:
        self._ended = True

    async def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as error:
            raise InvalidFile(f"malformed multipart body: {error}") from error
        events, self._events = self._events, []
        for event in events:
            if event[0] == "begin":
                await self._begin(event[1])
            elif event[0] == "data":
                await self._data(event[1])
            else:
                await self._end()

    async def _begin(self, headers: dict[str, str]) -> None:
        _, params = parse_options_header(headers.get("content-disposition", ""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name == "metadata":
            self._part = _Part("metadata")
        elif name == "file":
            index = len(self.files)
            sink: FileWriter | _Spool
            if index < len(self.metadata):
                meta = self.metadata[index]
                sink = await self.fs.open_write(meta.path, meta.ownership)
            else:
                sink = _Spool()
            self.files.append(sink)
            self._part = _Part("file", sink=sink)
        else:
            self._part = _Part("other")  # upstream ignores other parts; so do we

    async def _data(self, data: bytes) -> None:
        part = self._part
        if part is None:
            return
        if part.kind == "metadata":
            part.data += data
            if len(part.data) > METADATA_LIMIT:
                raise InvalidFileMetadata(f"metadata part {len(self.metadata) + 1} is larger "
                                          f"than {METADATA_LIMIT} bytes; it should be a small "
                                          "JSON object")
        elif part.sink is not None:
            await part.sink.write(data)

    async def _end(self) -> None:
        part, self._part = self._part, None
        if part is not None and part.kind == "file" and not isinstance(part.sink, _Spool):
            assert part.sink is not None
            await part.sink.seal()  # many files in one request must not hold many fds
        if part is None or part.kind != "metadata":
            return
        meta = parse_metadata(bytes(part.data))
        self.metadata.append(meta)
        index = len(self.metadata) - 1
        if index < len(self.files):  # its file came first and waits in a spool
            spool = self.files[index]
            assert isinstance(spool, _Spool)
            writer = await self.fs.open_write(meta.path, meta.ownership)
            self.files[index] = writer
            await spool.pour_into(writer)
            await writer.seal()

    async def finish(self) -> None:
        if not self._ended:
            if self._parts_seen == 0:
                raise InvalidFile("multipart form is empty: send multipart/form-data with a "
                                  "'metadata' part and a 'file' part per file")
            raise InvalidFile("the multipart body ended before its closing boundary; the "
                              "upload was cut short")
        if not self.metadata:
            raise InvalidFileMetadata("metadata file is missing: each file needs a "
                                      "'metadata' part with its path")
        if not self.files:
            raise InvalidFileContent("file is missing: send a 'file' part after each "
                                     "'metadata' part")
        if len(self.metadata) != len(self.files):
            raise InvalidFile(f"metadata and file count mismatch: {len(self.metadata)} vs "
                              f"{len(self.files)}")
        for writer in self.files:
            assert not isinstance(writer, _Spool)
            await writer.commit()
            self._committed += 1

    async def abort(self) -> None:
        files, self.files = self.files[self._committed:], []
        for sink in files:
            with contextlib.suppress(Exception):
                if isinstance(sink, _Spool):
                    await sink.close()
                else:
                    await sink.abort()


async def receive_upload(request: Request, fs: SandboxFilesystem) -> None:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidFile("multipart form is empty: the body must be multipart/form-data "
                          "(with a boundary) holding 'metadata' and 'file' parts")
    session = UploadSession(fs, boundary)
    stream = request.stream()
    try:
        async for chunk in stream:
            await session.feed(chunk)
        await session.finish()
    except ClientDisconnect:
        await session.abort()
        raise
    except Exception:
        await session.abort()
        # Read what the client is still sending, so that it gets our reply instead of a
        # connection reset in the middle of its upload.
        with contextlib.suppress(Exception):
            async for _ in stream:
                pass
        raise
    except BaseException:
        await session.abort()
        raise
