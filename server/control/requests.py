"""What a request is for, read the way the server routes it: through which door it came
(the Lifecycle API, the gateway, the server proxy route), for which sandbox and port, and
the path its target sees. The journal records it and fault rules match on it, so a rule
for `/command` of one sandbox fires whether the client came through the gateway (either
routing mode) or the proxy route.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from starlette.types import Scope

from opensandbox_emulator.server.access.gateway import Gateway
from opensandbox_emulator.server.access.proxy import raw_rest

CONTROL_PREFIX = "/_emulator"
PROXY_ROUTE = re.compile(r"^(?:/v1)?/sandboxes/([^/]+)/proxy/(\d+)(?:/|$)")
SANDBOX_ROUTE = re.compile(r"^(?:/v1)?/sandboxes/([^/]+)")

Door = Literal["lifecycle", "gateway", "proxy"]


@dataclass(frozen=True)
class RequestView:
    via: Door
    path: str  # as the target sees it: the lifecycle path, or the path inside the sandbox
    sandbox_id: str | None = None
    port: int | None = None  # the sandbox port (44772: execd); None for the Lifecycle API


def is_control(scope: Scope, gateway_port: int) -> bool:
    """A request for the control API itself (never journaled, never faulted)."""
    path: str = scope.get("path", "")
    return (not _on_gateway(scope, gateway_port)
            and (path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/")))


def view_of(scope: Scope, gateway_port: int) -> RequestView:
    path: str = scope.get("path", "")
    if _on_gateway(scope, gateway_port):
        route = Gateway.route(scope)
        if isinstance(route, tuple):
            sandbox_id, port, inner, _ = route
            return RequestView("gateway", unquote(inner or "/"), sandbox_id, port)
        return RequestView("gateway", path)
    proxied = PROXY_ROUTE.match(path)
    if proxied:
        return RequestView("proxy", unquote(raw_rest(scope)), proxied.group(1),
                           int(proxied.group(2)))
    named = SANDBOX_ROUTE.match(path)
    return RequestView("lifecycle", path, named.group(1) if named else None)


def _on_gateway(scope: Scope, gateway_port: int) -> bool:
    server = scope.get("server")
    return server is not None and server[1] == gateway_port
