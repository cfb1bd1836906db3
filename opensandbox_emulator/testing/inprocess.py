"""`InProcessEmulator`: the whole server inside this process, on a thread of its own.

uvicorn serves both listeners (Lifecycle and gateway, on ports the kernel picks) from an
event loop on a background thread, so a test needs no subprocess and no fixed port. The
server's loop is never the test's: synchronous and async tests alike can call it, and a
test that blocks does not stall it. uvicorn installs signal handlers only on the main
thread, so none are installed here; the processes the server starts (runc and
slirp4netns for the fake runtime's sandboxes) are children of this process, watched by
asyncio's thread-safe child watcher (Python 3.11) or pidfds (3.12+). A sandbox's own
processes live in its container, whose init the host's init reaps once it ends.

`stop()` deletes every sandbox and then shuts the server down, leaving no process, temp
directory or container behind.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Mapping
from typing import Any

from opensandbox_emulator.testing.client import EmulatorClient

Sections = Mapping[str, Mapping[str, Any]]


class EmulatorStartError(RuntimeError):
    """The in-process server did not start; the message carries what it logged."""


class InProcessEmulator(EmulatorClient):
    """A server in this process with the control API on, and the client for it.

    `sections` are config sections as in the TOML file (`{"runtime": {"type": "docker"}}`);
    the host is 127.0.0.1 and both ports are picked by the kernel unless given.
    """

    def __init__(self, sections: Sections | None = None, *, startup_timeout: float = 60.0):
        from opensandbox_emulator.server.cli import bind
        from opensandbox_emulator.server.config import from_mapping

        merged = _defaults(sections or {})
        config = from_mapping(merged)
        if not config.control.enabled:
            raise ValueError("the in-process emulator needs the control API "
                             "([control] enabled); leave it on")
        _check_child_watcher()
        self._temp_dirs: list[tempfile.TemporaryDirectory[str]] = []
        if config.runtime.type == "docker" and not config.docker.state_dir:
            state = tempfile.TemporaryDirectory(prefix="opensandbox-emulator-docker-")
            self._temp_dirs.append(state)
            config = config.replace("docker", state_dir=state.name)
        self._sockets = [bind(config.server.host, config.server.port),
                         bind(config.server.host, config.gateway.port)]
        config = config.replace("server", port=self._sockets[0].getsockname()[1])
        config = config.replace("gateway", port=self._sockets[1].getsockname()[1])
        self.config = config
        super().__init__(f"http://{config.server.host}:{config.server.port}",
                         api_key=config.server.api_key.strip() or None)
        self._serve(startup_timeout)

    @property
    def gateway_port(self) -> int:
        return self.config.gateway.port

    @property
    def runtime(self) -> str:
        return self.config.runtime.type

    # --- running ----------------------------------------------------------------------------

    def _serve(self, startup_timeout: float) -> None:
        import uvicorn

        from opensandbox_emulator.server.app import create_app

        self.app = create_app(self.config)
        # log_config=None: leave the test process's logging as it is.
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, lifespan="on", log_config=None, access_log=False, proxy_headers=False,
            timeout_graceful_shutdown=5))
        self._failure: BaseException | None = None
        errors = _ErrorLog()
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.addHandler(errors)
        self._thread = threading.Thread(target=self._run, name="opensandbox-emulator",
                                        daemon=True)
        self._thread.start()
        try:
            deadline = time.monotonic() + startup_timeout
            while not self._server.started:
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    self._halt()
                    why = "\n".join(errors.lines) or repr(self._failure)
                    raise EmulatorStartError(f"the emulator did not start: {why}")
                time.sleep(0.01)
        finally:
            uvicorn_log.removeHandler(errors)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._server.serve(sockets=self._sockets))
        except BaseException as error:  # SystemExit when the lifespan fails
            self._failure = error
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    def stop(self, timeout: float = 120.0) -> None:
        """Delete every sandbox, stop the server and wait for its thread."""
        if self._thread.is_alive() and self._server.started:
            try:
                self.reset()
            finally:
                self._halt(timeout)
        else:
            self._halt(timeout)
        self.close()
        for sock in self._sockets:
            sock.close()
        for temp in self._temp_dirs:
            temp.cleanup()

    def _halt(self, timeout: float = 120.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(30)

    def __enter__(self) -> InProcessEmulator:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _defaults(sections: Sections) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": 0, "log_level": "INFO"},
        "gateway": {"port": 0},
        "control": {"enabled": True},
    }
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    if merged.get("runtime", {}).get("type") == "docker":
        # A label of its own, so it never adopts (or is adopted by) another server's
        # containers on the same engine.
        merged.setdefault("docker", {}).setdefault(
            "instance", f"pytest-{uuid.uuid4().hex[:12]}")
    return merged


def _check_child_watcher() -> None:
    """On Python 3.11 the sandbox processes the server starts from its thread need a child
    watcher that works off the main thread: asyncio's default (ThreadedChildWatcher) does,
    and so does PidfdChildWatcher. 3.12+ needs none."""
    if sys.version_info >= (3, 12):
        return
    if type(asyncio.get_event_loop_policy()) is not asyncio.DefaultEventLoopPolicy:
        return  # another loop (uvloop…) watches its children itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = asyncio.get_child_watcher()
    if not isinstance(watcher, (asyncio.ThreadedChildWatcher, asyncio.PidfdChildWatcher)):
        raise EmulatorStartError(
            f"asyncio's child watcher is a {type(watcher).__name__}, which only sees "
            "processes started from the main thread; the in-process emulator starts them "
            "from its own. Set asyncio.ThreadedChildWatcher() (the default) instead.")


class _ErrorLog(logging.Handler):
    """Collects what uvicorn logs at ERROR while the server starts."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {record.exc_info[1]!r}"
        self.lines.append(text)
