"""The server is stopping: what long-lived responses listen for.

Streams (command and code events, metrics, forwarded responses and WebSockets) could
otherwise hold their connections open, and the ASGI server would wait out its graceful
timeout and then cancel them mid-write. Instead, the first thing a stopping server does is
`Shutdown.begin()`: every stream ends itself at once (event streams with a terminal `error`
event that says why), the connections close, and the sandboxes are torn down right after.

The server puts its `Shutdown` into every request's ASGI scope; `shutdown_of(scope)` finds
it, so a response needs nothing passed in to take part.
"""

from __future__ import annotations

import asyncio

from starlette.types import Scope

SCOPE_KEY = "opensandbox.shutdown"
MESSAGE = "the server is stopping"


class Shutdown:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    @property
    def begun(self) -> bool:
        return self._event.is_set()

    def begin(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()


def shutdown_of(scope: Scope) -> Shutdown:
    """The server's `Shutdown`; one that never begins for a scope that came without it
    (an app mounted on its own, in a test)."""
    found = scope.get(SCOPE_KEY)
    return found if isinstance(found, Shutdown) else Shutdown()
