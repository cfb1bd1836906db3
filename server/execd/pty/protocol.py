"""The PTY WebSocket's frames, as upstream's execd speaks them.

Server to client: binary `0x01`+bytes (output; stdout in pipe mode), `0x02`+bytes (stderr,
pipe mode), `0x03`+offset (8 bytes, big-endian)+bytes (replay, before `connected`); text
JSON `connected`, `pong`, `error` (`code`: STDIN_WRITE_FAILED, INVALID_FRAME, START_FAILED,
ALREADY_CONNECTED) and `exit` (`exit_code`, -1 for a signal), then close 1000. A takeover
closes the previous client with 4001 `TAKEN_OVER`.

Client to server: binary `0x00`+bytes (stdin), text `{"type":"stdin","data"}`,
`{"type":"resize","cols","rows"}`, `{"type":"signal","signal":"SIGINT"}` (INT, TERM,
KILL, QUIT, HUP), `{"type":"ping"}`. An unknown `type` is answered with INVALID_FRAME; text
that is not JSON, empty binary frames and other leading bytes are ignored.
"""

from __future__ import annotations

import json
import signal
import struct
from dataclasses import dataclass
from typing import Any

STDIN = 0x00
STDOUT = 0x01
STDERR = 0x02
REPLAY = 0x03
FRAME_LIMIT = 32 * 1024  # output bytes per frame
CLOSE_EXITED = 1000
CLOSE_TAKEN_OVER = 4001
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL,
           "SIGQUIT": signal.SIGQUIT, "SIGHUP": signal.SIGHUP}


def output_frame(channel: int, data: bytes) -> bytes:
    return bytes([channel]) + data


def replay_frame(offset: int, data: bytes) -> bytes:
    return bytes([REPLAY]) + struct.pack(">q", offset) + data


def text(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


def connected(session_id: str, mode: str) -> str:
    return text({"type": "connected", "session_id": session_id, "mode": mode})


def error(code: str, message: str) -> str:
    return text({"type": "error", "error": message, "code": code})


def exited(exit_code: int) -> str:
    return text({"type": "exit", "exit_code": exit_code})


@dataclass(frozen=True)
class ClientFrame:
    """One frame from the client, decoded: `kind` is stdin, resize, signal, ping,
    invalid (answer INVALID_FRAME) or ignore."""

    kind: str
    data: bytes = b""
    cols: int = 0
    rows: int = 0
    signal: int | None = None
    detail: str = ""


def decode(message: dict[str, Any]) -> ClientFrame:
    raw = message.get("bytes")
    if raw is not None:
        if len(raw) > 1 and raw[0] == STDIN:
            return ClientFrame("stdin", data=bytes(raw[1:]))
        return ClientFrame("ignore")
    try:
        body = json.loads(message.get("text") or "")
    except ValueError:
        return ClientFrame("ignore")
    if not isinstance(body, dict):
        return ClientFrame("ignore")
    kind = body.get("type")
    if kind == "stdin":
        data = body.get("data")
        return ClientFrame("stdin", data=data.encode()) if isinstance(data, str) else \
            ClientFrame("ignore")
    if kind == "resize":
        cols, rows = body.get("cols"), body.get("rows")
        if isinstance(cols, int) and isinstance(rows, int) and cols > 0 and rows > 0:
            return ClientFrame("resize", cols=cols, rows=rows)
        return ClientFrame("ignore")
    if kind == "signal":
        return ClientFrame("signal", signal=SIGNALS.get(str(body.get("signal"))))
    if kind == "ping":
        return ClientFrame("ping")
    return ClientFrame("invalid", detail=f"unknown frame type {kind!r}")
