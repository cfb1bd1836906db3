"""The whole server as one ASGI app, built from injected parts.

`create_app` wires a runtime, a clock and an id generator (all injectable, so tests can
substitute them) into the lifecycle API, the embedded execd and the access layer. The
result serves two listeners: requests that arrive on the gateway port go to the sandbox
gateway, all others to the lifecycle API (which also holds the server proxy route).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from opensandbox_emulator import __version__
from opensandbox_emulator.runtimes import make_runtime
from opensandbox_emulator.runtimes.base import Runtime
from opensandbox_emulator.runtimes.egress.enforcement import EgressSettings
from opensandbox_emulator.runtimes.egress.resolvers import parse_upstreams
from opensandbox_emulator.server.access.dispatch import Dispatcher
from opensandbox_emulator.server.access.gateway import Gateway
from opensandbox_emulator.server.access.proxy import proxy_routes
from opensandbox_emulator.server.access.signing import RouteSigner, parse_keys
from opensandbox_emulator.server.clock import Clock, IdGenerator, SystemClock, UuidIds
from opensandbox_emulator.server.config import Config
from opensandbox_emulator.server.control.backend import EmulatorControl
from opensandbox_emulator.server.control.clock import MovableClock
from opensandbox_emulator.server.control.routes import router as control_router
from opensandbox_emulator.server.control.tap import ControlTap
from opensandbox_emulator.server.cors import LifecycleCors
from opensandbox_emulator.server.diagnostics.routes import router as diagnostics_router
from opensandbox_emulator.server.errors import LIFECYCLE_API
from opensandbox_emulator.server.execd.app import create_execd_app
from opensandbox_emulator.server.execd.sandbox import ExecdHub
from opensandbox_emulator.server.handlers import install_error_handlers
from opensandbox_emulator.server.hosts import AllowedHosts, HostCheck
from opensandbox_emulator.server.images import offered_files
from opensandbox_emulator.server.lifecycle.routes import router as lifecycle_router
from opensandbox_emulator.server.lifecycle.service import SandboxService
from opensandbox_emulator.server.lifecycle.snapshots import SnapshotService
from opensandbox_emulator.server.lifecycle.unserved import router as unserved_router
from opensandbox_emulator.server.methods import install_options
from opensandbox_emulator.server.middleware import ApiKeyMiddleware, RequestIdMiddleware
from opensandbox_emulator.server.shutdown import SCOPE_KEY as SHUTDOWN_KEY
from opensandbox_emulator.server.shutdown import Shutdown
from opensandbox_emulator.server.unexpected import UnexpectedErrors

log = logging.getLogger("opensandbox")


@dataclass
class Access:
    hub: ExecdHub
    dispatcher: Dispatcher
    gateway: Gateway
    gateway_port: int
    signer: RouteSigner


def signer_from_config(config: Config) -> RouteSigner:
    """The configured signing keys, or one made now (signed routes then last as long as
    this server runs)."""
    if not config.gateway.secure_access_keys:
        return RouteSigner.generated()
    keys = parse_keys(config.gateway.secure_access_keys)
    return RouteSigner(keys, config.gateway.secure_access_active_key or next(iter(keys)))


def egress_from_config(config: Config) -> EgressSettings:
    return EgressSettings(mode=config.egress.mode,
                          upstreams=tuple(parse_upstreams(config.egress.dns_upstream)))


def runtime_from_config(config: Config) -> Runtime:
    egress = egress_from_config(config)
    if config.runtime.type == "fake":
        return make_runtime("fake", state_dir=config.fake.state_dir or None,
                            volumes_root=config.fake.volumes_root or None,
                            isolation=config.fake.isolation,
                            pids_limit=config.fake.pids_limit or None, egress=egress,
                            offered_files=offered_files())
    return make_runtime(config.runtime.type, settings=config.docker, egress=egress)


class OpenSandboxServer:
    """The ASGI app: routes by the port a request arrived on."""

    def __init__(self, config: Config, *, runtime: Runtime | None = None,
                 clock: Clock | None = None, ids: IdGenerator | None = None):
        self.config = config
        self.runtime = runtime or runtime_from_config(config)
        # With the control API on, a clock tests can move (the real one until they do).
        movable = MovableClock(clock or SystemClock()) if config.control.enabled else None
        self.clock: Clock = movable or clock or SystemClock()
        self.ids = ids or UuidIds()
        self.service = SandboxService(self.runtime, config, self.clock, self.ids)
        self.snapshots = SnapshotService(self.runtime, self.service, self.clock)
        hub = ExecdHub(self.runtime, config.execd, self.clock, self.ids)
        self.service.on_removing(hub.remove)
        signer = signer_from_config(config)
        dispatcher = Dispatcher(self.service, hub, create_execd_app(), signer)
        self.service.on_removing(dispatcher.forget)
        self.access = Access(hub=hub, dispatcher=dispatcher, gateway=Gateway(dispatcher),
                             gateway_port=config.gateway.port, signer=signer)
        # The control API for tests (`[control] enabled`): its state, and the tap in front
        # of both listeners that journals every request and applies fault rules.
        self.control = (EmulatorControl(self.service, movable, config.control,
                                        snapshots=self.snapshots)
                        if movable is not None else None)
        self.shutdown = Shutdown()
        self.lifecycle = self._lifecycle_app()
        self._lifecycle_stack: ASGIApp = RequestIdMiddleware(ApiKeyMiddleware(
            LifecycleCors(self.lifecycle, config.server.cors_origins), config.server.api_key))
        entry: ASGIApp = self._route
        if self.control is not None:
            entry = ControlTap(self._route, self.control, config.gateway.port)
        # The Host check comes first: the control API obeys it like every other door.
        self._entry: ASGIApp = UnexpectedErrors(HostCheck(entry,
                                                          AllowedHosts.from_config(config)))

    def begin_shutdown(self) -> None:
        """The server is stopping: open streams end now (see `shutdown.py`). Idempotent;
        the lifespan's shutdown calls it too."""
        self.shutdown.begin()

    def _lifecycle_app(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            await self.service.start()
            await self.snapshots.start()
            for warning in self.runtime.warnings:
                log.warning(warning)
            try:
                yield
            finally:
                self.begin_shutdown()
                await self.snapshots.close()
                await self.service.close()
                await self.access.dispatcher.close()

        app = FastAPI(title="OpenSandbox emulator: Lifecycle API", version=__version__,
                      lifespan=lifespan)
        app.state.service = self.service
        app.state.snapshots = self.snapshots
        app.state.access = self.access
        install_error_handlers(app, LIFECYCLE_API)
        for router in (lifecycle_router, diagnostics_router, unserved_router):
            app.include_router(router)
            app.include_router(router, prefix="/v1")
        app.router.routes.extend(proxy_routes(self.access.dispatcher))
        if self.control is not None:
            app.state.control = self.control
            app.include_router(control_router)

        @app.get("/health", tags=["health"])
        async def health() -> dict[str, Any]:
            return {"status": "healthy", "runtime": self.runtime.name,
                    **self.runtime.health(), "egress": self.runtime.egress_health(),
                    "warnings": self.runtime.warnings,
                    "finished_command_logs": self.access.hub.finished_logs.report()}

        install_options(app)
        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[SHUTDOWN_KEY] = self.shutdown
        await self._entry(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if (scope["type"] in ("http", "websocket") and server is not None
                and server[1] == self.access.gateway_port):
            await self.access.gateway(scope, receive, send)
        else:
            await self._lifecycle_stack(scope, receive, send)


def create_app(config: Config | None = None, **parts: Any) -> OpenSandboxServer:
    return OpenSandboxServer(config or Config(), **parts)
