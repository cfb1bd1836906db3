"""The `docker` runtime: sandboxes as containers on a Docker engine (see `runtime.py`)."""

from opensandbox_emulator.runtimes.docker.runtime import DockerRuntime

__all__ = ["DockerRuntime"]
