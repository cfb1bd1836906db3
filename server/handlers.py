"""The exception handlers of the Lifecycle and execd apps: every failure, one shape.

`install_error_handlers(app, api)` gives each app the same handlers; `api` says what that
API calls a bad request and an unknown path. Routes and services raise `ApiError`s and
let runtime failures through: both become the `{"code","message"}` body here. Anything
else is a bug, answered by `UnexpectedErrors`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from opensandbox_emulator.runtimes.failures import RuntimeFailure
from opensandbox_emulator.server.errors import (
    Api,
    ApiError,
    describe_validation_errors,
    error_response,
)
from opensandbox_emulator.server.failures import api_error
from opensandbox_emulator.server.methods import allowed_methods
from opensandbox_emulator.server.unexpected import UnexpectedErrors


def install_error_handlers(app: FastAPI, api: Api) -> None:
    """Register the handlers that give every failure the `{"code","message"}` shape."""

    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_runtime_failure(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RuntimeFailure)
        return error_response(api_error(exc, api))

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message = describe_validation_errors(list(exc.errors()))
        return error_response(ApiError(message, code=api.invalid_code, status_code=400))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 404:
            code = api.not_found_code
        elif exc.status_code == 405:
            code = "GENERAL::METHOD_NOT_ALLOWED"
            # Every method of the path, not only those of the first route that matched.
            methods = allowed_methods(app.router.routes, request.scope)
            if methods:
                headers["Allow"] = ", ".join(methods)
        else:
            code = "GENERAL::UNKNOWN_ERROR"
        return error_response(ApiError(str(exc.detail), code=code, status_code=exc.status_code),
                              headers=headers or None)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RuntimeFailure, on_runtime_failure)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    # Not an `Exception` handler: Starlette re-raises after those (a traceback, and a
    # connection dropped under the client). See `unexpected.py`.
    app.add_middleware(UnexpectedErrors)
