"""The output a PTY session keeps for clients that (re)connect: the newest bytes, bounded."""

from __future__ import annotations

CAPACITY = 1024 * 1024  # as upstream's ring


class ReplayBuffer:
    """Every byte the session's process printed has an absolute offset; the newest
    `capacity` of them are kept."""

    def __init__(self, capacity: int = CAPACITY):
        self.capacity = capacity
        self._data = bytearray()
        self.start = 0  # offset of the oldest byte kept

    @property
    def end(self) -> int:
        """Offset of the next byte: how many bytes were ever printed."""
        return self.start + len(self._data)

    def append(self, data: bytes) -> None:
        self._data += data
        excess = len(self._data) - self.capacity
        if excess > 0:
            del self._data[:excess]
            self.start += excess

    def since(self, offset: int) -> tuple[int, bytes]:
        """(offset of the first byte, the bytes) from `offset` on; an offset older than
        what is kept starts at the oldest byte, one at or past the end gets nothing."""
        offset = max(offset, self.start)
        if offset >= self.end:
            return self.end, b""
        return offset, bytes(self._data[offset - self.start:])
