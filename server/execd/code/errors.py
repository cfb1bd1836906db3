"""The errors of the `/code` routes. Codes follow upstream's style; `CONTEXT_NOT_FOUND` is
upstream's own string, the others are ours (upstream has no such checks)."""

from __future__ import annotations

from opensandbox_emulator.server.errors import ApiError


class ContextNotFound(ApiError):
    status_code = 404
    code = "CONTEXT_NOT_FOUND"

    def __init__(self, context_id: str):
        super().__init__(f"context {context_id} not found: create one with POST /code/context "
                         "(GET /code/contexts lists those that exist).")


class ContextBusy(ApiError):
    """A second run on a context whose cell is still running: refused, not queued."""

    status_code = 409
    code = "CONTEXT_BUSY"

    def __init__(self, context_id: str):
        super().__init__(f"context {context_id} is still running a cell. Wait for it to end, "
                         f"interrupt it (DELETE /code?id={context_id}), or run in another "
                         "context.")


class LanguageUnavailable(ApiError):
    """The sandbox lacks the toolchain a language needs (or the emulator has no driver)."""

    status_code = 400
    code = "LANGUAGE_UNAVAILABLE"


class InterpreterFailed(ApiError):
    """The interpreter did not start or could not take the request."""

    status_code = 500
    code = "RUNTIME_ERROR"
