"""What the tests and the benchmarks share, one module a job:

- `servers`: a real server process (`launch`), create bodies, sandboxes made over HTTP, and
  polling until something holds;
- `docker_engine`: the Docker engine the docker runtime's tests need, the local test images,
  and the config of a docker-runtime server;
- `in_process`: the whole app in this process over a real runtime, with a clock and ids the
  test sets;
- `app_sandboxes`: sandboxes that serve an application port (`sandbox_app.py`);
- `contract`: responses checked against the upstream OpenAPI files;
- `frames`: execd's event stream split into frames;
- `code_api`: execd's `/code` routes over raw HTTP (a cell's events, one in the background).

Fixtures stay in `tests/conftest.py`; everything here is plain code a test imports.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
