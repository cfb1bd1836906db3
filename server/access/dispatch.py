"""The one dispatch layer: `(sandbox, port, request)` to wherever that port lives.

Both the gateway listener and the server proxy route end here. Port 44772 is the sandbox's
execd, served in-process by the embedded execd app; port 18080 is its egress API, served
in-process too (upstream's egress sidecar); any other port is forwarded over a connection
the runtime opens to it (`Runtime.connect`). Every refusal has the `{"code","message"}`
body: an unknown sandbox is 404, a paused one 503 (except for the egress API, which a
paused sandbox's sidecar still answers upstream), a port where nothing listens 502.

Access is checked here as upstream's ingress gateway checks it: a signed route must verify
and not be expired; a secured sandbox (`secureAccess`) needs its `OpenSandbox-Secure-Access`
token or a good signed route; either failing is 401. A request that gets through counts as
an access for renew-on-access.
"""

from __future__ import annotations

import hmac
from urllib.parse import quote, unquote

from starlette.types import ASGIApp, Receive, Scope, Send

from opensandbox_emulator.runtimes.failures import RuntimeFailure, SandboxMissing
from opensandbox_emulator.server.access.forward import HttpForwarder, forward_websocket
from opensandbox_emulator.server.access.signing import RouteSigner, SignedRoute
from opensandbox_emulator.server.egress.app import create_egress_app
from opensandbox_emulator.server.egress.sandbox import SCOPE_KEY as EGRESS_SCOPE_KEY
from opensandbox_emulator.server.egress.sandbox import EgressHub
from opensandbox_emulator.server.errors import (
    LIFECYCLE_API,
    ApiError,
    ExecdUnauthorized,
    InvalidPort,
    SandboxNotReachable,
    SandboxPaused,
    SecureAccessDenied,
    send_error,
)
from opensandbox_emulator.server.execd.sandbox import SCOPE_KEY, ExecdHub
from opensandbox_emulator.server.failures import api_error
from opensandbox_emulator.server.lifecycle.service import SandboxService
from opensandbox_emulator.server.shutdown import SCOPE_KEY as SHUTDOWN_KEY
from opensandbox_emulator.server.unexpected import REQUEST_ID_KEY

EXECD_PORT = 44772
EGRESS_PORT = 18080
TOKEN_HEADER = "x-execd-access-token"
SECURE_ACCESS_HEADER = "opensandbox-secure-access"
ASGI_CONNECTION_KEYS = {"type", "asgi", "http_version", "method", "scheme", "server", "client",
                        "headers", "query_string", "subprotocols", "extensions", "state",
                        REQUEST_ID_KEY, SHUTDOWN_KEY}


