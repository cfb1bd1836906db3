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
