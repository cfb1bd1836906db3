"""The execd ASGI app: one router per area, errors in execd's `{"code","message"}` shape."""

from __future__ import annotations

from fastapi import FastAPI

from opensandbox_emulator.server.errors import EXECD_API
from opensandbox_emulator.server.execd import health, metrics
from opensandbox_emulator.server.execd.code.routes import router as code_router
from opensandbox_emulator.server.execd.commands.routes import router as commands_router
from opensandbox_emulator.server.execd.files import router as files_router
from opensandbox_emulator.server.handlers import install_error_handlers


def create_execd_app() -> FastAPI:
    app = FastAPI(title="OpenSandbox execd (embedded)", docs_url=None, redoc_url=None,
                  openapi_url=None)
    install_error_handlers(app, EXECD_API)
    app.include_router(health.router)
    app.include_router(files_router)
    app.include_router(metrics.router)
    app.include_router(commands_router)
    app.include_router(code_router)
    return app