class Dispatcher:
    def __init__(self, service: SandboxService, hub: ExecdHub, execd_app: ASGIApp,
                 signer: RouteSigner | None = None, *, egress_hub: EgressHub | None = None,
                 egress_app: ASGIApp | None = None):
        self.service = service
        self.hub = hub
        self.execd_app = execd_app
        self.egress_hub = egress_hub or EgressHub(service.runtime, service.config.egress.mode)
        self.egress_app = egress_app or create_egress_app()
        self.signer = signer or RouteSigner.generated()
        self.http = HttpForwarder(service.runtime.connect)

    async def close(self) -> None:
        await self.http.close()

    async def forget(self, sandbox_id: str) -> None:
        """The sandbox is going: drop its route name (its pooled connections die with it)."""
        self.http.forget(sandbox_id)
        await self.egress_hub.remove(sandbox_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, *, sandbox_id: str,
                       port: int, path: str, signed: SignedRoute | None = None) -> None:
        """Serve one request (or WebSocket) for `port` of `sandbox_id`, at `path`: the raw
        request path (percent-escapes kept, no query) the target is to see. `signed` is
        the signed route the gateway read, if any."""
        try:
            await self._check(scope, sandbox_id, port)
            self._check_access(scope, sandbox_id, port, signed)
            await self.service.accessed(sandbox_id)
            if port == EXECD_PORT:
                await self._to_execd(scope, receive, send, sandbox_id, path)
            elif port == EGRESS_PORT:
                await self._to_egress(scope, receive, send, sandbox_id, path)
            else:
                await self._to_port(scope, receive, send, sandbox_id, port, path)
        except ApiError as error:
            await send_error(scope, send, error)
        except RuntimeFailure as error:
            await send_error(scope, send, api_error(error, LIFECYCLE_API))

    async def _check(self, scope: Scope, sandbox_id: str, port: int) -> None:
        if not 1 <= port <= 65535:
            raise InvalidPort(port)
        if not self.service.exists(sandbox_id):
            raise SandboxMissing(sandbox_id)
        state = await self.service.state(sandbox_id)
        if port == EGRESS_PORT and state.state in ("Paused", "Pausing"):
            return
        if state.state in ("Paused", "Pausing"):
            raise SandboxPaused(sandbox_id)
        if state.state != "Running":
            raise SandboxNotReachable(f"Sandbox {sandbox_id} is {state.state} "
                                      f"({state.message}); its ports cannot be reached.")
        if port == EXECD_PORT:
            token = self.hub.get(sandbox_id).access_token
            if token is not None:
                given = _header(scope, TOKEN_HEADER)
                if given is None or not hmac.compare_digest(given.encode(), token.encode()):
                    raise ExecdUnauthorized(
                        f"{'Missing' if given is None else 'Invalid'} X-EXECD-ACCESS-TOKEN "
                        "header. This server gives each sandbox its own execd token: read it "
                        f"from the `headers` of GET /v1/sandboxes/{sandbox_id}/endpoints/"
                        f"{EXECD_PORT} and send it with every execd request.")

    def _check_access(self, scope: Scope, sandbox_id: str, port: int,
                      signed: SignedRoute | None) -> None:
        token = self.service.secure_access_token(sandbox_id)
        given = _header(scope, SECURE_ACCESS_HEADER)
        if token is not None and given is not None:
            if not hmac.compare_digest(given.strip().encode(), token.encode()):
                raise SecureAccessDenied(f"The OpenSandbox-Secure-Access header does not match "
                                         f"sandbox {sandbox_id}'s token; send the one in the "
                                         "headers of its endpoint.")
            return
        if signed is not None:
            problem = self.signer.check(signed, sandbox_id, port, self.service.clock.now())
            if problem is not None:
                raise SecureAccessDenied(f"Signed route refused: {problem}. Get a new one "
                                         f"from GET /v1/sandboxes/{sandbox_id}/endpoints/"
                                         f"{port}?expires=<unix seconds>.")
            return
        if token is not None:
            raise SecureAccessDenied(
                f"Sandbox {sandbox_id} was created with secureAccess: send its "
                "OpenSandbox-Secure-Access header (from the headers of GET /v1/sandboxes/"
                f"{sandbox_id}/endpoints/{port}) or use a signed endpoint.")

    async def _to_execd(self, scope: Scope, receive: Receive, send: Send, sandbox_id: str,
                        path: str) -> None:
        child = _in_process_scope(scope, path)
        child[SCOPE_KEY] = self.hub.get(sandbox_id)
        await self.execd_app(child, receive, send)

    async def _to_egress(self, scope: Scope, receive: Receive, send: Send, sandbox_id: str,
                         path: str) -> None:
        if scope["type"] != "http":
            raise ApiError("The egress API (port 18080) takes no WebSocket.",
                           code="GENERAL::NOT_FOUND", status_code=404)
        child = _in_process_scope(scope, path)
        child[EGRESS_SCOPE_KEY] = self.egress_hub.get(
            sandbox_id, self.service.egress_token(sandbox_id))
        await self.egress_app(child, receive, send)

    async def _to_port(self, scope: Scope, receive: Receive, send: Send, sandbox_id: str,
                       port: int, path: str) -> None:
        # Whatever the runtime connects to (a port inside the sandbox's own network, a
        # container's address, a relay), the application sees a request for its own
        # loopback port, as if the client were inside the sandbox: the same Host on every
        # runtime.
        if scope["type"] == "websocket":
            await forward_websocket(scope, receive, send, connect=self.service.runtime.connect,
                                    sandbox_id=sandbox_id, port=port, path=path)
        else:
            await self.http.forward(scope, receive, send, sandbox_id=sandbox_id, port=port,
                                    path=path)


def _in_process_scope(scope: Scope, path: str) -> dict:
    """The scope an in-process app (execd, egress) sees for `path`. Only the connection's
    own keys: through the proxy route the scope also carries the lifecycle app's router,
    route and path parameters, which are not the sandbox's."""
    child = {key: value for key, value in scope.items() if key in ASGI_CONNECTION_KEYS}
    child["path"] = unquote(path or "/")
    child["raw_path"] = (path or "/").encode("latin-1")
    child["root_path"] = ""
    return child


def raw_path_of(scope: Scope) -> str:
    """The request path as sent, percent-escapes kept (`scope["path"]` is decoded)."""
    raw = scope.get("raw_path")
    if raw is None:
        return quote(scope["path"])
    return bytes(raw).decode("latin-1")


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.encode()
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None
