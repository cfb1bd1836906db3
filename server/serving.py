"""uvicorn, told how this server stops.

On SIGTERM uvicorn stops accepting connections, waits for the open ones to finish (up to
its graceful timeout), cancels what is left and only then runs the app's shutdown. A
command stream held open by a client would keep it waiting, then be cancelled mid-write:
no terminal event for the client, a traceback in the log. `StoppingServer` first tells the
app that it is stopping (`OpenSandboxServer.begin_shutdown`), so every stream ends itself at
once with a terminal event; the connections close, and the sandboxes are torn down without
the wait.
"""

from __future__ import annotations

import socket

import uvicorn


class StoppingServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        begin = getattr(self.config.app, "begin_shutdown", None)
        if begin is not None:
            begin()
        await super().shutdown(sockets)
