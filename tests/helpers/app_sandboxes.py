"""Sandboxes that serve an application port, for the access tests and benchmark.

`sandbox_app.py` (next to this file) is the application server those sandboxes run; it is
mounted read-only at `/helpers` and started with the sandbox's `python3` (the host's in a
fake sandbox, the image's in a container).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx

HELPERS_DIR = Path(__file__).resolve().parent
APP_SCRIPT = "/helpers/sandbox_app.py"


def free_port() -> int:
    """A TCP port nothing listens on right now (fake sandboxes share the host's network;
    a container has its own, where any port is free)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def host_volume(name: str, path: Path | str, mount_path: str, *,
                read_only: bool = True) -> dict[str, Any]:
    return {"name": name, "host": {"path": str(path)}, "mountPath": mount_path,
            "readOnly": read_only}


def app_sandbox_body(port: int, *, entrypoint: list[str] | None = None,
                     volumes: list[dict[str, Any]] | None = None,
                     image: str = "python:3.11") -> dict[str, Any]:
    """A create body for a sandbox serving `port`: by default the helper app server. The
    image must have python3 (any image does on the fake runtime)."""
    return {"image": {"uri": image}, "timeout": 600,
            "resourceLimits": {"cpu": "1", "memory": "1Gi"},
            "entrypoint": entrypoint or ["python3", APP_SCRIPT, str(port)],
            "volumes": [host_volume("helpers", HELPERS_DIR, "/helpers"), *(volumes or [])]}


def wait_until_served(url: str, *, timeout: float = 20.0) -> httpx.Response:
    """GET `url` until the sandbox's server answers with something other than 502."""
    deadline = time.monotonic() + timeout
    last: httpx.Response | None = None
    while time.monotonic() < deadline:
        last = httpx.get(url, timeout=10)
        if last.status_code != 502:
            return last
        time.sleep(0.05)
    raise AssertionError(f"{url} never became reachable: {last and last.text}")
