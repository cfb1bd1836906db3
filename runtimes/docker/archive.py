"""Large file contents through the engine's archive API, which streams.

`ArchiveReader` streams one file out of `GET …/archive` (a tar of that one file) straight
from the engine's response, so a download costs the server a chunk of memory at a time;
`put_archive` writes a spooled upload into a directory with `PUT …/archive`. Each call costs
the engine some 40 ms, which is why small files go through the helper agent instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import IO, Any

from docker.errors import APIError, NotFound

from opensandbox_emulator.runtimes.docker import tarstream
from opensandbox_emulator.runtimes.docker.engine import Engine, explain
from opensandbox_emulator.runtimes.docker.sandbox import DockerSandbox
from opensandbox_emulator.runtimes.failures import (
    FileBusy,
    FileFailure,
    FileNotFound,
    PathReadOnly,
    RuntimeFailure,
    SandboxMissing,
)
from opensandbox_emulator.runtimes.filesystem import CHUNK_SIZE, FileInfo, FileReader


def engine_failure(error: APIError, sandbox_id: str, action: str, shown: str
                   ) -> RuntimeFailure:
    """The engine's refusal of an archive request, as the failure a client acts on."""
    text = explain(error)
    if isinstance(error, NotFound) and "No such container" in text:
        return SandboxMissing(sandbox_id, f"cannot {action} {shown}: the sandbox is gone")
    if isinstance(error, NotFound):
        return FileNotFound(shown)
    if "read-only" in text:
        return PathReadOnly(shown, f"cannot {action} {shown}: it is on a read-only filesystem")
    return FileFailure(shown, f"cannot {action} {shown}: {text}")


class ArchiveReader(FileReader):
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
            raise engine_failure(error, self._sandbox.sandbox_id, "read", self.info.path) \
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


async def put_archive(engine: Engine, sandbox: DockerSandbox, directory: str, name: str,
                      spool: IO[bytes], size: int, *, mode: int, uid: int, gid: int,
                      shown: str) -> None:
    """Write the `size` bytes of `spool` as `directory/name`, with that mode and owner (the
    engine applies both from the tar header); `shown` names the file in failures."""
    header = tarstream.file_header(name, size, mode=mode, uid=uid, gid=gid)

    def body() -> Iterator[bytes]:
        yield header
        spool.seek(0)
        while chunk := spool.read(CHUNK_SIZE):
            yield chunk
        yield tarstream.padding(size) + tarstream.END_OF_ARCHIVE

    try:
        await engine.call(engine.api.put_archive, sandbox.container, directory, body())
    except APIError as error:
        raise engine_failure(error, sandbox.sandbox_id, "write", shown) from error
