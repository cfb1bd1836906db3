"""Benchmark of code interpreting: what a warm context costs per cell, and what
starting one costs.

    python benchmarks/code.py [--cells N] [--contexts N]

Starts its own server (fake runtime: a container per sandbox) and one sandbox, then measures
in one run:
- `1+1` in a warm python context through `POST /code` (gateway, stream read to the end),
  and `echo 2` in a warm bash context;
- the time to create (and then delete) a python context, and a bash one; and a python
  context backed by IPython when this host has an IPython to lend the sandbox;
- baselines: a bare `python3 -c "print(1+1)"` subprocess on the host, the same command run
  through `POST /command` in the sandbox (what a context saves), and a warm in-process
  `exec` of `1+1` (the floor: no process, no HTTP).
Prints median and p90 of each.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import common
import httpx
from common import measure, start_server

from tests.helpers.servers import create_body, execd_url

# Fewer samples for some figures: p90 rather than p99.
report = functools.partial(common.report, fraction=0.9, width=52)
PYENV_SITE = Path("/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages")


def stream(client: httpx.Client, path: str, body: dict[str, object]) -> bytes:
    with client.stream("POST", path, json=body) as response:
        raw = b"".join(response.iter_raw())
    if response.status_code != 200 or b'"execution_complete"' not in raw:
        raise SystemExit(f"{path} failed: {response.status_code} {raw[-300:]!r}")
    return raw


def create_context(client: httpx.Client, language: str) -> str:
    response = client.post("/code/context", json={"language": language})
    response.raise_for_status()
    return str(response.json()["id"])


def context_lifecycle(client: httpx.Client, language: str) -> None:
    context_id = create_context(client, language)
    client.delete(f"/code/contexts/{context_id}").raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200, help="runs per latency figure")
    parser.add_argument("--contexts", type=int, default=15, help="contexts created per figure")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-code-"))
    server = start_server(workdir)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as api:
            volume = {"name": "ipython", "host": {"path": str(PYENV_SITE)},
                      "mountPath": "/opt/ipython", "readOnly": True}
            ipython = (PYENV_SITE / "IPython").is_dir()
            body = create_body(**({"volumes": [volume]} if ipython else {}))
            response = api.post("/v1/sandboxes", json=body)
            response.raise_for_status()
            sandbox_id = response.json()["id"]
        base = execd_url(server, sandbox_id)
        with httpx.Client(base_url=base, timeout=60) as client:
            print(f"code interpreting, fake runtime (runc), sandbox {sandbox_id}")
            print("per cell:")
            python_id = create_context(client, "python")
            bash_id = create_context(client, "bash")
            cell = report("1+1 in a warm python context (POST /code)", measure(
                lambda: stream(client, "/code", {"code": "1+1", "context": {
                    "id": python_id, "language": "python"}}), args.cells, warmup=3))
            report("echo 2 in a warm bash context (POST /code)", measure(
                lambda: stream(client, "/code", {"code": "echo 2", "context": {
                    "id": bash_id, "language": "bash"}}), args.cells, warmup=3))
            command = report('python3 -c "print(1+1)" via POST /command', measure(
                lambda: stream(client, "/command", {"command": 'python3 -c "print(1+1)"'}),
                max(args.cells // 5, 10), warmup=3))
            bare = report('bare python3 -c "print(1+1)" subprocess (host)', measure(
                lambda: subprocess.run(["/usr/bin/python3", "-c", "print(1+1)"], check=True,
                                       capture_output=True), max(args.cells // 5, 10), warmup=3))
            namespace: dict[str, object] = {}
            compiled = compile("1+1", "<bench>", "eval")
            floor = report("warm in-process exec of 1+1", measure(
                lambda: eval(compiled, namespace), args.cells * 10, warmup=3))
            print(f"  -> a warm context cell costs {cell / bare:.2f}x a bare subprocess, "
                  f"{cell / command:.2f}x the same work through /command, "
                  f"{cell / floor:,.0f}x an in-process eval")
            print("context start (create, then delete):")
            report("python context (stdlib executor)", measure(
                lambda: context_lifecycle(client, "python"), args.contexts, warmup=1))
            report("bash context", measure(
                lambda: context_lifecycle(client, "bash"), args.contexts, warmup=1))
            if ipython:
                with httpx.Client(base_url=server.url, timeout=60) as api:
                    ipy_body = create_body(volumes=[volume], env={"PYTHONPATH": "/opt/ipython"})
                    response = api.post("/v1/sandboxes", json=ipy_body)
                    response.raise_for_status()
                    ipy_base = execd_url(server, response.json()["id"])
                with httpx.Client(base_url=ipy_base, timeout=120) as ipy_client:
                    report("python context (IPython executor)", measure(
                        lambda: context_lifecycle(ipy_client, "python"),
                        max(args.contexts // 3, 3), warmup=1))
                    ipy_id = create_context(ipy_client, "python")
                    report("1+1 in a warm IPython-backed context", measure(
                        lambda: stream(ipy_client, "/code", {"code": "1+1", "context": {
                            "id": ipy_id, "language": "python"}}), args.cells, warmup=3))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
