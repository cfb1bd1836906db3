"""`OPTIONS` and `405` name every method a path really has.

Starlette answers a method that a path lacks with the methods of the first route that
matched the path, not of all of them (`/v1/sandboxes` is two routes, GET and POST), and
has no `OPTIONS` answer at all. `allowed_methods` collects them from every route that
matches; `install_options` adds the `OPTIONS` answer (204 with `Allow`) to an app. (A
middleware, not a catch-all route: such a route would match every path in part, and turn
every 404 into a 405.)
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

CANDIDATES = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> list[str]:
    """The methods the routes serve at `scope`'s path (OPTIONS included); empty when no
    route serves the path at all. Each method is tried against every route, so that any
    kind of route (an included router, a raw endpoint) answers for itself."""
    methods = []
    for method in CANDIDATES:
        probe = {**scope, "type": "http", "method": method}
        for route in routes:
            match, _ = route.matches(probe)
            if match is Match.FULL:
                methods.append(method)
                break
    return [*methods, "OPTIONS"] if methods else []


class AnswerOptions:
    """ASGI middleware: `OPTIONS` on a path that no route takes `OPTIONS` for is answered
    here, 204 with the `Allow` list (a path no route serves goes on to the 404). A route
    that takes OPTIONS itself (the server proxy, which forwards it) gets it."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]):
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            taken = any(route.matches(dict(scope))[0] is Match.FULL for route in self.routes)
            methods = [] if taken else allowed_methods(self.routes, scope)
            if methods:
                response = Response(status_code=204, headers={"Allow": ", ".join(methods)})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install_options(app: FastAPI) -> None:
    """Answer `OPTIONS` with the methods of the path, for every path the app serves."""
    app.add_middleware(AnswerOptions, routes=app.router.routes)
