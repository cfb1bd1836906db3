"""Errors that become `{"code","message"}` bodies.

Every failure the server itself reports is an `ApiError`: a small exception class that
carries its own HTTP status, code and message. A runtime's failures become `ApiError`s
through one table (`failures.py`); `handlers.py` turns both into the response body, so
routes and services only ever `raise`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Scope, Send


@dataclass(frozen=True)
class Api:
    """What one API calls the failures every API has."""

    invalid_code: str  # a request it cannot act on (also a body that fails validation)
    not_found_code: str  # a path no route serves


LIFECYCLE_API = Api(invalid_code="SANDBOX::INVALID_PARAMETER",
                    not_found_code="GENERAL::NOT_FOUND")
EXECD_API = Api(invalid_code="INVALID_REQUEST_BODY", not_found_code="NOT_FOUND")


class ApiError(Exception):
    """Base class: subclasses set `status_code` and `code`; the message is per instance."""

    status_code: int = 500
    code: str = "GENERAL::UNKNOWN_ERROR"

    def __init__(self, message: str, *, code: str | None = None, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


# --- lifecycle API --------------------------------------------------------------------------


class InvalidParameter(ApiError):
    status_code = 400
    code = "SANDBOX::INVALID_PARAMETER"


class InvalidMetadataLabel(ApiError):
    status_code = 400
    code = "SANDBOX::INVALID_METADATA_LABEL"


class InvalidExpiration(ApiError):
    status_code = 400
    code = "DOCKER::INVALID_EXPIRATION"


class InvalidPort(ApiError):
    status_code = 400
    code = "DOCKER::INVALID_PORT"

    def __init__(self, port: object):
        super().__init__(f"Port must be between 1 and 65535 (got {port}).")


class SandboxNotRunning(ApiError):
    status_code = 409
    code = "DOCKER::SANDBOX_NOT_RUNNING"

    def __init__(self, state: str):
        super().__init__(f"Sandbox is not in a running state (it is {state}); only a Running "
                         "sandbox can be paused.")


class SandboxNotPaused(ApiError):
    status_code = 409
    code = "DOCKER::SANDBOX_NOT_PAUSED"

    def __init__(self, state: str):
        super().__init__(f"Sandbox is not in a paused state (it is {state}); only a Paused "
                         "sandbox can be resumed.")


class SandboxStartFailed(ApiError):
    status_code = 500
    code = "DOCKER::SANDBOX_START_FAILED"


class InvalidMetadataFormat(ApiError):
    status_code = 400
    code = "INVALID_METADATA_FORMAT"


class NotImplementedHere(ApiError):
    """A route or field the newest SDKs use that this server does not serve."""

    status_code = 501
    code = "GENERAL::NOT_IMPLEMENTED"


class SecureAccessDenied(ApiError):
    """The gateway refused a request to a secured sandbox, or a signed route."""

    status_code = 401
    code = "GATEWAY::UNAUTHORIZED"


# --- snapshots ---------------------------------------------------------------------------------


class SnapshotNotFound(ApiError):
    status_code = 404
    code = "SNAPSHOT::NOT_FOUND"

    def __init__(self, snapshot_id: str):
        super().__init__(f"Snapshot {snapshot_id} not found.")


class SnapshotSourceState(ApiError):
    status_code = 409
    code = "SNAPSHOT::INVALID_SOURCE_STATE"


class SnapshotBusy(ApiError):
    status_code = 409
    code = "SNAPSHOT::INVALID_STATE"


class SnapshotNotReady(ApiError):
    status_code = 409
    code = "SNAPSHOT::NOT_READY"


class VolumeError(ApiError):
    """A volume was refused; `code` is one of upstream's `VOLUME::…` strings."""

    status_code = 400


class MissingApiKey(ApiError):
    status_code = 401
    code = "MISSING_API_KEY"

    def __init__(self) -> None:
        super().__init__("Authentication credentials are missing. Provide API key via "
                         "OPEN-SANDBOX-API-KEY header.")


class InvalidApiKey(ApiError):
    status_code = 401
    code = "INVALID_API_KEY"

    def __init__(self) -> None:
        super().__init__("Authentication credentials are invalid. Check your API key and try "
                         "again.")


# --- sandbox access (gateway and server proxy) -------------------------------------------------


class SandboxPaused(ApiError):
    status_code = 503
    code = "SANDBOX::PAUSED"

    def __init__(self, sandbox_id: str):
        super().__init__(f"Sandbox {sandbox_id} is paused; resume it "
                         f"(POST /v1/sandboxes/{sandbox_id}/resume) to reach its ports.")


class SandboxNotReachable(ApiError):
    status_code = 503
    code = "SANDBOX::NOT_RUNNING"


class BadGateway(ApiError):
    status_code = 502
    code = "GENERAL::UNKNOWN_ERROR"


class ExecdUnauthorized(ApiError):
    status_code = 401
    code = "EXECD::INVALID_ACCESS_TOKEN"


# --- one handler for all of them -------------------------------------------------------------


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=headers)


async def send_error(scope: Scope, send: Send, error: ApiError) -> None:
    """Answer with `error` as JSON, for HTTP and for a WebSocket handshake alike."""
    body = json.dumps(error.body(), separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if scope["type"] == "websocket":
        await send({"type": "websocket.http.response.start", "status": error.status_code,
                    "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def describe_validation_errors(errors: list[Any]) -> str:
    """Turn pydantic's error list into one sentence that names each bad field."""
    parts = []
    for err in errors:
        if err.get("type") == "json_invalid":
            parts.append("request body: not valid JSON "
                         f"({err.get('ctx', {}).get('error', 'parse error')}); send a JSON "
                         "object with Content-Type: application/json")
            continue
        loc = list(err.get("loc", ()))
        # Only the first element says where (body, query, path…); a field may be named
        # `path` too (volumes[0].host.path), so it must not be dropped further in.
        if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
            loc = loc[1:]
        key = None
        if len(loc) >= 2 and loc[-1] == "[key]":  # a dict's key, not its value, is at fault
            key, loc = loc[-2], loc[:-2]
        where = ""
        for part in loc:
            where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
        if key is not None:
            where = f"{where} key {key!r}" if where else f"key {key!r}"
        where = where or "request body"
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if "input" in err and err.get("type") not in ("missing", "json_invalid"):
            shown = repr(err["input"])
            if len(shown) > 60:
                shown = shown[:57] + "..."
            msg = f"{msg} (got {shown})"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts) or "invalid request"
