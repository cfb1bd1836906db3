"""The execd ASGI app: one router per area, errors in execd's `{"code","message"}` shape."""

from __future__ import annotations

from fastapi import FastAPI

from server.errors import install_error_handlers
from server.execd import health


def create_execd_app() -> FastAPI:
    app = FastAPI(title="OpenSandbox execd (embedded)", docs_url=None, redoc_url=None,
                  openapi_url=None)
    install_error_handlers(app, validation_code="INVALID_REQUEST_BODY",
                           not_found_code="NOT_FOUND")
    app.include_router(health.router)
    return app
