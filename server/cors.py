"""CORS: off by default, and only ever for the Lifecycle API.

With `[server] cors_origins` empty (the default) no response carries CORS headers, so a web
page the developer happens to visit cannot read anything from this server. Listed origins
(a front-end under development, say) may call the Lifecycle API from the browser. The
server proxy route never answers cross-origin reads, whatever is listed: it reaches execd,
which runs commands, and the API key does not guard it. The gateway has no CORS either.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from opensandbox_emulator.server.access.proxy import PROXY_PATH


class LifecycleCors:
    def __init__(self, app: ASGIApp, origins: list[str]):
        self.app = app
        self.cors: ASGIApp | None = None
        if origins:
            self.cors = CORSMiddleware(app, allow_origins=origins, allow_methods=["*"],
                                       allow_headers=["*"], expose_headers=["*"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.cors is None or scope["type"] != "http" or PROXY_PATH.match(scope["path"]):
            await self.app(scope, receive, send)
        else:
            await self.cors(scope, receive, send)
