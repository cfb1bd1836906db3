"""Which `Host` a request may name: the check against DNS rebinding, on every port.

A web page can point a DNS name it controls at 127.0.0.1; the browser then talks to this
server as if it were that name's own site, with no CORS check in the way. The `Host` header
still says that name, so the server answers only to names it knows (as Jupyter's server
does): loopback names and addresses (`localhost`, `*.localhost`, 127.0.0.0/8, `::1`), the
address it listens on (unless that is a wildcard such as 0.0.0.0), `[server] eip`,
`[gateway] public_host`, and `[server] allowed_hosts`. A `*` there turns the check off,
for a server behind a reverse proxy that rewrites `Host`. Anything else is 403.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from opensandbox_emulator.server.config import Config
from opensandbox_emulator.server.errors import ApiError, send_error

WILDCARD_ADDRESSES = {"", "0.0.0.0", "::", "[::]"}


class HostNotAllowed(ApiError):
    status_code = 403
    code = "GENERAL::HOST_NOT_ALLOWED"

    def __init__(self, host: str):
        super().__init__(
            f"Host '{host}' is not allowed: this server answers only to loopback names and "
            "the hosts it is configured with (a guard against DNS rebinding). If you reach "
            "it by this name, add it to [server] allowed_hosts.")


def hostname(host: str) -> str:
    """`Host` without its port, lower-cased, brackets and a trailing dot removed:
    `LocalHost.:8080` -> `localhost`, `[::1]:8080` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:host.index("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def is_loopback(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class AllowedHosts:
    def __init__(self, names: Iterable[str], *, any_host: bool = False):
        self.names = {hostname(name) for name in names if name and name.strip()}
        self.any_host = any_host

    @classmethod
    def from_config(cls, config: Config) -> AllowedHosts:
        listed = list(config.server.allowed_hosts)
        names = [name for name in listed if name != "*"]
        if config.server.host not in WILDCARD_ADDRESSES:
            names.append(config.server.host)
        names += [config.server.eip, config.gateway.public_host]
        return cls(names, any_host="*" in listed)

    def allows(self, host: str | None) -> bool:
        if self.any_host or host is None:  # no Host at all: not a browser
            return True
        name = hostname(host)
        return is_loopback(name) or name in self.names


class HostCheck:
    """ASGI middleware: 403 for a request (or WebSocket) whose `Host` is not allowed."""

    def __init__(self, app: ASGIApp, allowed: AllowedHosts):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = None
            for key, value in scope.get("headers", []):
                if key == b"host":
                    host = value.decode("latin-1")
                    break
            if not self.allowed.allows(host):
                await send_error(scope, send, HostNotAllowed(host or ""))
                return
        await self.app(scope, receive, send)
