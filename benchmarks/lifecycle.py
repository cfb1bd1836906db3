"""Lifecycle API speed: create -> Running, and list with 1,000 sandboxes; and the test kit's
in-process server against a server process.

Run: `python benchmarks/lifecycle.py [--sandboxes 1000] [--samples 200] [--cycles 20]
[--only lifecycle|in-process]`.

It starts its own server (`python -m opensandbox_emulator`, fake runtime, real bubblewrap) on
ports the kernel picks, and prints each measurement beside a baseline measured on the same server in
the same run: `GET /health`, a route that does no work, so the difference is what the
lifecycle itself costs. Every sandbox runs `sleep infinity`, which costs nothing once started.

The in-process part times what the `opensandbox_emulator` pytest fixture costs: starting and
stopping `InProcessEmulator` beside starting and stopping a server process, and the official
SDK's create -> run a command -> kill cycle against each, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import httpx
from common import measure, report, start_server

BODY = {"image": {"uri": "python:3.11"}, "timeout": 3600, "resourceLimits": {},
        "entrypoint": ["sleep", "infinity"], "metadata": {"bench": "lifecycle"}}


def create_running(client: httpx.Client) -> str:
    """POST a sandbox and poll until it is Running; returns its id."""
    response = client.post("/v1/sandboxes", json=BODY)
    response.raise_for_status()
    body = response.json()
    state = body["status"]["state"]
    while state != "Running":
        if state not in ("Pending",):
            raise SystemExit(f"sandbox {body['id']} became {state}")
        state = client.get(f"/v1/sandboxes/{body['id']}").json()["status"]["state"]
    return str(body["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandboxes", type=int, default=1000, help="sandboxes to list")
    parser.add_argument("--samples", type=int, default=200, help="samples per measurement")
    parser.add_argument("--cycles", type=int, default=20,
                        help="SDK create/run/kill cycles (and server starts) per setup")
    parser.add_argument("--only", choices=("lifecycle", "in-process"),
                        help="run one part only")
    args = parser.parse_args()
    if shutil.which("bwrap") is None:
        print("warning: bubblewrap is missing; sandboxes run without isolation", flush=True)
    if args.only != "lifecycle":
        in_process(args.cycles)
    if args.only != "in-process":
        lifecycle(args)


def lifecycle(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    started = time.monotonic()
    server = start_server(workdir)
    url = server.url
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(20):  # warm up connections and code paths
                client.get("/health")
                client.get("/v1/sandboxes")
            health = measure(lambda: client.get("/health").raise_for_status(), args.samples)
            print(f"server: {url}, runtime {client.get('/health').json()['isolation']}; "
                  f"{args.samples} samples each\n", flush=True)
            report("baseline: GET /health", health)

            created: list[str] = []
            samples = min(args.samples, args.sandboxes)
            create_times = measure(lambda: created.append(create_running(client)), samples)
            report("create -> Running", create_times, health)

            fill_start = time.monotonic()
            while len(created) < args.sandboxes:
                created.append(create_running(client))
            total = client.get("/v1/sandboxes", params={"pageSize": 1}).json()
            count = total["pagination"]["totalItems"]
            print(f"  ({count} sandboxes live; the rest created in "
                  f"{time.monotonic() - fill_start:.1f} s)", flush=True)

            health = measure(lambda: client.get("/health").raise_for_status(), args.samples)
            report(f"baseline again with {count} sandboxes", health)
            for label, params in (
                    ("list, first page (pageSize 20)", {}),
                    ("list, pageSize 200", {"pageSize": 200}),
                    ("list, metadata filter, pageSize 200",
                     {"metadata": "bench=lifecycle", "pageSize": 200}),
                    ("list, state filter, last page", {"state": "Running", "pageSize": 20,
                                                       "page": max(1, -(-count // 20))})):
                def list_once(params: dict[str, object] = params) -> None:
                    response = client.get("/v1/sandboxes", params=params)
                    response.raise_for_status()
                    assert response.json()["pagination"]["totalItems"] == count

                report(label, measure(list_once, args.samples), health)
    finally:
        stop_start = time.monotonic()
        server.stop(timeout=120)
        print(f"\nserver stopped (destroying every sandbox) in "
              f"{time.monotonic() - stop_start:.1f} s; whole run "
              f"{time.monotonic() - started:.1f} s", flush=True)
        shutil.rmtree(workdir, ignore_errors=True)


# --- the test kit: in-process against a server process -------------------------------------


def in_process(cycles: int) -> None:
    from opensandbox_emulator.testing import InProcessEmulator

    print(f"in-process emulator (the pytest fixture) against a server process; {cycles} "
          "samples each\n", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-in-process-"))
    try:
        first = time.perf_counter()
        InProcessEmulator().stop()  # the first start also imports the web stack
        print(f"{'first in-process start and stop (imports)':<46} "
              f"{(time.perf_counter() - first) * 1000:8.2f} ms", flush=True)
        starts, stops = [], []
        for _ in range(cycles):
            begun = time.perf_counter()
            emulator = InProcessEmulator()
            starts.append(time.perf_counter() - begun)
            begun = time.perf_counter()
            emulator.stop()
            stops.append(time.perf_counter() - begun)
        process_starts, process_stops = [], []
        for index in range(cycles):
            begun = time.perf_counter()
            server = start_server(workdir / f"server-{index}")
            process_starts.append(time.perf_counter() - begun)
            begun = time.perf_counter()
            server.stop()
            process_stops.append(time.perf_counter() - begun)
        report("baseline: server process start (healthy)", process_starts)
        report("in-process start", starts, process_starts)
        report("baseline: server process stop", process_stops)
        report("in-process stop (reset, then shut down)", stops, process_stops)

        server = start_server(workdir / "cycles")
        try:
            process_cycles = asyncio.run(sdk_cycles(server.domain, cycles))
        finally:
            server.stop()
        with InProcessEmulator() as emulator:
            in_process_cycles = asyncio.run(sdk_cycles(emulator.domain, cycles))
        print()
        report("baseline: SDK create/run/kill, server process", process_cycles)
        report("SDK create/run/kill, in-process", in_process_cycles, process_cycles)
        print(flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def sdk_cycles(domain: str, count: int) -> list[float]:
    """Seconds per `Sandbox.create` (ready) -> `commands.run("echo")` -> `kill`, with one
    untimed warm-up cycle."""
    from opensandbox import Sandbox
    from opensandbox.config import ConnectionConfig

    config = ConnectionConfig(domain=domain)
    samples = []
    for index in range(count + 1):
        begun = time.perf_counter()
        sandbox = await Sandbox.create("python:3.11", connection_config=config)
        run = await sandbox.commands.run("echo cycle")
        assert run.logs.stdout[0].text == "cycle"
        await sandbox.kill()
        await sandbox.close()
        if index:
            samples.append(time.perf_counter() - begun)
    return samples


if __name__ == "__main__":
    main()
