"""The sandbox gateway: a second listener that routes every request to a sandbox's port.

Two ways to address `(sandbox, port)`, both always accepted:
- the header `OpenSandbox-Ingress-To: <sandbox-id>-<port>` (the path is passed unchanged);
- the URI `/<sandbox-id>/<port>/<rest>` (the target sees `/<rest>`).
The routing header is the gateway's own and is not passed on. Paths are split on the raw
(still percent-encoded) request path, so an escaped `/` or `?` reaches the target as sent.
"""

from __future__ import annotations

from urllib.parse import unquote

from starlette.types import Receive, Scope, Send

from opensandbox_emulator.server.access.dispatch import Dispatcher, raw_path_of
from opensandbox_emulator.server.errors import ApiError, send_error

INGRESS_HEADER = b"opensandbox-ingress-to"


class RouteNotFound(ApiError):
    status_code = 404
    code = "GATEWAY::ROUTE_NOT_FOUND"


class Gateway:
    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        route = self.route(scope)
        if isinstance(route, ApiError):
            await send_error(scope, send, route)
            return
        sandbox_id, port, path = route
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != INGRESS_HEADER]
        await self.dispatcher({**scope, "headers": headers}, receive, send,
                              sandbox_id=sandbox_id, port=port, path=path)

    @staticmethod
    def route(scope: Scope) -> tuple[str, int, str] | ApiError:
        """`(sandbox id, port, raw path for the target)` of a request, or why it has none."""
        raw_path = raw_path_of(scope)
        for key, value in scope.get("headers", []):
            if key.lower() == INGRESS_HEADER:
                target = value.decode("latin-1").strip()
                sandbox_id, _, port = target.rpartition("-")
                if sandbox_id and port.isdigit():
                    return sandbox_id, int(port), raw_path
                return RouteNotFound(f"OpenSandbox-Ingress-To must be '<sandbox-id>-<port>' "
                                     f"(got '{target}').")
        parts = raw_path.split("/", 3)
        if len(parts) >= 3 and parts[1] and parts[2].isdigit():
            rest = "/" + parts[3] if len(parts) == 4 else "/"
            return unquote(parts[1]), int(parts[2]), rest
        return RouteNotFound("The gateway routes by URI '/<sandbox-id>/<port>/<path>' or by "
                             "the header 'OpenSandbox-Ingress-To: <sandbox-id>-<port>'; this "
                             f"request had neither ({scope['path']}). Get a sandbox's address "
                             "from GET /v1/sandboxes/{id}/endpoints/{port}.")
