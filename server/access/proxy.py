"""The server proxy route: `/sandboxes/{id}/proxy/{port}[/{path}]`, at `/` and under `/v1`.

It is what `use_server_proxy=true` endpoints point at: every method (HEAD and OPTIONS
included) and WebSocket upgrades go through the same dispatch layer as the gateway. The
route is exempt from the API key, as upstream HEAD does: the SDKs do not send the key to
execd, and the key is stripped before anything is forwarded.
"""

from __future__ import annotations

import re

from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from opensandbox_emulator.server.access.dispatch import Dispatcher, raw_path_of
from opensandbox_emulator.server.errors import ApiError, send_error

PROXY_PATH = re.compile(r"^(/v1)?/sandboxes/[^/]+/proxy/\d+(/|$)")


class ProxyEndpoint:
    """A raw ASGI endpoint, so bodies stream and any method passes."""

    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = scope["path_params"]
        rest: str = params["rest"]
        if rest and not rest.startswith("/"):
            await send_error(scope, send, ApiError(f"No route for {scope['path']}.",
                                                   code="GENERAL::NOT_FOUND", status_code=404))
            return
        await self.dispatcher(scope, receive, send, sandbox_id=params["sandbox_id"],
                              port=int(params["port"]), path=raw_rest(scope))


def raw_rest(scope: Scope) -> str:
    """What follows `/sandboxes/{id}/proxy/{port}` in the raw request path (`/` if nothing),
    percent-escapes kept. Path parameters are decoded, so they cannot give it."""
    segments = raw_path_of(scope).split("/")
    # "", ["v1"], "sandboxes", id, "proxy", port, rest...
    skip = 6 if scope["path"].startswith("/v1/") else 5
    return "/" + "/".join(segments[skip:])


def proxy_routes(dispatcher: Dispatcher) -> list[BaseRoute]:
    endpoint = ProxyEndpoint(dispatcher)
    routes: list[BaseRoute] = []
    for prefix in ("", "/v1"):
        path = prefix + "/sandboxes/{sandbox_id}/proxy/{port:int}{rest:path}"
        routes.append(Route(path, endpoint, include_in_schema=False))
        routes.append(WebSocketRoute(path, endpoint))
    return routes
