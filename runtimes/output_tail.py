"""The newest bytes of a stream, within a fixed budget.

A sandbox's entrypoint may print for days; what it printed is kept for diagnostics, but
only its newest `capacity` bytes (older ones are dropped and counted), the way command
logs are bounded. Chunks are kept as written, so a chatty entrypoint costs one object per
read, not per byte.
"""

from __future__ import annotations

from collections import deque


class OutputTail:
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be at least one byte")
        self.capacity = capacity
        self._chunks: deque[bytes] = deque()
        self._held = 0
        self.dropped = 0  # bytes written before the oldest one held

    def write(self, data: bytes) -> None:
        if not data:
            return
        if len(data) >= self.capacity:
            self.dropped += self._held + len(data) - self.capacity
            self._chunks.clear()
            self._chunks.append(bytes(data[-self.capacity:]))
            self._held = self.capacity
            return
        self._chunks.append(bytes(data))
        self._held += len(data)
        while self._held > self.capacity:
            excess = self._held - self.capacity
            first = self._chunks[0]
            if len(first) <= excess:
                self._chunks.popleft()
                cut = len(first)
            else:
                self._chunks[0] = first[excess:]
                cut = excess
            self._held -= cut
            self.dropped += cut

    def read(self, max_bytes: int | None = None) -> tuple[bytes, int]:
        """The newest `max_bytes` held (all held by default), and how many bytes written
        before them are not in it."""
        data = b"".join(self._chunks)
        if max_bytes is not None and len(data) > max_bytes:
            return data[-max_bytes:], self.dropped + len(data) - max_bytes
        return data, self.dropped
