"""The egress API's ASGI app: the `/policy` and `/credential-vault` routes, plain-text errors.

Upstream's sidecar answers every error with `text/plain` (Go's `http.Error`), and the
egress spec says so; so do the routes here, including a path no route serves (404), a
method a route does not take (405) and a body that is not what a route wants (400).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import PlainTextResponse

from opensandbox_emulator.server.egress import policy, vault
from opensandbox_emulator.server.egress.sandbox import EgressError


def create_egress_app() -> FastAPI:
    app = FastAPI(title="OpenSandbox egress API (embedded)", docs_url=None, redoc_url=None,
                  openapi_url=None)

    async def on_egress_error(_: Request, exc: Exception) -> PlainTextResponse:
        assert isinstance(exc, EgressError)
        return PlainTextResponse(exc.message + "\n", status_code=exc.status)

    async def on_http_error(_: Request, exc: Exception) -> PlainTextResponse:
        assert isinstance(exc, StarletteHTTPException)
        return PlainTextResponse(f"{exc.detail}\n", status_code=exc.status_code,
                                 headers=getattr(exc, "headers", None))

    async def on_unexpected(_: Request, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse(f"internal error: {type(exc).__name__}: {exc}\n",
                                 status_code=500)

    app.add_exception_handler(EgressError, on_egress_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.include_router(policy.router)
    app.include_router(vault.router)
    return app
