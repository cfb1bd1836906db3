"""A clock tests move forward: real time plus an offset that only grows.

It wraps the server's own clock, so with no advance it is that clock. Both readings move
together: `now()` for expiry and timestamps, `monotonic()` for durations and the ages of
finished commands, so whatever the server computes from either sees the same jump.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from opensandbox_emulator.server.clock import Clock


class MovableClock:
    def __init__(self, base: Clock):
        self.base = base
        self._offset = 0.0

    @property
    def offset_seconds(self) -> float:
        return self._offset

    def now(self) -> datetime:
        return self.base.now() + timedelta(seconds=self._offset)

    def monotonic(self) -> float:
        return self.base.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        """Move forward by `seconds` (never back: the monotonic reading must not fall)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._offset += seconds

    def restore(self) -> None:
        """Back to the base clock (on reset, when nothing holds an earlier reading)."""
        self._offset = 0.0
