"""execd's error codes (upstream's strings), each a small `ApiError` class."""

from __future__ import annotations

from opensandbox_emulator.server.errors import ApiError


class InvalidRequestBody(ApiError):
    status_code = 400
    code = "INVALID_REQUEST_BODY"


class MissingQuery(ApiError):
    status_code = 400
    code = "MISSING_QUERY"

    def __init__(self, name: str):
        super().__init__(f"missing query parameter '{name}'")


class NotFound(ApiError):
    """A command, context or file that does not exist (upstream varies the code)."""

    status_code = 404
    code = "NOT_FOUND"


class ExecdRuntimeError(ApiError):
    status_code = 500
    code = "RUNTIME_ERROR"


class UnknownSession(ApiError):
    """A bash or PTY session id that does not exist (upstream's code and wording)."""

    status_code = 404
    code = "CONTEXT_NOT_FOUND"

    def __init__(self, session_id: str, what: str = "session", hint: str = ""):
        super().__init__(f"{what} {session_id} not found" + (f": {hint}" if hint else ""))


class NotSupported(ApiError):
    status_code = 501
    code = "NOT_SUPPORTED"
