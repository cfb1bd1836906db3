"""The `docker` runtime: sandboxes as containers on a Docker engine (see `runtime.py`)."""

from runtimes.docker.runtime import DockerRuntime

__all__ = ["DockerRuntime"]
