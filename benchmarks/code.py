"""Benchmark of code interpreting: what a warm context costs per cell, and what
starting one costs.

    python benchmarks/code.py [--cells N] [--contexts N] [--compiled N]

Starts its own server (fake runtime: a container per sandbox) and one sandbox, then measures
in one run:
- `1+1` in a warm python context through `POST /code` (gateway, stream read to the end),
  and `echo 2` in a warm bash context;
- the time to create (and then delete) a python context, and a bash one; and a python
  context backed by IPython when this host has an IPython to lend the sandbox;
- baselines: a bare `python3 -c "print(1+1)"` subprocess on the host, the same command run
  through `POST /command` in the sandbox (what a context saves), and a warm in-process
  `exec` of `1+1` (the floor: no process, no HTTP);
- java and go, where this host has `jshell` and `go`: what creating a context answers in,
  the time from create to the first cell's result (at once, and after a pause in which the
  interpreter warms up in the background), and a warm trivial cell (java `1+1`, go
  `fmt.Println(1+1)`), beside a bare `jshell` running the same snippet and a bare `go run`
  of the same program on the host.
Prints median and p90 of each.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import subprocess
import tempfile
import time
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


def first_result(client: httpx.Client, language: str, code: str, pause: float) -> None:
    """Create a context, wait `pause` seconds, run `code` to its end, delete the context."""
    context_id = create_context(client, language)
    time.sleep(pause)
    stream(client, "/code", {"code": code, "context": {"id": context_id, "language": language}})
    client.delete(f"/code/contexts/{context_id}").raise_for_status()


GO_PROGRAM = 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println(1 + 1) }\n'
JAVA_CELL = "1+1"
GO_CELL = "fmt.Println(1 + 1)"


def compiled_languages(client: httpx.Client, count: int, workdir: Path) -> None:
    """java and go contexts beside a bare jshell and a bare go run of the same code."""
    for language, tool, cell in (("java", "jshell", JAVA_CELL), ("go", "go", GO_CELL)):
        if shutil.which(tool) is None:
            print(f"{language}: skipped, this host has no {tool}")
            continue
        print(f"{language}:")
        made: list[str] = []
        report(f"create a {language} context (its answer)", measure(
            lambda language=language, made=made: made.append(create_context(client, language)),
            count, warmup=1))
        for context_id in made:
            client.delete(f"/code/contexts/{context_id}").raise_for_status()
        report("create, then the first cell's result at once", measure(
            lambda language=language, cell=cell: first_result(client, language, cell, 0.0),
            count, warmup=1))
        report("create, 3 s pause, then the first cell's result", [
            sample - 3.0 for sample in measure(
                lambda language=language, cell=cell: first_result(client, language, cell, 3.0),
                max(count // 2, 2))])
        context_id = create_context(client, language)
        warm = report(f"{cell} in a warm {language} context", measure(
            lambda context_id=context_id, language=language, cell=cell: stream(
                client, "/code", {"code": cell, "context": {"id": context_id,
                                                            "language": language}}),
            count * 3, warmup=2))
        client.delete(f"/code/contexts/{context_id}").raise_for_status()
        if language == "java":
            snippet = workdir / "snippet.jsh"
            snippet.write_text("System.out.println(1+1);\n/exit\n")
            bare = report("bare jshell running that snippet (host)", measure(
                lambda snippet=snippet: subprocess.run(["jshell", "-q", str(snippet)], check=True,
                                       capture_output=True, cwd=workdir), count, warmup=1))
        else:
            program = workdir / "bare-go" / "main.go"
            program.parent.mkdir(exist_ok=True)
            program.write_text(GO_PROGRAM)
            bare = report("bare go run of that program (host)", measure(
                lambda program=program: subprocess.run(
                    ["go", "run", str(program)], check=True, capture_output=True,
                    cwd=program.parent), count, warmup=1))
        print(f"  -> a warm {language} cell costs {warm / bare:.2f}x the bare run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200, help="runs per latency figure")
    parser.add_argument("--contexts", type=int, default=15, help="contexts created per figure")
    parser.add_argument("--compiled", type=int, default=8,
                        help="samples per java and go figure (each costs a JVM or a build)")
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
        with httpx.Client(base_url=base, timeout=300) as client:
            compiled_languages(client, args.compiled, workdir)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
