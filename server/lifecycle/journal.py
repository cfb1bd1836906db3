"""A sandbox's lifecycle events, as diagnostics show them.

Each event is a moment, a kind (`Created`, `Paused`, `Resumed`, `Renewed`, `Terminated`,
`Failed`, `Expired`, `Deleted`…), upstream-style reason code and a sentence. A journal
keeps its newest `MAX_EVENTS`, so a sandbox paused and resumed all day costs a bounded
amount of memory.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from opensandbox_emulator.server.clock import rfc3339

MAX_EVENTS = 1000


@dataclass(frozen=True)
class Event:
    at: datetime
    kind: str
    reason: str
    message: str

    def line(self) -> str:
        return f"{rfc3339(self.at)} {self.kind} {self.reason}: {self.message}"


@dataclass
class Journal:
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    dropped: int = 0

    def add(self, at: datetime, kind: str, reason: str, message: str) -> None:
        if len(self.events) == self.events.maxlen:
            self.dropped += 1
        self.events.append(Event(at, kind, reason, message))

    def text(self, limit: int | None = None) -> str:
        """The events as lines, oldest first (the newest `limit` of them)."""
        chosen = list(self.events)[-limit:] if limit else list(self.events)
        return "".join(event.line() + "\n" for event in chosen)
