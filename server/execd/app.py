"""The execd ASGI app: one router per area, errors in execd's `{"code","message"}` shape."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from opensandbox_emulator.server.errors import EXECD_API
from opensandbox_emulator.server.execd import health, metrics, unsupported
from opensandbox_emulator.server.execd.code.routes import router as code_router
from opensandbox_emulator.server.execd.commands.routes import router as commands_router
from opensandbox_emulator.server.execd.files import router as files_router
from opensandbox_emulator.server.execd.pty.routes import router as pty_router
from opensandbox_emulator.server.execd.sessions.routes import router as sessions_router
from opensandbox_emulator.server.handlers import install_error_handlers
from opensandbox_emulator.server.methods import install_options


class JsonByDefault:
    """A body without `Content-Type` is read as JSON, as upstream's execd (a plain JSON
    decoder) reads every body; FastAPI would refuse it. Only execd does this: the Lifecycle
    API keeps FastAPI's rule."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not any(
                key.lower() == b"content-type" for key, _ in scope.get("headers", [])):
            scope = {**scope, "headers": [*scope.get("headers", []),
                                          (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


def create_execd_app() -> FastAPI:
    app = FastAPI(title="OpenSandbox execd (embedded)", docs_url=None, redoc_url=None,
                  openapi_url=None)
    install_error_handlers(app, EXECD_API)
    app.add_middleware(JsonByDefault)
    app.include_router(health.router)
    app.include_router(files_router)
    app.include_router(metrics.router)
    app.include_router(commands_router)
    app.include_router(sessions_router)
    app.include_router(pty_router)
    app.include_router(code_router)
    app.include_router(unsupported.router)
    install_options(app)
    return app
