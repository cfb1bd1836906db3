"""The byte framing of execd's event streams (`POST /command`, `POST /code`), checked the way
upstream writes it: what an SDK receives is these bytes exactly."""

from __future__ import annotations

import json
import re
from typing import Any

HEX32 = re.compile(r"^[0-9a-f]{32}$")
KEY_ORDER = ["type", "text", "execution_count", "execution_time", "timestamp", "results",
             "error"]


def split_frames(raw: bytes) -> list[dict[str, Any]]:
    """Check upstream's framing byte by byte and return the events: every frame is one
    compact JSON object (keys in upstream's order, empty or zero fields left out) followed
    by exactly `\\n\\n`."""
    assert raw.endswith(b"\n\n"), raw[-200:]
    events = []
    for frame in raw[:-2].split(b"\n\n"):
        assert frame.startswith(b"{") and b"\n" not in frame, frame
        event = json.loads(frame)
        assert json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() == frame
        keys = list(event)
        assert keys == [k for k in KEY_ORDER if k in keys], keys
        assert isinstance(event["timestamp"], int) and event["timestamp"] > 1_600_000_000_000
        for key in ("text", "execution_count", "execution_time", "results"):
            assert event.get(key, "x") not in ("", 0, {}, None), event
        if "error" in event:
            assert list(event["error"]) == ["ename", "evalue", "traceback"]
            assert isinstance(event["error"]["traceback"], list)
        events.append(event)
    return events
