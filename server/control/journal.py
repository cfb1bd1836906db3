"""The request journal: every request the server served, newest last, bounded in size.

An entry is written when a request arrives (so one still streaming shows with no status
yet) and completed when its response ends. Past `capacity` entries the oldest are dropped
and counted, so a long test run cannot grow the server's memory.
"""

from __future__ import annotations

import fnmatch
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opensandbox_emulator.server.clock import rfc3339
from opensandbox_emulator.server.control.requests import RequestView


@dataclass
class JournalEntry:
    seq: int
    time: datetime
    method: str
    view: RequestView
    query: str
    sandbox_id: str | None = None  # the view's, or the id a create answered with
    status: int | None = None
    duration_ms: float | None = None
    fault: int | None = None  # the id of the fault rule that acted on it

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": rfc3339(self.time), "method": self.method,
                "path": self.view.path, "query": self.query,
                "sandboxId": self.sandbox_id, "port": self.view.port,
                "via": self.view.via, "status": self.status,
                "durationMs": self.duration_ms, "fault": self.fault}


def path_matches(pattern: str | None, path: str) -> bool:
    """A shell-style glob over the whole path (`*` also crosses `/`); None matches all."""
    return pattern is None or fnmatch.fnmatchcase(path, pattern)


class Journal:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: deque[JournalEntry] = deque(maxlen=capacity)
        self._next_seq = 1
        self.dropped = 0

    def begin(self, *, time: datetime, method: str, view: RequestView,
              query: str) -> JournalEntry:
        entry = JournalEntry(self._next_seq, time, method, view, query, view.sandbox_id)
        self._next_seq += 1
        if len(self._entries) == self.capacity:
            self.dropped += 1
        self._entries.append(entry)
        return entry

    def entries(self, *, sandbox_id: str | None = None, path: str | None = None,
                method: str | None = None) -> list[JournalEntry]:
        wanted_method = method.upper() if method else None
        return [entry for entry in self._entries
                if (sandbox_id is None or entry.sandbox_id == sandbox_id)
                and (wanted_method is None or entry.method == wanted_method)
                and path_matches(path, entry.view.path)]

    def clear(self) -> None:
        """Empty, with the sequence back at 1."""
        self._entries.clear()
        self._next_seq = 1
        self.dropped = 0
