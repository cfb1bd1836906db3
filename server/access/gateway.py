"""The sandbox gateway: a second listener that routes every request to a sandbox's port.

Two ways to address `(sandbox, port)`, both always accepted:
- the header `OpenSandbox-Ingress-To: <sandbox-id>-<port>` (the path is passed unchanged);
- the URI `/<sandbox-id>/<port>/<rest>` (the target sees `/<rest>`).
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from server.access.dispatch import Dispatcher
from server.errors import ApiError, send_error


class RouteNotFound(ApiError):
    status_code = 404
    code = "GATEWAY::ROUTE_NOT_FOUND"


class Gateway:
    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        route = self._route(scope)
        if isinstance(route, ApiError):
            await send_error(scope, send, route)
            return
        sandbox_id, port, path = route
        await self.dispatcher(scope, receive, send, sandbox_id=sandbox_id, port=port, path=path)

    @staticmethod
    def _route(scope: Scope) -> tuple[str, int, str] | ApiError:
        for key, value in scope.get("headers", []):
            if key.lower() == b"opensandbox-ingress-to":
                target = value.decode("latin-1").strip()
                sandbox_id, _, port = target.rpartition("-")
                if sandbox_id and port.isdigit():
                    return sandbox_id, int(port), scope["path"]
                return RouteNotFound(f"OpenSandbox-Ingress-To must be '<sandbox-id>-<port>' "
                                     f"(got '{target}').")
        parts = scope["path"].split("/", 3)
        if len(parts) >= 3 and parts[1] and parts[2].isdigit():
            rest = "/" + parts[3] if len(parts) == 4 else "/"
            return parts[1], int(parts[2]), rest
        return RouteNotFound("The gateway routes by URI '/<sandbox-id>/<port>/<path>' or by "
                             "the header 'OpenSandbox-Ingress-To: <sandbox-id>-<port>'; this "
                             f"request had neither ({scope['path']}). Get a sandbox's address "
                             "from GET /v1/sandboxes/{id}/endpoints/{port}.")
