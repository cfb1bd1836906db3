"""Time and identifiers, injected rather than global, so tests can move the clock later."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for durations)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class IdGenerator(Protocol):
    def sandbox_id(self) -> str: ...

    def command_id(self) -> str: ...


class UuidIds:
    """Upstream's shapes: sandbox ids are hyphenated UUIDs, command ids are 32 hex digits."""

    def sandbox_id(self) -> str:
        return str(uuid.uuid4())

    def command_id(self) -> str:
        return uuid.uuid4().hex


def rfc3339(moment: datetime) -> str:
    """UTC, microseconds, trailing `Z`: the lifecycle API's time format."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339_nano(moment_ns: int) -> str:
    """UTC with nanoseconds, trailing zeros trimmed (execd's Go `time.Time` format)."""
    seconds, nanos = divmod(moment_ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
