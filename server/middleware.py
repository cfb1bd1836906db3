"""Pure ASGI middleware (streaming-safe): request ids and the API key."""

from __future__ import annotations

import hmac
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opensandbox_emulator.server.access.proxy import PROXY_PATH
from opensandbox_emulator.server.errors import InvalidApiKey, MissingApiKey, send_error
from opensandbox_emulator.server.unexpected import REQUEST_ID_KEY

EXEMPT_PREFIXES = ("/health", "/docs", "/redoc", "/openapi.json")


class RequestIdMiddleware:
    """Echo `X-Request-ID` (or a new one) on every response, errors included."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for key, value in scope.get("headers", []):
            if key.lower() == b"x-request-id":
                request_id = value.decode("latin-1")
        request_id = request_id or str(uuid.uuid4())  # the spec says format: uuid
        scope[REQUEST_ID_KEY] = request_id  # for the log line of an unexpected error

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class ApiKeyMiddleware:
    """Require `OPEN-SANDBOX-API-KEY` when a key is configured (health, docs and the
    server proxy route are exempt)."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        # As upstream: a blank key means no authentication at all.
        self.api_key = api_key.strip().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (scope["type"] != "http" or not self.api_key or path.startswith(EXEMPT_PREFIXES)
                or PROXY_PATH.match(path)):
            await self.app(scope, receive, send)
            return
        given = None
        preflight = False
        for key, value in scope.get("headers", []):
            key = key.lower()
            if key == b"open-sandbox-api-key":
                given = value
            elif key == b"access-control-request-method":
                preflight = scope.get("method") == "OPTIONS"
        if preflight:
            # A browser's CORS preflight never carries the key; the CORS layer answers it.
            await self.app(scope, receive, send)
            return
        if given is None:
            await send_error(scope, send, MissingApiKey())
        elif not hmac.compare_digest(given, self.api_key):
            await send_error(scope, send, InvalidApiKey())
        else:
            await self.app(scope, receive, send)
