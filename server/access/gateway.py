"""The sandbox gateway: a second listener that routes every request to a sandbox's port.

Two ways to address `(sandbox, port)`, both always accepted:
- the header `OpenSandbox-Ingress-To: <sandbox-id>-<port>` (the path is passed unchanged);
- the URI `/<sandbox-id>/<port>/<rest>` (the target sees `/<rest>`).
A signed route adds its expiry and signature: `<sandbox-id>-<port>-<exp>-<sig>` in the
header, `/<sandbox-id>/<port>/<exp>/<sig>/<rest>` in the URI (recognised by their shape,
as upstream's ingress does); the dispatch layer checks them. The routing header is the
gateway's own and is not passed on. Paths are split on the raw (still percent-encoded)
request path, so an escaped `/` or `?` reaches the target as sent.
"""

from __future__ import annotations

from urllib.parse import unquote

from starlette.types import Receive, Scope, Send

from opensandbox_emulator.server.access.dispatch import Dispatcher, raw_path_of
from opensandbox_emulator.server.access.signing import SIGNATURE, SignedRoute, from_b36
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
        sandbox_id, port, path, signed = route
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != INGRESS_HEADER]
        await self.dispatcher({**scope, "headers": headers}, receive, send,
                              sandbox_id=sandbox_id, port=port, path=path, signed=signed)

    @staticmethod
    def route(scope: Scope) -> tuple[str, int, str, SignedRoute | None] | ApiError:
        """`(sandbox id, port, raw path for the target, signed route if any)` of a request,
        or why it has none."""
        raw_path = raw_path_of(scope)
        for key, value in scope.get("headers", []):
            if key.lower() == INGRESS_HEADER:
                target = value.decode("latin-1").strip()
                head, _, signature = target.rpartition("-")
                rest, _, expires = head.rpartition("-")
                sandbox_id, _, port = rest.rpartition("-")
                if _signed(expires, signature) and sandbox_id and _port(port):
                    return sandbox_id, int(port), raw_path, SignedRoute(expires, signature)
                sandbox_id, _, port = target.rpartition("-")
                if sandbox_id and port.isdigit():
                    return sandbox_id, int(port), raw_path, None
                return RouteNotFound(f"OpenSandbox-Ingress-To must be '<sandbox-id>-<port>' "
                                     f"(got '{target}').")
        parts = raw_path.split("/", 5)
        if len(parts) >= 5 and parts[1] and _port(parts[2]) and _signed(parts[3], parts[4]):
            rest = "/" + parts[5] if len(parts) == 6 else "/"
            return unquote(parts[1]), int(parts[2]), rest, SignedRoute(parts[3], parts[4])
        parts = raw_path.split("/", 3)
        if len(parts) >= 3 and parts[1] and parts[2].isdigit():
            rest = "/" + parts[3] if len(parts) == 4 else "/"
            return unquote(parts[1]), int(parts[2]), rest, None
        return RouteNotFound("The gateway routes by URI '/<sandbox-id>/<port>/<path>' or by "
                             "the header 'OpenSandbox-Ingress-To: <sandbox-id>-<port>'; this "
                             f"request had neither ({scope['path']}). Get a sandbox's address "
                             "from GET /v1/sandboxes/{id}/endpoints/{port}.")


def _port(text: str) -> bool:
    return text.isascii() and text.isdigit() and not (len(text) > 1 and text[0] == "0")


def _signed(expires_b36: str, signature: str) -> bool:
    """The two segments have a signed route's shape (whether it verifies is checked later)."""
    return from_b36(expires_b36) is not None and SIGNATURE.match(signature) is not None
