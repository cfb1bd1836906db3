"""The last resort for real bugs: an exception that no handler knew.

Everything a client can cause has its own failure class and status; what reaches this
middleware is a bug in the server. Starlette's own last resort answers and then re-raises,
so the ASGI server logs a long traceback and drops the keep-alive connection under a
client that was not told (its next pooled request fails with a connection reset). Here
instead the client gets `500 {"code","message"}` with `Connection: close` and the request
id, the log gets one line naming the request id, and the traceback is logged at debug level
only. The exception ends here.
"""

from __future__ import annotations

import json
import logging
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("opensandbox.errors")

REQUEST_ID_KEY = "opensandbox.request_id"  # set by `RequestIdMiddleware`
CODE = "GENERAL::UNKNOWN_ERROR"


def request_id_of(scope: Scope) -> str | None:
    request_id = scope.get(REQUEST_ID_KEY)
    return request_id if isinstance(request_id, str) else None


class UnexpectedErrors:
    """Wraps an ASGI app: an exception it raises becomes one log line and a 500."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = False

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] in ("http.response.start", "websocket.accept",
                                   "websocket.http.response.start", "websocket.close"):
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        except Exception as error:
            request_id = request_id_of(scope) or str(uuid.uuid4())
            log.error("request %s (%s %s) failed: %s: %s", request_id,
                      scope.get("method", "WEBSOCKET"), scope.get("path", ""),
                      type(error).__name__, error)
            log.debug("traceback of request %s", request_id, exc_info=error)
            if not started:
                await _answer(scope, send, request_id, type(error).__name__)
            # Else part of the answer is out: nothing more can be said, and the server
            # drops the connection, so the client sees a response cut short.


async def _answer(scope: Scope, send: Send, request_id: str, kind: str) -> None:
    body = json.dumps({"code": CODE, "message": f"Internal error ({kind}) in request "
                       f"{request_id}: this is a bug in the server; its log has the "
                       "details under this request id."}, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()),
               (b"x-request-id", request_id.encode("latin-1", "replace")),
               (b"connection", b"close")]
    if scope["type"] == "websocket":
        await send({"type": "websocket.http.response.start", "status": 500,
                    "headers": headers[:3]})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})
