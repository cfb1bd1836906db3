"""The docker runtime's speed: create -> ready, and the `echo hi` round trip.

Run: `python benchmarks/docker.py [--samples 10] [--commands 30] [--image IMAGE]`.

It starts its own server on the docker runtime (needs a Docker engine and the test images
of `tests/docker/build-images.sh`) and measures, through the official Python SDK:
- create -> ready: `Sandbox.create` until its health check (execd's /ping) passes;
- the `echo hi` round trip: `commands.run("echo hi")` on a ready sandbox; and again right
  after a command that left a child running with its output (`sleep 300 &`), which the
  engine used to make seconds slower (see runtimes/docker/processes.py).
Beside each, in the same run, the same thing with the Docker CLI: `docker run -d` plus the
first `docker exec … echo hi`, and a `docker exec … echo hi` alone. The CLI is the floor a
user would compare with (it has no HTTP API, no SDK and no health check in its way). The
round trip is also set beside the Docker SDK's own `exec_run(["sh", "-c", "echo hi"])` on
a container of the same image (what a program that drives Docker itself pays: one exec
created, started and read to its end, and inspected for its exit code), and timed over raw
HTTP (`POST /command`) as well as through the OpenSandbox SDK; these three are taken in
turn, one of each after the other, so that the machine's slow moments fall on all alike.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import common
from common import measure, measure_in_turn

# This script is named like the Docker SDK (`docker`): with its directory first on sys.path,
# `import docker` would find the script itself. `common` is imported; drop the directory.
HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]

from tests.helpers.docker_engine import (  # noqa: E402
    DOCKER_BUSYBOX_IMAGE,
    docker_problem,
    docker_sections,
    remove_docker_sandboxes,
)
from tests.helpers.servers import ServerProcess, execd_url, launch  # noqa: E402

# A few samples each: p90 rather than p99.
report = functools.partial(common.report, fraction=0.9)


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def cli_run_and_exec(image: str, started: list[str]) -> None:
    container = docker("run", "-d", "--init", image, "sleep", "infinity")
    started.append(container)
    if docker("exec", container, "echo", "hi") != "hi":
        raise SystemExit("docker exec did not print hi")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10, help="sandboxes to create")
    parser.add_argument("--commands", type=int, default=30, help="echo round trips")
    parser.add_argument("--image", default=DOCKER_BUSYBOX_IMAGE)
    args = parser.parse_args()
    problem = docker_problem()
    if problem is not None:
        raise SystemExit(f"benchmarks/docker.py needs Docker: {problem}")

    from opensandbox.config.connection_sync import ConnectionConfigSync
    from opensandbox.sync import SandboxSync

    workdir = Path(tempfile.mkdtemp(prefix="bench-docker-"))
    sections = docker_sections(workdir)
    sections["server"] = {"log_level": "WARNING"}
    server: ServerProcess = launch(sections, workdir)
    config = ConnectionConfigSync(domain=server.domain, request_timeout=timedelta(seconds=60))
    cli_containers: list[str] = []
    began = time.monotonic()
    try:
        print(f"server: {server.url}, runtime docker; image {args.image}; "
              f"{args.samples} creates, {args.commands} commands\n", flush=True)

        def create() -> SandboxSync:
            return SandboxSync.create(args.image, entrypoint=["sleep", "infinity"],
                                      resource={"cpu": "1", "memory": "256Mi"},
                                      connection_config=config,
                                      health_check_polling_interval=timedelta(milliseconds=20))

        sandboxes: list[SandboxSync] = []
        cli_create = measure(lambda: cli_run_and_exec(args.image, cli_containers),
                             args.samples, warmup=1)
        report("baseline: docker run -d + first docker exec", cli_create)
        sdk_create = measure(lambda: sandboxes.append(create()), args.samples, warmup=1)
        report("SDK Sandbox.create -> ready (ping passes)", sdk_create, cli_create)

        container = cli_containers[-1]
        cli_echo = measure(lambda: docker("exec", container, "echo", "hi"), args.commands,
                           warmup=2)
        print(flush=True)
        report("baseline: docker exec … echo hi", cli_echo)
        sandbox = sandboxes[-1]

        def echo() -> None:
            execution = sandbox.commands.run("echo hi")
            if [m.text for m in execution.logs.stdout] != ["hi"]:
                raise SystemExit(f"echo hi gave {execution}")

        import docker as docker_sdk  # the Docker SDK (this script's own name is shadowed)
        import httpx

        engine = docker_sdk.from_env()
        target = engine.containers.get(container)

        def exec_run() -> None:
            result = target.exec_run(["sh", "-c", "echo hi"])
            if result.exit_code != 0 or result.output != b"hi\n":
                raise SystemExit(f"exec_run gave {result}")

        base = execd_url(server, sandbox.id)
        with httpx.Client(timeout=60) as client:
            def raw_echo() -> None:
                with client.stream("POST", f"{base}/command",
                                   json={"command": "echo hi"}) as response:
                    body = response.read()
                if b'"text":"hi"' not in body or b"execution_complete" not in body:
                    raise SystemExit(f"POST /command gave {body!r}")

            sdk_exec, sdk_echo, raw = measure_in_turn([exec_run, echo, raw_echo],
                                                      args.commands, warmup=2)
        engine.close()
        report("baseline: Docker SDK exec_run(sh -c 'echo hi')", sdk_exec)
        report("SDK commands.run('echo hi')", sdk_echo, cli_echo)
        report("  the same, against exec_run", sdk_echo, sdk_exec)
        report("raw HTTP POST /command 'echo hi'", raw, sdk_exec)
        after_child = []
        for _ in range(max(3, args.commands // 5)):
            sandbox.commands.run("sleep 300 &")
            after_child.append(measure(echo, 1)[0])
        report("SDK run('echo hi') after `sleep 300 &`", after_child, cli_echo)
        for made in sandboxes:
            made.kill()
            made.close()
    finally:
        server.stop()
        remove_docker_sandboxes(sections["docker"]["instance"])
        if cli_containers:
            subprocess.run(["docker", "rm", "-f", *cli_containers], capture_output=True)
    print(f"\n(total {time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
