"""Runtimes: where sandboxes really live. They know nothing of HTTP.

`make_runtime` picks one by name; the lifecycle service and the embedded execd talk to it
only through `runtimes.base.Runtime`.
"""

from __future__ import annotations

from typing import Any

from opensandbox_emulator.runtimes.base import Runtime


def make_runtime(kind: str, **options: Any) -> Runtime:
    if kind == "fake":
        from opensandbox_emulator.runtimes.fake import FakeRuntime

        return FakeRuntime(**options)
    if kind == "docker":
        from opensandbox_emulator.runtimes.docker.runtime import DockerRuntime

        return DockerRuntime(**options)
    raise ValueError(f"unknown runtime type {kind!r}; expected 'fake' or 'docker'")
