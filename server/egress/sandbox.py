"""What an egress API request is for, and how it fails.

The access layer puts the request's `EgressSandbox` into the ASGI scope; routes get it
with the `authorized_sandbox` dependency, which also checks `OPENSANDBOX-EGRESS-AUTH`
against the sandbox's token (handed out in the headers of its port-18080 endpoint), as
upstream's sidecar does on every route but `/healthz`. Errors are plain text with their
status, as upstream's sidecar writes them (and as the egress spec says).
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from opensandbox_emulator.runtimes.base import Runtime

SCOPE_KEY = "opensandbox.egress"
AUTH_HEADER = "OPENSANDBOX-EGRESS-AUTH"


class EgressError(Exception):
    """An answer other than success: `status` and a sentence, sent as text/plain."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class EgressSandbox:
    sandbox_id: str
    runtime: Runtime
    token: str | None
    mode: str  # the server's enforcement mode, `dns+nft` or `dns`
    # Changes are read, merged and applied one at a time (upstream's handlers share a mutex).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class EgressHub:
    """The `EgressSandbox` of every sandbox, made on first access."""

    def __init__(self, runtime: Runtime, mode: str):
        self.runtime = runtime
        self.mode = mode
        self._sandboxes: dict[str, EgressSandbox] = {}

    def get(self, sandbox_id: str, token: str | None) -> EgressSandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            sandbox = EgressSandbox(sandbox_id, self.runtime, token, self.mode)
            self._sandboxes[sandbox_id] = sandbox
        return sandbox

    async def remove(self, sandbox_id: str) -> None:
        self._sandboxes.pop(sandbox_id, None)


def current_sandbox(connection: HTTPConnection) -> EgressSandbox:
    sandbox = connection.scope.get(SCOPE_KEY)
    if not isinstance(sandbox, EgressSandbox):
        raise RuntimeError("egress request reached the app without a sandbox in its scope")
    return sandbox


def authorized_sandbox(connection: HTTPConnection) -> EgressSandbox:
    """FastAPI dependency: the request's sandbox, once its egress token checked out."""
    sandbox = current_sandbox(connection)
    if sandbox.token is not None:
        given = connection.headers.get(AUTH_HEADER)
        if given is None or not hmac.compare_digest(given.encode(), sandbox.token.encode()):
            raise EgressError(401, f"unauthorized: send the {AUTH_HEADER} header given in the "
                                   "headers of GET /v1/sandboxes/"
                                   f"{sandbox.sandbox_id}/endpoints/18080")
    return sandbox


Authorized = Annotated[EgressSandbox, Depends(authorized_sandbox)]
