"""A bounded log of one command's output, addressed by byte offset.

Upstream writes every command's output to a file that grows without bound and serves
`GET /command/{id}/logs?cursor=N` by seeking to byte N. We keep the same addressing (a
cursor is an offset from the first byte the command ever printed, so polling with the
returned cursor never loses or repeats a byte) but hold only the newest `capacity` bytes
in memory: a command that prints a gigabyte costs at most `capacity` plus one chunk.

Bytes are kept in sealed chunks of about `chunk_size` plus one open tail, so a command that
prints many tiny lines does not cost an object per line, and a finished command that
printed little holds little.
"""

from __future__ import annotations

from collections import deque

DEFAULT_CHUNK_SIZE = 64 * 1024


class LogBuffer:
    def __init__(self, capacity: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE):
        if capacity < 1:
            raise ValueError("capacity must be at least one byte")
        self.capacity = capacity
        self.chunk_size = max(1, min(chunk_size, capacity))
        self._chunks: deque[bytes] = deque()
        self._dropped_from_first = 0  # bytes at the front of the first chunk already gone
        self._tail = bytearray()
        self._start = 0  # offset of the oldest byte kept
        self._end = 0  # offset just past the newest byte: the total ever written

    @property
    def start(self) -> int:
        """Offset of the oldest byte still held (0 until something was dropped)."""
        return self._start

    @property
    def end(self) -> int:
        """Total bytes ever written; the cursor of the next byte to come."""
        return self._end

    @property
    def held(self) -> int:
        return self._end - self._start

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._end += len(data)
        if len(data) >= self.capacity:
            # Everything held so far would be dropped anyway.
            self._chunks.clear()
            self._dropped_from_first = 0
            self._tail = bytearray()
            self._chunks.append(bytes(data[-self.capacity:]))
            self._start = self._end - self.capacity
            return
        if len(data) >= self.chunk_size and isinstance(data, bytes):
            if self._tail:  # sealed as it is, however short, rather than copy `data` in
                self._chunks.append(bytes(self._tail))
                self._tail = bytearray()
            self._chunks.append(data)  # a chunk of its own as it is: no copy
            self._trim()
            return
        self._tail += data
        if len(self._tail) >= self.chunk_size:
            self._chunks.append(bytes(self._tail))
            self._tail = bytearray()
        self._trim()

    def _trim(self) -> None:
        excess = self.held - self.capacity
        while excess > 0:
            if self._chunks:
                # The first chunk is dropped whole once all of it is gone; until then an
                # offset marks what is (no copy of the rest: "plus one chunk" above).
                left = len(self._chunks[0]) - self._dropped_from_first
                if left <= excess:
                    self._chunks.popleft()
                    self._dropped_from_first = 0
                    dropped = left
                else:
                    self._dropped_from_first += excess
                    dropped = excess
            else:
                dropped = excess
                del self._tail[:excess]
            self._start += dropped
            excess -= dropped

    def read(self, cursor: int) -> tuple[bytes, int, bool]:
        """`(bytes from cursor to the end, next cursor, truncated)`.

        When the bytes at `cursor` were already dropped, the read starts at the oldest byte
        kept and `truncated` is True. A cursor past the end reads nothing and is handed back
        unchanged (as upstream does with a seek past EOF).
        """
        if cursor < 0:
            raise ValueError("cursor must not be negative")
        if cursor >= self._end:
            return b"", cursor, False
        truncated = cursor < self._start
        skip = max(cursor - self._start, 0) + (self._dropped_from_first if self._chunks else 0)
        parts: list[bytes] = []
        for piece in (*self._chunks, self._tail):
            size = len(piece)
            if skip >= size:
                skip -= size
            else:
                parts.append(bytes(piece[skip:]) if skip else bytes(piece))
                skip = 0
        return b"".join(parts), self._end, truncated

    def compact(self) -> None:
        """Seal the open tail (when the command is done writing) to drop its spare room,
        and let go of what was dropped from the first chunk."""
        if self._dropped_from_first:
            self._chunks[0] = self._chunks[0][self._dropped_from_first:]
            self._dropped_from_first = 0
        if self._tail:
            self._chunks.append(bytes(self._tail))
            self._tail = bytearray()
